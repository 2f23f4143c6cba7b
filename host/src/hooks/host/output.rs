//! `flexmodel:hook/output`: tensors a hook hands back to the user. Emitted
//! tensors are staged in the call's scope and reach the output dictionary only
//! if the call succeeds; the bytes a call may emit are capped.

use tch::{Device, Tensor};
use wasmtime::component::Resource;

use super::types::{from_wit_dtype, from_wit_slice};
use crate::hooks::activation::{ActivationBuf, DType};
use crate::hooks::bindings::flexmodel::hook::output::Host;
use crate::hooks::bindings::wit_types::{DimRange, Dtype, HookError};
use crate::hooks::hook::{Emitted, output_key};
use crate::hooks::store::HostState;

type R<T> = wasmtime::Result<T>;

const MAX_NAME_LEN: usize = 128;
const MAX_RANK: usize = 8;

fn check_name(name: &str) -> Result<(), HookError> {
    if name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
    {
        return Err(HookError::InvalidArgument(format!(
            "output name {name:?} must be at most {MAX_NAME_LEN} characters of [A-Za-z0-9_-./]"
        )));
    }
    Ok(())
}

fn check_shape(shape: &[u64], numel: usize) -> Result<Vec<i64>, HookError> {
    if shape.len() > MAX_RANK {
        return Err(HookError::InvalidArgument(format!(
            "output rank {} exceeds {MAX_RANK}",
            shape.len()
        )));
    }
    let prod = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    if prod != Some(numel as u64) {
        return Err(HookError::InvalidArgument(format!(
            "shape {shape:?} does not hold {numel} elements"
        )));
    }
    Ok(shape.iter().map(|&d| d as i64).collect())
}

impl HostState {
    /// Reserve `bytes` of the call's output budget, or refuse (and remember
    /// the refusal, so the call fails even if the plugin ignores the error).
    fn reserve_output(&mut self, name: &str, bytes: u64) -> Result<(), HookError> {
        let cap = self.limits.max_output_bytes_per_call;
        if self.call.output_bytes.saturating_add(bytes) > cap {
            let msg = format!(
                "emitting {bytes} bytes as {name:?} would exceed the cap of {cap} bytes per call \
                 ({} already emitted)",
                self.call.output_bytes
            );
            self.call.output_refused.get_or_insert(msg.clone());
            return Err(HookError::LimitExceeded(msg));
        }
        self.call.output_bytes += bytes;
        Ok(())
    }

    fn stage(&mut self, name: &str, tensor: Tensor) {
        let key = output_key(&self.call.hook_point, name);
        self.call.emitted.push(Emitted { key, tensor });
    }
}

impl Host for HostState {
    fn emit(
        &mut self,
        name: String,
        shape: Vec<u64>,
        values: Vec<f32>,
    ) -> R<Result<(), HookError>> {
        let r = (|| {
            check_name(&name)?;
            let dims = check_shape(&shape, values.len())?;
            self.reserve_output(&name, values.len() as u64 * 4)?;
            self.stage(&name, Tensor::from_slice(&values).reshape(dims));
            Ok(())
        })();
        Ok(r)
    }

    fn emit_bytes(
        &mut self,
        name: String,
        shape: Vec<u64>,
        dtype: Dtype,
        bytes: Vec<u8>,
    ) -> R<Result<(), HookError>> {
        let r = (|| {
            check_name(&name)?;
            let dt: DType = from_wit_dtype(dtype);
            if !bytes.len().is_multiple_of(dt.size()) {
                return Err(HookError::InvalidArgument(format!(
                    "{} bytes is not a whole number of {dt:?} elements",
                    bytes.len()
                )));
            }
            let dims = check_shape(&shape, bytes.len() / dt.size())?;
            self.reserve_output(&name, bytes.len() as u64)?;
            let t = Tensor::f_from_data_size(&bytes, &dims, dt.kind())
                .map_err(|e| HookError::Failed(e.to_string()))?;
            self.stage(&name, t);
            Ok(())
        })();
        Ok(r)
    }

    fn emit_activation(
        &mut self,
        name: String,
        act: Resource<ActivationBuf>,
        s: Vec<DimRange>,
    ) -> R<Result<(), HookError>> {
        let (view, resolved, dtype) = {
            let b = self.table.get(&act)?;
            match b.resolve(&from_wit_slice(&s)) {
                Ok(r) => (b.cpu_view(), r, b.dtype()),
                Err(e) => return Ok(Err(e.into())),
            }
        };
        let r = (|| {
            check_name(&name)?;
            let bytes = (resolved.numel() * dtype.size()) as u64;
            self.reserve_output(&name, bytes)?;
            // Slice with tch and copy once into fresh storage: the activation's
            // own storage keeps changing after the call.
            let mut v = view.shallow_clone();
            for (d, &(start, count, step)) in resolved.dims.iter().enumerate() {
                let stop = start + count.saturating_sub(1) * step + usize::from(count > 0);
                v = v.slice(d as i64, start as i64, stop as i64, step as i64);
            }
            let shape: Vec<i64> = resolved.shape().iter().map(|&d| d as i64).collect();
            let mut out = Tensor::empty(&shape, (dtype.kind(), Device::Cpu));
            out.copy_(&v);
            self.stage(&name, out);
            Ok(())
        })();
        Ok(r)
    }
}
