//! libtorch's CUDA backend. It lives in `libtorch_cuda.so`, which registers
//! itself with libtorch when loaded; nothing of ours calls into it, so the
//! linker's `--as-needed` drops it from the binaries and a CUDA libtorch
//! reports no GPU. [`available`] loads it (from the loader's path: the
//! binaries' rpath, or `LD_LIBRARY_PATH` pointing at another `torch/lib` of
//! the same version, as on the lent GPU machine) before asking libtorch.

use std::ffi::CString;
use std::sync::OnceLock;

/// Load `libtorch_cuda.so` once (a CPU-only libtorch has none: nothing
/// happens) and say whether libtorch then sees a CUDA device.
pub fn available() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    LOADED.get_or_init(|| {
        let Ok(name) = CString::new("libtorch_cuda.so") else {
            return false;
        };
        // SAFETY: dlopen of a library by name; the handle is kept for the
        // process's life (libtorch holds pointers into it once registered).
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        !h.is_null()
    });
    tch::Cuda::is_available()
}

/// CUDA devices libtorch sees (0 without a GPU or a CUDA libtorch).
pub fn device_count() -> usize {
    if available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}
