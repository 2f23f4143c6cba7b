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
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::artifact::Plugin;
use super::bindings::HookPlugin;
use super::cache::CodeCache;
use super::compile::EngineSettings;
use super::error::LoadError;
use super::limits::{CacheLimits, CompileLimits};
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
    settings: EngineSettings,
    cache: Option<CodeCache>,
    compiles: std::sync::atomic::AtomicU64,
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

        let settings = EngineSettings {
            consume_fuel: matches!(config.cpu, CpuLimit::Fuel(_)),
            epoch_interruption: matches!(config.cpu, CpuLimit::Deadline(_)),
            max_wasm_stack: config.max_wasm_stack,
        };
        let mut c = settings.config();
        c.parallel_compilation(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c).map_err(rt_err)?;
        let cache = match &config.cache_dir {
            Some(dir) => {
                let key = config
                    .cache_key_file
                    .clone()
                    .ok_or_else(|| LoadError::Cache {
                        path: dir.display().to_string(),
                        message: "no cache key file (set RuntimeConfig::cache_key_file)".into(),
                    })?;
                Some(CodeCache::open(dir, &key, config.cache.clone())?)
            }
            None => None,
        };

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
            settings,
            cache,
            compiles: std::sync::atomic::AtomicU64::new(0),
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

    /// The compiled-code cache, if there is one.
    pub fn cache(&self) -> Option<&CodeCache> {
        self.cache.as_ref()
    }

    /// File name of a component's cache entry, for inspection and tests.
    pub fn cache_entry(&self, bytes: &[u8]) -> Option<PathBuf> {
        let hash = hex::encode(Sha256::digest(bytes));
        self.cache
            .as_ref()
            .map(|c| c.entry_path(&hash, &self.engine_key))
    }

    /// Load a plugin from a `.wasm` file (refused before reading when it is
    /// over the size limit).
    pub fn load_file(self: &Arc<Self>, path: impl AsRef<Path>) -> Result<Arc<Plugin>, LoadError> {
        let path = path.as_ref();
        let io = |source| LoadError::Io {
            path: path.display().to_string(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        let limit = self.config.compile.max_component_bytes;
        if len > limit as u64 {
            return Err(LoadError::TooLarge {
                plugin: path.display().to_string(),
                bytes: len as usize,
                limit,
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        self.load_named(&bytes, &path.display().to_string())
    }

    /// Load a plugin from the bytes of a component. Validates it, compiles it
    /// (or takes it from the cache) and reads its metadata. Loading the same
    /// bytes twice returns the same plugin.
    pub fn load(self: &Arc<Self>, bytes: &[u8]) -> Result<Arc<Plugin>, LoadError> {
        let hash = hex::encode(Sha256::digest(bytes));
        self.load_named(bytes, &format!("sha256:{}", &hash[..12]))
    }

    fn load_named(self: &Arc<Self>, bytes: &[u8], label: &str) -> Result<Arc<Plugin>, LoadError> {
        let hash = hex::encode(Sha256::digest(bytes));
        if let Some(p) = self.loaded.lock().get(&hash) {
            return Ok(p.clone());
        }
        let limit = self.config.compile.max_component_bytes;
        if bytes.len() > limit {
            return Err(LoadError::TooLarge {
                plugin: label.to_string(),
                bytes: bytes.len(),
                limit,
            });
        }
        super::artifact::check_header(bytes)?;
        let component = self.compile(bytes, &hash, label)?;
        let plugin = Arc::new(Plugin::from_component(self, component, hash.clone())?);
        self.loaded.lock().insert(hash, plugin.clone());
        Ok(plugin)
    }

    /// Native code for `bytes`: from the cache when an authenticated entry
    /// exists, else compiled (isolated, bounded) and cached. Processes of one
    /// machine compile a component once: the others wait on its lock.
    fn compile(&self, bytes: &[u8], hash: &str, label: &str) -> Result<Component, LoadError> {
        let deserialize = |art: &[u8]| {
            // SAFETY: `art` is either authenticated as written by this host for
            // this digest and engine, or was just produced by the compiler for
            // this engine's settings; wasmtime also checks the engine match.
            unsafe { Component::deserialize(&self.engine, art) }
        };
        let Some(cache) = &self.cache else {
            let art = self.precompile(bytes, label)?;
            return deserialize(&art).map_err(|e| LoadError::Invalid(format!("{e:#}")));
        };
        if let Some(art) = cache.get(hash, &self.engine_key)
            && let Ok(c) = deserialize(&art)
        {
            return Ok(c);
        }
        let _lock = cache.lock(hash, &self.engine_key);
        // Another process may have compiled it while we waited.
        if let Some(art) = cache.get(hash, &self.engine_key)
            && let Ok(c) = deserialize(&art)
        {
            return Ok(c);
        }
        let art = self.precompile(bytes, label)?;
        let component = deserialize(&art).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        // Best effort: a full disk only costs a recompile later.
        let _ = cache.put(hash, &self.engine_key, &art);
        Ok(component)
    }

    /// How many components this runtime compiled (rather than took from
    /// the cache or from memory).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    fn precompile(&self, bytes: &[u8], label: &str) -> Result<Vec<u8>, LoadError> {
        self.compiles.fetch_add(1, Ordering::Relaxed);
        if self.config.compile.isolate {
            super::compile::compile_isolated(&self.settings, bytes, &self.config.compile, label)
        } else {
            self.engine
                .precompile_component(bytes)
                .map_err(|e| LoadError::Invalid(format!("{e:#}")))
        }
    }
}
