//! `flexmodel:hook/output`: tensors a hook hands back to the user. Emitted
//! tensors are staged in the call's scope and reach the output dictionary only
//! if the call succeeds. Bytes and count per call are capped, every emit is
//! charged at least `min_output_charge` (fuel and host memory alike), names
//! are validated (no empty, `.` or `..` segments), shapes are checked before
//! any tensor is built, and a key emitted twice in one call is refused.

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

/// An output name: empty (the hook point's own name) or `/`-separated
/// segments of `[A-Za-z0-9_-.]`, none of them empty, `.` or `..`.
pub(crate) fn check_name(name: &str) -> Result<(), HookError> {
    let chars_ok = name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
    let segments_ok = name.is_empty()
        || name
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if !chars_ok || !segments_ok {
        let shown: String = name.chars().take(MAX_NAME_LEN).collect();
        return Err(HookError::InvalidArgument(format!(
            "output name {shown:?} must be at most {MAX_NAME_LEN} characters of [A-Za-z0-9_-./] \
             in `/`-separated segments, none empty, `.` or `..`"
        )));
    }
    Ok(())
}

/// A shape for `numel` elements: at most [`MAX_RANK`] dimensions, each at
/// most `i64::MAX`, whose product is exactly `numel`.
pub(crate) fn check_shape(shape: &[u64], numel: usize) -> Result<Vec<i64>, HookError> {
    if shape.len() > MAX_RANK {
        return Err(HookError::InvalidArgument(format!(
            "output rank {} exceeds {MAX_RANK}",
            shape.len()
        )));
    }
    if let Some(d) = shape.iter().find(|&&d| d > i64::MAX as u64) {
        return Err(HookError::InvalidArgument(format!(
            "output dimension {d} exceeds {}",
            i64::MAX
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
    pub(super) fn reserve_output(&mut self, name: &str, bytes: u64) -> Result<(), HookError> {
        let charge = self.limits.output_charge(name, bytes);
        let max_n = self.limits.max_outputs_per_call;
        if self.call.emitted.len() as u64 >= u64::from(max_n) {
            let msg = format!("more than {max_n} outputs in one call");
            self.call.output_refused.get_or_insert(msg.clone());
            return Err(HookError::LimitExceeded(msg));
        }
        let cap = self.limits.max_output_bytes_per_call;
        if self.call.output_bytes.saturating_add(charge) > cap {
            let msg = format!(
                "emitting {bytes} bytes as {name:?} would exceed the cap of {cap} bytes per call \
                 ({} already emitted)",
                self.call.output_bytes
            );
            self.call.output_refused.get_or_insert(msg.clone());
            return Err(HookError::LimitExceeded(msg));
        }
        let key = output_key(&self.call.hook_point, name);
        if self.call.emitted_keys.contains(&key) {
            return Err(HookError::InvalidArgument(format!(
                "output {key:?} was already emitted in this call"
            )));
        }
        self.hold("an output", charge)
            .map_err(HookError::LimitExceeded)?;
        self.call.output_bytes += charge;
        Ok(())
    }

    /// Reserve and stage a copy of `v` (a view of the activation) under
    /// `name`: fresh storage, since the activation's own keeps changing
    /// after the call.
    pub(super) fn stage_copy(
        &mut self,
        name: &str,
        v: &Tensor,
        dtype: DType,
    ) -> Result<(), HookError> {
        let bytes = (v.numel() * dtype.size()) as u64;
        self.reserve_output(name, bytes)?;
        self.charge(bytes);
        let failed = |e: tch::TchError| HookError::Failed(e.to_string());
        let mut out = Tensor::f_empty(v.size(), (dtype.kind(), Device::Cpu)).map_err(failed)?;
        out.f_copy_(v).map_err(failed)?;
        self.stage(name, out);
        Ok(())
    }

    pub(super) fn stage(&mut self, name: &str, tensor: Tensor) {
        let key = output_key(&self.call.hook_point, name);
        self.call.emitted_keys.insert(key.clone());
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
        self.charge((name.len() + values.len() * 4) as u64);
        let r = (|| {
            check_name(&name)?;
            let dims = check_shape(&shape, values.len())?;
            self.reserve_output(&name, values.len() as u64 * 4)?;
            let t = Tensor::f_from_slice(&values)
                .and_then(|t| t.f_reshape(dims))
                .map_err(|e| HookError::Failed(e.to_string()))?;
            self.stage(&name, t);
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
        self.charge((name.len() + bytes.len()) as u64);
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
        self.charge((name.len() + s.len() * 24) as u64);
        let (view, resolved, dtype) = {
            let b = self.table.get(&act)?;
            match b.resolve(&from_wit_slice(&s)) {
                Ok(r) => (b.cpu_view(), r, b.dtype()),
                Err(e) => return Ok(Err(e.into())),
            }
        };
        let r = (|| {
            check_name(&name)?;
            let failed = |e: tch::TchError| HookError::Failed(e.to_string());
            let mut v = view.shallow_clone();
            for (d, &(start, count, step)) in resolved.dims.iter().enumerate() {
                let stop = start + count.saturating_sub(1) * step + usize::from(count > 0);
                v = v
                    .f_slice(d as i64, start as i64, stop as i64, step as i64)
                    .map_err(failed)?;
            }
            self.stage_copy(&name, &v, dtype)?;
            Ok(())
        })();
        Ok(r)
    }
}
