//! A registered WebAssembly hook: a [`Plugin`] plus the user's configuration,
//! with one instance per rank, created on first use and re-created after a
//! trap. Implements [`Hook`].

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tch::Tensor;

use super::artifact::Plugin;
use super::error::{HookError, HookErrorKind, LoadError};
use super::hook::{Access, CallContext, CallReport, Hook};
use super::instance::{PluginInstance, stream_seed};
use super::store::StateMap;

/// Per-rank slot: the rank's state (kept across re-instantiation) and its
/// live instance, if any.
#[derive(Default)]
struct Slot {
    state: StateMap,
    instance: Option<PluginInstance>,
}

/// A plugin registered with a configuration.
pub struct WasmHook {
    plugin: Arc<Plugin>,
    config: String,
    access: Access,
    /// This registration's part of every call's random seed (user seed,
    /// plugin hash, config), computed once.
    seed_base: u64,
    slots: Mutex<HashMap<u32, Arc<Mutex<Slot>>>>,
}

impl std::fmt::Debug for WasmHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmHook")
            .field("plugin", &self.plugin)
            .field("config", &self.config)
            .finish()
    }
}

impl WasmHook {
    /// Register `plugin` with `config` (a JSON string; `"{}"` if empty). The
    /// configuration is checked now, by the plugin's `init`, so a bad one
    /// fails at registration rather than in the middle of a forward pass.
    pub fn new(plugin: Arc<Plugin>, config: &str) -> Result<WasmHook, LoadError> {
        let config = if config.trim().is_empty() {
            "{}".to_string()
        } else {
            config.to_string()
        };
        if let Some(m) = &plugin.manifest {
            m.validate_config(&plugin.info.name, &config)?;
        }
        let state = StateMap::default();
        let mut inst =
            PluginInstance::new(&plugin, "<init>".into(), 0, state.clone()).map_err(|e| {
                LoadError::Instantiate {
                    plugin: plugin.info.name.clone(),
                    error: e.kind.to_string(),
                }
            })?;
        let access = inst.init(&config).map_err(|(e, _)| LoadError::Init {
            plugin: plugin.info.name.clone(),
            error: e.kind.to_string(),
        })?;
        // The streams depend on what the config says, not on its spacing.
        let said = serde_json::from_str::<serde_json::Value>(&config)
            .map_or_else(|_| config.clone(), |v| v.to_string());
        // The plugin by name and version, not by its bytes: a plugin rebuilt
        // (another compiler, another language) draws the same numbers.
        let identity = format!("{}@{}", plugin.info.name, plugin.info.version);
        let seed_base = stream_seed(plugin.seed, &identity, &said, 0);
        // The probe instance becomes rank 0's (usual first caller).
        let slot = Slot {
            state,
            instance: Some(inst),
        };
        let mut slots = HashMap::new();
        slots.insert(0u32, Arc::new(Mutex::new(slot)));
        Ok(WasmHook {
            plugin,
            config,
            access,
            seed_base,
            slots: Mutex::new(slots),
        })
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    pub fn config(&self) -> &str {
        &self.config
    }

    /// The state a rank's instance has committed (for inspection and tests).
    pub fn state_snapshot(&self, rank: u32) -> std::collections::BTreeMap<String, Vec<u8>> {
        let slot = self.slots.lock().get(&rank).cloned();
        slot.map(|s| s.lock().state.lock().to_map())
            .unwrap_or_default()
    }

    /// Whether a rank currently holds a live instance.
    pub fn has_instance(&self, rank: u32) -> bool {
        self.slots
            .lock()
            .get(&rank)
            .is_some_and(|s| s.lock().instance.is_some())
    }
}

impl Hook for WasmHook {
    fn name(&self) -> &str {
        &self.plugin.info.name
    }

    fn access(&self) -> Access {
        self.access.clone()
    }

    fn ident(&self) -> String {
        self.plugin.ident()
    }

    fn call(&self, ctx: &CallContext, activation: &mut Tensor) -> Result<CallReport, HookError> {
        let rank = ctx.rank.global_rank;
        let slot = self.slots.lock().entry(rank).or_default().clone();
        let mut slot = slot.lock();
        if slot.instance.is_none() {
            let mut inst = PluginInstance::new(
                &self.plugin,
                ctx.hook_point.clone(),
                rank,
                slot.state.clone(),
            )?;
            if let Err((e, _)) = inst.init(&self.config) {
                return Err(HookError {
                    kind: match e.kind {
                        HookErrorKind::Plugin(p) => HookErrorKind::Instantiate {
                            message: p.to_string(),
                        },
                        k => k,
                    },
                    ..e
                });
            }
            slot.instance = Some(inst);
        }
        let seed = stream_seed(self.seed_base, "", &ctx.hook_point, ctx.forward_index);
        let inst = slot.instance.as_mut().expect("instance was just ensured");
        match inst.call(ctx, activation, &self.access, seed) {
            Ok(report) => Ok(report),
            Err((e, broken)) => {
                if broken {
                    // Discard the store: a trapped instance is never reused.
                    slot.instance = None;
                }
                Err(e)
            }
        }
    }
}
