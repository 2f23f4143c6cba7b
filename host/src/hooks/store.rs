//! What a plugin instance's `Store` holds: the WASI context (nothing granted),
//! the resource table, the memory limiter, the plugin's persistent state and
//! the scratch of the call in progress (staged outputs, logs, state writes,
//! the call's random stream).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::hook::{Emitted, LogLevel};

/// Key-value state of one plugin registration on one rank (`save_ctx`).
pub type StateMap = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

/// Limits that apply inside a call, enforced by the host interfaces.
#[derive(Debug, Clone)]
pub struct CallLimits {
    /// Bytes a single call may emit.
    pub max_output_bytes_per_call: u64,
    /// Log messages kept per call; further ones are counted and dropped.
    pub max_log_messages: usize,
    /// Bytes of one log message kept.
    pub max_log_message_bytes: usize,
    /// Bytes of state one registration may hold.
    pub max_state_bytes: u64,
    /// Count non-finite values written to the activation.
    pub check_finite: bool,
}

/// Scratch of the call in progress. Everything here is discarded if the call
/// fails, and handed to the caller if it succeeds.
pub struct CallScope {
    pub hook_point: String,
    pub emitted: Vec<Emitted>,
    pub output_bytes: u64,
    /// Set when an emit was refused for size: the call fails even if the
    /// plugin ignores the error.
    pub output_refused: Option<String>,
    pub logs: Vec<(LogLevel, String)>,
    pub logs_dropped: usize,
    /// Pending state writes (`None` = removal), applied on success.
    pub state_writes: BTreeMap<String, Option<Vec<u8>>>,
    /// The generation step of the call, if any.
    pub generation: Option<crate::hooks::GenStep>,
    /// A backward hook's call (the tensor is a gradient).
    pub backward: bool,
    seed: u64,
    rng: Option<StdRng>,
}

impl CallScope {
    pub fn new(hook_point: &str, seed: u64) -> Self {
        CallScope {
            hook_point: hook_point.to_string(),
            emitted: Vec::new(),
            output_bytes: 0,
            output_refused: None,
            logs: Vec::new(),
            logs_dropped: 0,
            state_writes: BTreeMap::new(),
            generation: None,
            backward: false,
            seed,
            rng: None,
        }
    }

    /// The call's random stream, seeded on first use.
    pub fn rng(&mut self) -> &mut StdRng {
        let seed = self.seed;
        self.rng.get_or_insert_with(|| StdRng::seed_from_u64(seed))
    }
}

/// Memory and table caps of one instance; records that a cap was hit so that
/// the resulting trap can be reported as what it is.
pub struct Limiter {
    pub max_memory_bytes: usize,
    pub max_table_elements: usize,
    pub memory_hit: bool,
    pub table_hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            self.memory_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements {
            self.table_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        16
    }
}

/// The data of a plugin instance's `Store`.
pub struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: Limiter,
    pub limits: Arc<CallLimits>,
    /// Committed state of this registration on this rank.
    pub state: StateMap,
    /// The call in progress (a fresh one is installed before every call).
    pub call: CallScope,
    /// A capability the guest tried to use without a grant.
    pub denied: Option<String>,
    /// A hook call is running (not instantiation or `init`).
    pub in_call: bool,
    /// The environment was read during the current hook call.
    pub env_read: bool,
    /// What the guest wrote to stdout/stderr (bounded; shown in errors only).
    pub stdio: super::sandbox::Capture,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
