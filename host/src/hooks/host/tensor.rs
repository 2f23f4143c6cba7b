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

impl HostState {
    /// Charge what the last operation on `a` cost: fuel for the bytes it
    /// wrote or transformed and for the journal it grew, and the journal's
    /// growth against the call's host-memory cap.
    fn settle(&mut self, a: &Resource<ActivationBuf>) -> R<()> {
        let (work, grown) = buf_mut(self, a)?.take_costs();
        self.charge(work);
        if grown > 0 {
            // Refused: the call fails when it returns (`host_limit`).
            let _ = self.hold("the undo journal", grown);
        }
        Ok(())
    }

    fn charged<T>(
        &mut self,
        a: &Resource<ActivationBuf>,
        r: Result<T, HookError>,
    ) -> R<Result<T, HookError>> {
        self.settle(a)?;
        Ok(r)
    }
}

impl HostActivation for HostState {
    fn shape(&mut self, a: Resource<ActivationBuf>) -> R<Vec<u64>> {
        self.charge(64);
        Ok(buf(self, &a)?.shape().iter().map(|&d| d as u64).collect())
    }

    fn dtype(&mut self, a: Resource<ActivationBuf>) -> R<Dtype> {
        self.charge(0);
        Ok(to_wit_dtype(buf(self, &a)?.dtype()))
    }

    fn numel(&mut self, a: Resource<ActivationBuf>) -> R<u64> {
        self.charge(0);
        Ok(buf(self, &a)?.numel() as u64)
    }

    fn writable(&mut self, a: Resource<ActivationBuf>) -> R<bool> {
        self.charge(0);
        Ok(buf(self, &a)?.writable())
    }

    fn read(
        &mut self,
        a: Resource<ActivationBuf>,
        offset: u64,
        len: u64,
    ) -> R<Result<Vec<f32>, HookError>> {
        let r = buf(self, &a)?.read_f32(offset, len);
        self.charge(r.as_ref().map_or(0, |v| v.len() as u64 * 4));
        Ok(r.map_err(Into::into))
    }

    fn read_bytes(
        &mut self,
        a: Resource<ActivationBuf>,
        offset: u64,
        len: u64,
    ) -> R<Result<Vec<u8>, HookError>> {
        let r = buf(self, &a)?.read_bytes(offset, len);
        self.charge(r.as_ref().map_or(0, |v| v.len() as u64));
        Ok(r.map_err(Into::into))
    }

    fn read_slice(
        &mut self,
        a: Resource<ActivationBuf>,
        s: Vec<DimRange>,
    ) -> R<Result<Vec<f32>, HookError>> {
        let r = buf(self, &a)?.read_slice(&from_wit_slice(&s));
        self.charge(s.len() as u64 * 24 + r.as_ref().map_or(0, |v| v.len() as u64 * 4));
        Ok(r.map_err(Into::into))
    }

    fn slice_shape(
        &mut self,
        a: Resource<ActivationBuf>,
        s: Vec<DimRange>,
    ) -> R<Result<Vec<u64>, HookError>> {
        self.charge(s.len() as u64 * 24);
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
        self.charge(values.len() as u64 * 4);
        let r = buf_mut(self, &a)?.write_f32(offset, &values);
        self.charged(&a, r.map_err(Into::into))
    }

    fn write_bytes(
        &mut self,
        a: Resource<ActivationBuf>,
        offset: u64,
        bytes: Vec<u8>,
    ) -> R<Result<(), HookError>> {
        self.charge(bytes.len() as u64);
        let r = buf_mut(self, &a)?.write_bytes(offset, &bytes);
        self.charged(&a, r.map_err(Into::into))
    }

    fn write_slice(
        &mut self,
        a: Resource<ActivationBuf>,
        s: Vec<DimRange>,
        values: Vec<f32>,
    ) -> R<Result<(), HookError>> {
        self.charge(s.len() as u64 * 24 + values.len() as u64 * 4);
        let r = buf_mut(self, &a)?.write_slice(&from_wit_slice(&s), &values);
        self.charged(&a, r.map_err(Into::into))
    }

