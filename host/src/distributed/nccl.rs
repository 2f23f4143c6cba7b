//! The NCCL backend (cargo feature `nccl`): tensor collectives on CUDA
//! tensors through NCCL, via cudarc with the CUDA driver and NCCL loaded at
//! run time. Control messages (hook outcomes, reports, pipeline hand-offs)
//! go through a bootstrap communicator (threads or MPI), which also shares
//! the NCCL unique id.
//!
//! [`available`] checks that the libraries and a GPU are present before
//! anything is called: without them the backend refuses with
//! [`CommError::Unavailable`] (cudarc's lazily loaded symbols would panic).
//!
//! NCCL operations do not honour the communicator's timeout once launched;
//! on timeouts of the bootstrap the communicator is aborted.

use std::ffi::CString;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{result, sys};
use tch::{Device, Kind, Tensor};

use super::comm::{Communicator, host_all_gather, host_all_reduce_sum};
use super::error::CommError;

/// Whether NCCL can run here: the CUDA driver and NCCL libraries load and
/// libtorch sees a CUDA device.
pub fn available() -> Result<(), CommError> {
    for lib in ["libcuda.so.1", "libnccl.so.2"] {
        let name = CString::new(lib).map_err(|e| CommError::Invalid(e.to_string()))?;
        // SAFETY: dlopen/dlclose of a library by name; nothing is called.
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
        if h.is_null() {
            return Err(CommError::Unavailable(format!(
                "{lib} cannot be loaded: the NCCL backend needs an NVIDIA GPU, its driver and NCCL"
            )));
        }
        // SAFETY: `h` is a live handle from dlopen.
        unsafe { libc::dlclose(h) };
    }
    if !crate::models::cuda::available() {
        return Err(CommError::Unavailable(
            "libtorch sees no CUDA device (a CPU-only libtorch?)".into(),
        ));
    }
    Ok(())
}

fn nccl_err(e: result::NcclError) -> CommError {
    CommError::Backend(format!("NCCL: {e:?}"))
}

fn driver_err(e: cudarc::driver::DriverError) -> CommError {
    CommError::Backend(format!("CUDA: {e:?}"))
}

fn dtype(k: Kind) -> Result<sys::ncclDataType_t, CommError> {
    Ok(match k {
        Kind::Float => sys::ncclDataType_t::ncclFloat32,
        Kind::Half => sys::ncclDataType_t::ncclFloat16,
        Kind::BFloat16 => sys::ncclDataType_t::ncclBfloat16,
        Kind::Double => sys::ncclDataType_t::ncclFloat64,
        Kind::Int64 => sys::ncclDataType_t::ncclInt64,
        Kind::Uint8 | Kind::Bool => sys::ncclDataType_t::ncclUint8,
        other => {
            return Err(CommError::Invalid(format!(
                "NCCL cannot move {other:?} tensors"
            )));
        }
    })
}

/// A rank's NCCL communicator on one GPU.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    stream: Arc<CudaStream>,
    bootstrap: Box<dyn Communicator>,
    ordinal: usize,
}

impl NcclComm {
    /// Create the NCCL communicator of `bootstrap`'s group on GPU `ordinal`
    /// (collective over `bootstrap`).
    pub fn new(bootstrap: Box<dyn Communicator>, ordinal: usize) -> Result<NcclComm, CommError> {
        available()?;
        let id = if bootstrap.rank() == 0 {
            let id = result::get_uniqueid().map_err(nccl_err)?;
            Some(Bytes::from(
                id.internal.iter().map(|&c| c as u8).collect::<Vec<u8>>(),
            ))
        } else {
            None
        };
        let id = bootstrap.broadcast_bytes(id, 0)?;
        if id.len() != 128 {
            return Err(CommError::Invalid(format!("NCCL id of {} bytes", id.len())));
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, s) in internal.iter_mut().zip(id.iter()) {
            *d = *s as std::ffi::c_char;
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err)?;
        ctx.bind_to_thread().map_err(driver_err)?;
        let stream = ctx.new_stream().map_err(driver_err)?;
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by NCCL on success; the id is the one
        // rank 0 generated, shared with every member.
        unsafe {
            result::comm_init_rank(
                comm.as_mut_ptr(),
                bootstrap.size() as i32,
                sys::ncclUniqueId { internal },
                bootstrap.rank() as i32,
            )
            .map_err(nccl_err)?;
        }
        Ok(NcclComm {
            // SAFETY: initialised by the successful call above.
            comm: unsafe { comm.assume_init() },
            stream,
            bootstrap,
            ordinal,
        })
    }

    fn on_gpu(&self, t: &Tensor) -> bool {
        t.device() == Device::Cuda(self.ordinal)
    }

