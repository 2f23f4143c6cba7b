//! `flexmodel:hook/tensor`: the `activation` resource, backed by
//! [`ActivationBuf`]. Every method borrows the buffer from the resource table;
//! a handle that is not live any more traps (it cannot happen through the
//! generated guest bindings, which only lend the handle for one call).

use wasmtime::component::Resource;

use super::types::{from_wit_slice, to_wit_dtype};
use crate::hooks::activation::ActivationBuf;
use crate::hooks::bindings::flexmodel::hook::tensor::{Host, HostActivation};
use crate::hooks::bindings::wit_types::{DimRange, Dtype, HookError};
use crate::hooks::store::HostState;

type R<T> = wasmtime::Result<T>;

fn buf<'a>(s: &'a HostState, r: &Resource<ActivationBuf>) -> R<&'a ActivationBuf> {
    Ok(s.table.get(r)?)
}

fn buf_mut<'a>(s: &'a mut HostState, r: &Resource<ActivationBuf>) -> R<&'a mut ActivationBuf> {
    Ok(s.table.get_mut(r)?)
}

impl Host for HostState {}

impl HostActivation for HostState {
    fn shape(&mut self, a: Resource<ActivationBuf>) -> R<Vec<u64>> {
        Ok(buf(self, &a)?.shape().iter().map(|&d| d as u64).collect())
    }

    fn dtype(&mut self, a: Resource<ActivationBuf>) -> R<Dtype> {
        Ok(to_wit_dtype(buf(self, &a)?.dtype()))
    }

    fn numel(&mut self, a: Resource<ActivationBuf>) -> R<u64> {
        Ok(buf(self, &a)?.numel() as u64)
    }

    fn writable(&mut self, a: Resource<ActivationBuf>) -> R<bool> {
        Ok(buf(self, &a)?.writable())
    }

    fn read(
        &mut self,
        a: Resource<ActivationBuf>,
        offset: u64,
        len: u64,
    ) -> R<Result<Vec<f32>, HookError>> {
        Ok(buf(self, &a)?.read_f32(offset, len).map_err(Into::into))
    }

    fn read_bytes(
        &mut self,
        a: Resource<ActivationBuf>,
        offset: u64,
        len: u64,
    ) -> R<Result<Vec<u8>, HookError>> {
        Ok(buf(self, &a)?.read_bytes(offset, len).map_err(Into::into))
    }

    fn read_slice(
        &mut self,
        a: Resource<ActivationBuf>,
        s: Vec<DimRange>,
    ) -> R<Result<Vec<f32>, HookError>> {
        Ok(buf(self, &a)?
            .read_slice(&from_wit_slice(&s))
            .map_err(Into::into))
    }

    fn slice_shape(
        &mut self,
        a: Resource<ActivationBuf>,
        s: Vec<DimRange>,
    ) -> R<Result<Vec<u64>, HookError>> {
        let b = buf(self, &a)?;
        Ok(b.resolve(&from_wit_slice(&s))
            .map(|r| r.shape().into_iter().map(|d| d as u64).collect())
            .map_err(Into::into))
    }

    fn write(
        &mut self,
        a: Resource<ActivationBuf>,
        offset: u64,
        values: Vec<f32>,
    ) -> R<Result<(), HookError>> {
        Ok(buf_mut(self, &a)?
            .write_f32(offset, &values)
            .map_err(Into::into))
    }

    fn write_bytes(
        &mut self,
        a: Resource<ActivationBuf>,
        offset: u64,
        bytes: Vec<u8>,
    ) -> R<Result<(), HookError>> {
        Ok(buf_mut(self, &a)?
            .write_bytes(offset, &bytes)
            .map_err(Into::into))
    }

    fn write_slice(
        &mut self,
        a: Resource<ActivationBuf>,
        s: Vec<DimRange>,
        values: Vec<f32>,
    ) -> R<Result<(), HookError>> {
        Ok(buf_mut(self, &a)?
            .write_slice(&from_wit_slice(&s), &values)
            .map_err(Into::into))
    }

    fn fill(
        &mut self,
        a: Resource<ActivationBuf>,
        s: Vec<DimRange>,
        value: f32,
    ) -> R<Result<(), HookError>> {
        Ok(buf_mut(self, &a)?
            .fill(&from_wit_slice(&s), value)
            .map_err(Into::into))
    }

    fn scale(
        &mut self,
        a: Resource<ActivationBuf>,
        s: Vec<DimRange>,
        factor: f32,
    ) -> R<Result<(), HookError>> {
        Ok(buf_mut(self, &a)?
            .scale(&from_wit_slice(&s), factor)
            .map_err(Into::into))
    }

    fn add_vector(
        &mut self,
        a: Resource<ActivationBuf>,
        s: Vec<DimRange>,
        v: Vec<f32>,
        alpha: f32,
    ) -> R<Result<(), HookError>> {
        Ok(buf_mut(self, &a)?
            .add_vector(&from_wit_slice(&s), &v, alpha)
            .map_err(Into::into))
    }

    fn drop(&mut self, _a: Resource<ActivationBuf>) -> R<()> {
        // The host owns activations and removes them from the table itself
        // when the call ends; guests only ever hold borrows.
        Ok(())
    }
}
