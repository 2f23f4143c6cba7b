//! FlexModel-rs host library.
//!
//! Dependencies flow one way: models → distributed → hooks → package → engine → API →
//! CLI.
//! - [`models`]: Hugging Face checkpoints run with tch, with named hook
//!   points, whole or as one rank's shard;
//! - [`distributed`]: communicators (threads, MPI, NCCL, and the trivial
//!   one of a single rank), the mesh, and the layout of hook points over
//!   tensor-parallel ranks;
//! - [`hooks`]: the sandboxed WebAssembly hook runtime;
//! - [`package`]: plugins as shareable artifacts: manifest, signatures,
//!   trust, OCI registries, the lockfile;
//! - [`engine`]: one implementation of forward, generation and backward
//!   passes with hooks, for one rank of any mesh;
//! - [`service`]: `flexmodel serve`, the multi-tenant hook service;
//! - [`api`]: the public surface: [`api::FlexModel`] on one rank or a mesh.

pub mod api;
pub mod distributed;
pub mod engine;
pub mod harvest;
pub mod hooks;
pub mod models;
pub mod package;
pub mod service;

/// Tune glibc's allocator for tensor workloads: serve large blocks from the
/// heap (mmap threshold 256 MiB) and keep freed memory (trim threshold
/// 1 GiB), so activations of the same size are reused warm instead of being
/// unmapped and page-faulted in again on every forward. Process-wide: the
/// `flexmodel` binary and the benchmarks call it at start-up; the library never
/// does on its own. Returns whether glibc accepted the settings.
///
/// Also one arena for all threads: glibc's per-thread arenas cannot hold a
/// block over 64 MiB and map it afresh every time, which made the ranks of
/// the thread backend (and their collectives) page-fault on every message.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
                && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
