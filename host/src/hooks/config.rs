//! Everything configurable about the hook runtime: the CPU limit, the
//! policy on non-finite values, memory, limits, grants, the code cache.

use std::path::PathBuf;
use std::time::Duration;

use super::limits::{CacheLimits, CompileLimits};
use super::sandbox::Grants;
use super::store::CallLimits;

/// How a call's CPU time is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuLimit {
    /// Deterministic: at most this many fuel units (roughly wasm
    /// instructions) per call, so every rank fails or succeeds alike.
    Fuel(u64),
    /// Wall clock: interrupt a call after this long (epoch interruption;
    /// cheaper per instruction, but not deterministic across ranks).
    Deadline(Duration),
    /// No limit (benchmarks only).
    Unlimited,
}

/// What to do when a hook writes NaN or infinity into an activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonFinitePolicy {
    /// Allowed and not counted.
    #[default]
    Allow,
    /// Allowed, counted in the call report and logged as a warning.
    Report,
    /// The call fails (and its edits are undone).
    Reject,
}

/// Everything configurable about the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub cpu: CpuLimit,
    /// Linear memory one plugin instance may use.
    pub max_memory_bytes: usize,
    /// Elements one table may hold.
    pub max_table_elements: usize,
    /// Wasm call stack of one call.
    pub max_wasm_stack: usize,
    /// Plugin instances that may exist at once (pool size).
    pub max_instances: u32,
    /// Host work, host memory, outputs, state and logs (see [`super::limits`]).
    pub call_limits: CallLimits,
    /// Component size and the time and memory of compiling it.
    pub compile: CompileLimits,
    /// Size of the compiled-code cache.
    pub cache: CacheLimits,
    pub non_finite: NonFinitePolicy,
    pub grants: Grants,
    /// Where compiled components are cached; `None` disables the disk cache.
    /// Must be a directory of this user's that nobody else can write.
    pub cache_dir: Option<PathBuf>,
    /// The secret key that authenticates cache entries; outside `cache_dir`
    /// (default: `$FLEXMODEL_CACHE_KEY`, else `~/.config/flexmodel/cache.key`).
    pub cache_key_file: Option<PathBuf>,
    /// Seed of every plugin's random stream.
    pub seed: u64,
    /// Epoch tick for `CpuLimit::Deadline`.
    pub epoch_tick: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cpu: CpuLimit::Fuel(4_000_000_000),
            max_memory_bytes: 512 << 20,
            max_table_elements: 100_000,
            max_wasm_stack: 1 << 20,
            max_instances: 64,
            call_limits: CallLimits::default(),
            compile: CompileLimits::default(),
            cache: CacheLimits::default(),
            non_finite: NonFinitePolicy::Allow,
            grants: Grants::default(),
            cache_dir: default_cache_dir(),
            cache_key_file: super::cache::default_key_file(),
            seed: 0,
            epoch_tick: Duration::from_millis(1),
        }
    }
}

/// `$FLEXMODEL_CACHE_DIR`, else `<user cache dir>/flexmodel/wasm`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FLEXMODEL_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    dirs::cache_dir().map(|d| d.join("flexmodel").join("wasm"))
}
