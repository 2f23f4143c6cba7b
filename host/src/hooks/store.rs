//! What a plugin instance's `Store` holds: the WASI context (nothing granted),
//! the resource table, the memory limiter, the plugin's persistent state and
//! the scratch of the call in progress (staged outputs, logs, state writes,
//! the call's random stream).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::hook::{Emitted, LogLevel};
pub use super::limits::HostLimits as CallLimits;

/// Key-value state of one plugin registration on one rank (`save_ctx`),
/// with its size kept up to date (keys + values), so that checking a write
/// against the cap is O(log n).
#[derive(Debug, Default, Clone)]
pub struct StateStore {
    map: BTreeMap<String, Vec<u8>>,
    bytes: u64,
}

impl StateStore {
    pub fn get(&self, key: &str) -> Option<&Vec<u8>> {
        self.map.get(key)
    }
    /// Bytes held: keys + values.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }
    pub fn insert(&mut self, key: String, value: Vec<u8>) {
        let add = (key.len() + value.len()) as u64;
        if let Some(old) = self.map.insert(key.clone(), value) {
            self.bytes -= (key.len() + old.len()) as u64;
        }
        self.bytes += add;
    }
    pub fn remove(&mut self, key: &str) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= (key.len() + old.len()) as u64;
        }
    }
    pub fn to_map(&self) -> BTreeMap<String, Vec<u8>> {
        self.map.clone()
    }
}

pub type StateMap = Arc<Mutex<StateStore>>;

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
    /// Change of the state's size (keys + values) the pending writes make.
    pub state_delta: i64,
    /// Change of the state's key count the pending writes make.
    pub state_key_delta: i64,
    /// Output keys staged by this call (for O(1) duplicate checks).
    pub emitted_keys: HashSet<String>,
    /// Bytes the host holds for this call (journal, outputs, pending state,
    /// logs), against `max_host_bytes_per_call`.
    pub host_bytes: u64,
    /// Fuel owed for host work done since the last charge.
    pub host_fuel: u64,
    /// Set when a host-side limit was hit: the call fails with this even if
    /// the plugin ignores the error it got.
    pub host_limit: Option<String>,
    /// The generation step of the call, if any.
    pub generation: Option<crate::hooks::GenStep>,
    /// A backward hook's call (the tensor is a gradient).
    pub backward: bool,
    /// The activation's tokens (WIT `tokens`).
    pub tokens: Option<crate::hooks::hook::Tokens>,
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
            state_delta: 0,
            state_key_delta: 0,
            emitted_keys: HashSet::new(),
            host_bytes: 0,
            host_fuel: 0,
            host_limit: None,
            generation: None,
            backward: false,
            tokens: None,
            seed,
            rng: None,
        }
    }

    /// Owe fuel for host work.
    pub fn owe_fuel(&mut self, fuel: u64) {
        self.host_fuel = self.host_fuel.saturating_add(fuel);
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
    pub stdio: super::capture::Capture,
}

impl HostState {
    /// Charge the fuel of a host function that touched `bytes` bytes (taken
    /// from the call's budget when the host function returns).
    pub fn charge(&mut self, bytes: u64) {
        let f = self.limits.fuel_for(bytes);
        self.call.owe_fuel(f);
    }

    /// Hold `bytes` more host memory for this call, or refuse (and remember
    /// the refusal: the call fails even if the plugin ignores the error).
    pub fn hold(&mut self, what: &str, bytes: u64) -> Result<(), String> {
        let cap = self.limits.max_host_bytes_per_call;
        let total = self.call.host_bytes.saturating_add(bytes);
        if total > cap {
            let msg = format!(
                "{what} would make the host hold {total} bytes for this call, over the cap of {cap}"
            );
            self.call.host_limit.get_or_insert(msg.clone());
            return Err(msg);
        }
        self.call.host_bytes = total;
        Ok(())
    }

    /// Release host memory held for this call.
    pub fn release(&mut self, bytes: u64) {
        self.call.host_bytes = self.call.host_bytes.saturating_sub(bytes);
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