    fn fill(
        &mut self,
        a: Resource<ActivationBuf>,
        s: Vec<DimRange>,
        value: f32,
    ) -> R<Result<(), HookError>> {
        self.charge(s.len() as u64 * 24);
        let r = buf_mut(self, &a)?.fill(&from_wit_slice(&s), value);
        self.charged(&a, r.map_err(Into::into))
    }

    fn scale(
        &mut self,
        a: Resource<ActivationBuf>,
        s: Vec<DimRange>,
        factor: f32,
    ) -> R<Result<(), HookError>> {
        self.charge(s.len() as u64 * 24);
        let r = buf_mut(self, &a)?.scale(&from_wit_slice(&s), factor);
        self.charged(&a, r.map_err(Into::into))
    }

    fn add_vector(
        &mut self,
        a: Resource<ActivationBuf>,
        s: Vec<DimRange>,
        v: Vec<f32>,
        alpha: f32,
    ) -> R<Result<(), HookError>> {
        self.charge(s.len() as u64 * 24 + v.len() as u64 * 4);
        let r = buf_mut(self, &a)?.add_vector(&from_wit_slice(&s), &v, alpha);
        self.charged(&a, r.map_err(Into::into))
    }

    fn drop(&mut self, _a: Resource<ActivationBuf>) -> R<()> {
        // The host owns activations and removes them from the table itself
        // when the call ends; guests only ever hold borrows.
        Ok(())
    }
}

/// Native-dtype bytes of a range of the activation, lowered into the guest
/// straight from tensor memory (one copy instead of two).
struct TensorBytes {
    ptr: *const u8,
    len: usize,
}

// SAFETY: only constructed and consumed within one host call, on the thread
// that owns the activation; the memory is not written meanwhile.
unsafe impl Send for TensorBytes {}

impl AsRef<[u8]> for TensorBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: points at `len` initialised bytes of the activation (see above).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Replace the generated `read-bytes` and `write-bytes` with versions that
/// copy once between guest memory and tensor memory (the generated ones go
/// through an intermediate `Vec`). Same WIT signatures, same checks:
/// - `read-bytes` returns a `bytes::Bytes` over the tensor's memory, which
///   wasmtime lowers straight into the guest's `list<u8>`;
/// - `write-bytes` takes the guest's list in place (`WasmList<u8>`) and copies
///   it into the tensor after journaling the old bytes.
pub(crate) fn add_zero_copy_bytes(
    linker: &mut wasmtime::component::Linker<HostState>,
    tensor_interface: &str,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.instance(tensor_interface)?.func_wrap(
        "[method]activation.read-bytes",
        |mut store: wasmtime::StoreContextMut<'_, HostState>,
         (a, offset, len): (Resource<ActivationBuf>, u64, u64)|
         -> wasmtime::Result<(Result<bytes::Bytes, HookError>,)> {
            let r = store.data().table.get(&a)?.raw_bytes(offset, len);
            store
                .data_mut()
                .charge(r.as_ref().map_or(0, |&(_, n)| n as u64));
            Ok((r
                .map(|(ptr, len)| bytes::Bytes::from_owner(TensorBytes { ptr, len }))
                .map_err(Into::into),))
        },
    )?;
    linker.instance(tensor_interface)?.func_wrap(
        "[method]activation.write-bytes",
        |mut store: wasmtime::StoreContextMut<'_, HostState>,
         (a, offset, list): (
            Resource<ActivationBuf>,
            u64,
            wasmtime::component::WasmList<u8>,
        )|
         -> wasmtime::Result<(Result<(), HookError>,)> {
            let len = list.len();
            store.data_mut().charge(len as u64);
            let prepared = store
                .data_mut()
                .table
                .get_mut(&a)?
                .prepare_write_bytes(offset, len);
            store.data_mut().settle(&a)?;
            let dst = match prepared {
                Ok(p) => p,
                Err(e) => return Ok((Err(e.into()),)),
            };
            let src = list.as_le_slice(&store);
            // SAFETY: `dst` points at `len` bytes of tensor memory (checked and
            // journaled above), which does not overlap guest memory.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, len) };
            let check = store.data().limits.check_finite;
            if check {
                let copy = list.as_le_slice(&store).to_vec();
                store
                    .data_mut()
                    .table
                    .get_mut(&a)?
                    .count_non_finite_bytes(&copy);
            }
            Ok((Ok(()),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
