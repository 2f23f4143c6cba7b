//! The hook runtime: one wasmtime `Engine` configured for sandboxed,
//! deterministic plugins (pooling allocator, CPU limit, NaN canonicalisation,
//! no threads or relaxed SIMD), the `Linker` with the host interfaces, the
//! cache of compiled components, and the epoch ticker when wall-clock
//! deadlines are used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::artifact::Plugin;
use super::bindings::HookPlugin;
use super::error::LoadError;
use super::sandbox::{self, Grants};
use super::store::{CallLimits, HostState};

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
    pub call_limits: CallLimits,
    pub non_finite: NonFinitePolicy,
    pub grants: Grants,
    /// Where compiled components are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
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
            call_limits: CallLimits {
                max_output_bytes_per_call: 1 << 30,
                max_log_messages: 64,
                max_log_message_bytes: 2048,
                max_state_bytes: 256 << 20,
                check_finite: false,
            },
            non_finite: NonFinitePolicy::Allow,
            grants: Grants::default(),
            cache_dir: default_cache_dir(),
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

struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A configured hook runtime. Cheap to share (`Arc`); plugins loaded from it
/// keep it alive.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) config: RuntimeConfig,
    pub(crate) limits: Arc<CallLimits>,
    loaded: Mutex<HashMap<String, Arc<Plugin>>>,
    engine_key: String,
    _ticker: Option<Ticker>,
}

fn rt_err(e: impl std::fmt::Display) -> LoadError {
    LoadError::Runtime(e.to_string())
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Arc<Runtime>, LoadError> {
        let mut pool = PoolingAllocationConfig::new();
        let n = config.max_instances.max(1);
        pool.total_component_instances(n)
            .total_core_instances(n * 24)
            .total_memories(n * 4)
            .total_tables(n * 8)
            .total_stacks(0)
            .max_memory_size(config.max_memory_bytes)
            .table_elements(config.max_table_elements)
            .max_core_instances_per_component(24)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20)
            .max_unused_warm_slots(n);

        let mut c = Config::new();
        c.wasm_component_model(true)
            .concurrency_support(false)
            .consume_fuel(matches!(config.cpu, CpuLimit::Fuel(_)))
            .epoch_interruption(matches!(config.cpu, CpuLimit::Deadline(_)))
            .max_wasm_stack(config.max_wasm_stack)
            // Determinism across ranks: canonical NaNs, no relaxed SIMD (threads are
            // not compiled in).
            .cranelift_nan_canonicalization(true)
            .wasm_relaxed_simd(false)
            .parallel_compilation(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c).map_err(rt_err)?;

        let mut linker = Linker::<HostState>::new(&engine);
        sandbox::add_wasi(&mut linker, &config.grants).map_err(rt_err)?;
        HookPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(rt_err)?;
        super::host::add_zero_copy_bytes(
            &mut linker,
            &format!(
                "{}/tensor@{}",
                super::artifact::WIT_PACKAGE,
                super::artifact::WIT_VERSION
            ),
        )
        .map_err(rt_err)?;

        let ticker = match config.cpu {
            CpuLimit::Deadline(_) => {
                let stop = Arc::new(AtomicBool::new(false));
                let (e, s, tick) = (engine.clone(), stop.clone(), config.epoch_tick);
                let handle = std::thread::Builder::new()
                    .name("flexmodel-epoch".into())
                    .spawn(move || {
                        while !s.load(Ordering::Relaxed) {
                            std::thread::sleep(tick);
                            e.increment_epoch();
                        }
                    })
                    .map_err(rt_err)?;
                Some(Ticker {
                    stop,
                    handle: Some(handle),
                })
            }
            _ => None,
        };

        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
        let engine_key = format!("{:016x}", std::hash::Hasher::finish(&h));
        let limits = Arc::new(CallLimits {
            check_finite: config.non_finite != NonFinitePolicy::Allow,
            ..config.call_limits.clone()
        });
        Ok(Arc::new(Runtime {
            engine,
            linker,
            config,
            limits,
            loaded: Mutex::new(HashMap::new()),
            engine_key,
            _ticker: ticker,
        }))
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Epoch ticks corresponding to the configured deadline.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        match self.config.cpu {
            CpuLimit::Deadline(d) => {
                let tick = self.config.epoch_tick.as_nanos().max(1);
                (d.as_nanos().div_ceil(tick) as u64).max(1)
            }
            _ => u64::MAX,
        }
    }

    /// Load a plugin from a `.wasm` file.
    pub fn load_file(self: &Arc<Self>, path: impl AsRef<Path>) -> Result<Arc<Plugin>, LoadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Load a plugin from the bytes of a component. Validates it, compiles it
    /// (or takes it from the cache) and reads its metadata. Loading the same
    /// bytes twice returns the same plugin.
    pub fn load(self: &Arc<Self>, bytes: &[u8]) -> Result<Arc<Plugin>, LoadError> {
        let hash = hex::encode(Sha256::digest(bytes));
        if let Some(p) = self.loaded.lock().get(&hash) {
            return Ok(p.clone());
        }
        super::artifact::check_header(bytes)?;
        let component = self.compile(bytes, &hash)?;
        let plugin = Arc::new(Plugin::from_component(self, component, hash.clone())?);
        self.loaded.lock().insert(hash, plugin.clone());
        Ok(plugin)
    }

    /// Compile `bytes`, going through the on-disk cache of precompiled
    /// artifacts keyed by content hash and engine configuration.
    fn compile(&self, bytes: &[u8], hash: &str) -> Result<Component, LoadError> {
        let Some(dir) = &self.config.cache_dir else {
            return Component::new(&self.engine, bytes)
                .map_err(|e| LoadError::Invalid(format!("{e:#}")));
        };
        let path = dir.join(format!("{hash}-{}.cwasm", self.engine_key));
        let sum_path = path.with_extension("sha256");
        if let (Ok(art), Ok(sum)) = (std::fs::read(&path), std::fs::read_to_string(&sum_path)) {
            // Only deserialise an artifact this host wrote: its checksum must match.
            if hex::encode(Sha256::digest(&art)) == sum.trim() {
                // SAFETY: the artifact was produced by `precompile_component` of
                // an engine with the same compatibility hash, and is unmodified.
                if let Ok(c) = unsafe { Component::deserialize(&self.engine, &art) } {
                    return Ok(c);
                }
            }
        }
        let art = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        // SAFETY: just produced by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &art) }
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        // Best effort: a read-only or full cache only costs a recompile later.
        let _ = write_cache(dir, &path, &sum_path, &art);
        Ok(component)
    }
}

fn write_cache(dir: &Path, path: &Path, sum_path: &Path, art: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, art)?;
    std::fs::write(sum_path, hex::encode(Sha256::digest(art)))?;
    std::fs::rename(&tmp, path)
}
