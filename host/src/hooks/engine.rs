//! The hook engine: one wasmtime `Engine` configured for sandboxed,
//! deterministic plugins (pooling allocator, CPU limit, NaN canonicalisation,
//! no threads or relaxed SIMD), the `Linker` with the host interfaces, and
//! the epoch ticker when wall-clock deadlines are used. Plugins keep it
//! alive; [`super::runtime::Runtime`] loads them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::HookPlugin;
use super::compile::EngineSettings;
use super::config::{CpuLimit, NonFinitePolicy, RuntimeConfig};
use super::error::LoadError;
use super::sandbox;
use super::store::{CallLimits, HostState};

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

/// The configured engine and linker every plugin of a runtime runs on.
pub(crate) struct Core {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) config: RuntimeConfig,
    pub(crate) limits: Arc<CallLimits>,
    pub(crate) settings: EngineSettings,
    /// Identifies the engine's code format in the compile cache.
    pub(crate) engine_key: String,
    _ticker: Option<Ticker>,
}

pub(crate) fn rt_err(e: impl std::fmt::Display) -> LoadError {
    LoadError::Runtime(e.to_string())
}

impl Core {
    pub(crate) fn new(config: RuntimeConfig) -> Result<Core, LoadError> {
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
        let mut linker = Linker::<HostState>::new(&engine);
        sandbox::add_wasi(&mut linker, &config.grants).map_err(rt_err)?;
        HookPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(rt_err)?;
        super::host::add_zero_copy_bytes(
            &mut linker,
            &format!(
                "{}/tensor@{}",
                super::wit::WIT_PACKAGE,
                super::wit::WIT_VERSION
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
        Ok(Core {
            engine,
            linker,
            config,
            limits,
            settings,
            engine_key,
            _ticker: ticker,
        })
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
}