    /// Run `op` on the NCCL stream after torch's pending work, and wait.
    fn launch(
        &self,
        op: impl FnOnce(sys::cudaStream_t) -> Result<result::NcclStatus, result::NcclError>,
    ) -> Result<(), CommError> {
        tch::Cuda::synchronize(self.ordinal as i64);
        op(self.stream.cu_stream() as sys::cudaStream_t).map_err(nccl_err)?;
        self.stream.synchronize().map_err(driver_err)
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: the communicator was initialised in `new` and is destroyed once.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.bootstrap.rank()
    }
    fn size(&self) -> usize {
        self.bootstrap.size()
    }
    fn global_rank(&self, r: usize) -> usize {
        self.bootstrap.global_rank(r)
    }
    fn timeout(&self) -> Duration {
        self.bootstrap.timeout()
    }
    fn set_epoch(&self, epoch: u64) {
        self.bootstrap.set_epoch(epoch)
    }
    fn barrier(&self) -> Result<(), CommError> {
        self.bootstrap.barrier()
    }
    fn all_gather_bytes(&self, b: Bytes) -> Result<Vec<Bytes>, CommError> {
        self.bootstrap.all_gather_bytes(b)
    }
    fn gather_bytes(&self, b: Bytes, root: usize) -> Result<Option<Vec<Bytes>>, CommError> {
        self.bootstrap.gather_bytes(b, root)
    }
    fn broadcast_bytes(&self, b: Option<Bytes>, root: usize) -> Result<Bytes, CommError> {
        self.bootstrap.broadcast_bytes(b, root)
    }
    fn send_bytes(&self, b: Bytes, dst: usize) -> Result<(), CommError> {
        self.bootstrap.send_bytes(b, dst)
    }
    fn recv_bytes(&self, src: usize) -> Result<Bytes, CommError> {
        self.bootstrap.recv_bytes(src)
    }
    fn split(&self, color: u32, key: u32) -> Result<Box<dyn Communicator>, CommError> {
        let sub = self.bootstrap.split(color, key)?;
        Ok(Box::new(NcclComm::new(sub, self.ordinal)?))
    }
    fn abort(&self, reason: &str) {
        self.bootstrap.abort(reason);
    }
    fn bytes_received(&self) -> u64 {
        self.bootstrap.bytes_received()
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, CommError> {
        if !self.on_gpu(t) {
            return host_all_reduce_sum(self, t);
        }
        let src = t.contiguous();
        let out = src.empty_like();
        let ty = dtype(src.kind())?;
        self.launch(|stream| {
            // SAFETY: both buffers are live, contiguous CUDA tensors of
            // `numel` elements on this communicator's device.
            unsafe {
                result::all_reduce(
                    src.data_ptr(),
                    out.data_ptr(),
                    src.numel(),
                    ty,
                    sys::ncclRedOp_t::ncclSum,
                    self.comm,
                    stream,
                )
            }
        })?;
        Ok(out)
    }

    fn all_gather_assembled(
        &self,
        t: &Tensor,
        assemble: &dyn Fn(&[Tensor]) -> Tensor,
    ) -> Result<(Tensor, u64), CommError> {
        // Device-resident: the parts arrive as tensors on the GPU.
        let parts = self.all_gather(t)?;
        let me = self.rank();
        let bytes = parts
            .iter()
            .enumerate()
            .filter(|(r, _)| *r != me)
            .map(|(_, p)| (p.numel() * p.kind().elt_size_in_bytes()) as u64)
            .sum();
        Ok((assemble(&parts), bytes))
    }

    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>, CommError> {
        if !self.on_gpu(t) {
            return host_all_gather(self, t);
        }
        // Shapes may differ (uneven splits): exchange them, pad to the largest.
        let shape = t.size();
        let enc: Vec<u8> = shape.iter().flat_map(|d| d.to_le_bytes()).collect();
        let shapes: Vec<Vec<i64>> = self
            .bootstrap
            .all_gather_bytes(Bytes::from(enc))?
            .iter()
            .map(|b| {
                b.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect()
            })
            .collect();
        let numels: Vec<i64> = shapes.iter().map(|s| s.iter().product()).collect();
        let max = numels.iter().copied().max().unwrap_or(0);
        let src = t.contiguous().flatten(0, -1);
        let src = if src.numel() as i64 == max {
            src
        } else {
            Tensor::cat(
                &[
                    src.shallow_clone(),
                    src.new_zeros([max - src.numel() as i64], (src.kind(), src.device())),
                ],
                0,
            )
        };
        let out = src.new_empty([max * self.size() as i64], (src.kind(), src.device()));
        let ty = dtype(src.kind())?;
        self.launch(|stream| {
            // SAFETY: `src` holds `max` elements, `out` `max * size`, both
            // contiguous on this communicator's device.
            unsafe {
                result::all_gather(
                    src.data_ptr(),
                    out.data_ptr(),
                    max as usize,
                    ty,
                    self.comm,
                    stream,
                )
            }
        })?;
        Ok(shapes
            .iter()
            .zip(&numels)
            .enumerate()
            .map(|(r, (s, &n))| out.narrow(0, r as i64 * max, n).view(s.as_slice()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::ThreadComm;

    /// Without a GPU (CI), the backend refuses with a clear error instead of
    /// panicking inside a lazily loaded symbol; with one, an all-reduce and
    /// an uneven all-gather over two ranks on GPU 0 give the host result.
    #[test]
    fn refuses_cleanly_or_reduces() {
        if available().is_err() {
            let world = ThreadComm::world(1, Duration::from_secs(5)).pop().unwrap();
            match NcclComm::new(Box::new(world), 0) {
                Err(CommError::Unavailable(m)) => assert!(!m.is_empty()),
                Err(e) => panic!("expected Unavailable, got {e}"),
                Ok(_) => panic!("NCCL unavailable, yet a communicator was made"),
            }
            return;
        }
        let handles: Vec<_> = ThreadComm::world(2, Duration::from_secs(60))
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let r = c.rank() as f32;
                    let n = NcclComm::new(Box::new(c), 0).unwrap();
                    let t = Tensor::from_slice(&[r, 2.0 * r]).to_device(Device::Cuda(0));
                    let s = n.all_reduce_sum(&t).unwrap().to_device(Device::Cpu);
                    let u = Tensor::ones([1 + n.rank() as i64], (Kind::Float, Device::Cuda(0)));
                    let g = n.all_gather(&u).unwrap();
                    (
                        Vec::<f32>::try_from(s).unwrap(),
                        g.iter().map(|x| x.numel()).collect::<Vec<_>>(),
                    )
                })
            })
            .collect();
        for h in handles {
            let (s, sizes) = h.join().unwrap();
            assert_eq!(s, vec![1.0, 2.0]);
            assert_eq!(sizes, vec![1, 2]);
        }
    }
}
