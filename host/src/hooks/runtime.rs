//! The hook runtime users hold: the engine ([`super::engine`]), the
//! authenticated cache of compiled components, and loading: validate,
//! compile (isolated, bounded) or take from the cache, and ask the plugin
//! who it is. Loading the same bytes twice returns the same plugin.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::artifact::Plugin;
use super::cache::CodeCache;
use super::config::RuntimeConfig;
use super::engine::Core;
use super::error::LoadError;
use super::instance::PluginInstance;

/// Plugins kept loaded in memory before the idle ones are forgotten.
const MAX_LOADED: usize = 64;

/// A configured hook runtime. Cheap to share (`Arc`); plugins loaded from it
/// keep its engine alive.
pub struct Runtime {
    pub(crate) core: Arc<Core>,
    loaded: Mutex<HashMap<String, Arc<Plugin>>>,
    cache: Option<CodeCache>,
    compiles: std::sync::atomic::AtomicU64,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Arc<Runtime>, LoadError> {
        let core = Core::new(config)?;
        let cache = match &core.config.cache_dir {
            Some(dir) => {
                let key = core
                    .config
                    .cache_key_file
                    .clone()
                    .ok_or_else(|| LoadError::Cache {
                        path: dir.display().to_string(),
                        message: "no cache key file (set RuntimeConfig::cache_key_file)".into(),
                    })?;
                Some(CodeCache::open(dir, &key, core.config.cache.clone())?)
            }
            None => None,
        };

        Ok(Arc::new(Runtime {
            core: Arc::new(core),
            loaded: Mutex::new(HashMap::new()),
            cache,
            compiles: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.core.config
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
            .map(|c| c.entry_path(&hash, &self.core.engine_key))
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
        let limit = self.core.config.compile.max_component_bytes;
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
        let limit = self.core.config.compile.max_component_bytes;
        if bytes.len() > limit {
            return Err(LoadError::TooLarge {
                plugin: label.to_string(),
                bytes: bytes.len(),
                limit,
            });
        }
        super::artifact::check_header(bytes)?;
        let component = self.compile(bytes, &hash, label)?;
        let plugin = describe(Plugin::from_component(&self.core, component, hash.clone())?)?;
        let plugin = match super::manifest::read(bytes)? {
            Some(m) => plugin.with_manifest(m)?,
            None => plugin,
        };
        let plugin = Arc::new(plugin);
        let mut loaded = self.loaded.lock();
        if loaded.len() >= MAX_LOADED {
            // Forget the plugins no hook holds (a server taking uploads
            // would otherwise keep every one); the on-disk cache of
            // compiled code makes a later load of them cheap.
            loaded.retain(|_, p| Arc::strong_count(p) > 1);
        }
        loaded.insert(hash, plugin.clone());
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
            unsafe { Component::deserialize(&self.core.engine, art) }
        };
        let Some(cache) = &self.cache else {
            let art = self.precompile(bytes, label)?;
            return deserialize(&art).map_err(|e| LoadError::Invalid(format!("{e:#}")));
        };
        if let Some(art) = cache.get(hash, &self.core.engine_key)
            && let Ok(c) = deserialize(&art)
        {
            return Ok(c);
        }
        let _lock = cache.lock(hash, &self.core.engine_key);
        // Another process may have compiled it while we waited.
        if let Some(art) = cache.get(hash, &self.core.engine_key)
            && let Ok(c) = deserialize(&art)
        {
            return Ok(c);
        }
        let art = self.precompile(bytes, label)?;
        let component = deserialize(&art).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        // Best effort: a full disk only costs a recompile later.
        let _ = cache.put(hash, &self.core.engine_key, &art);
        Ok(component)
    }

    /// How many components this runtime compiled (rather than took from
    /// the cache or from memory).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    fn precompile(&self, bytes: &[u8], label: &str) -> Result<Vec<u8>, LoadError> {
        self.compiles.fetch_add(1, Ordering::Relaxed);
        if self.core.config.compile.isolate {
            super::compile::compile_isolated(
                &self.core.settings,
                bytes,
                &self.core.config.compile,
                label,
            )
        } else {
            self.core
                .engine
                .precompile_component(bytes)
                .map_err(|e| LoadError::Invalid(format!("{e:#}")))
        }
    }
}

/// Ask the plugin who it is, under the usual sandbox and limits.
fn describe(mut plugin: Plugin) -> Result<Plugin, LoadError> {
    let mut probe = PluginInstance::new(&plugin, "<load>".into(), 0, Default::default())
        .map_err(|e| LoadError::BadMetadata(e.to_string()))?;
    let info = probe
        .metadata()
        .map_err(|e| LoadError::BadMetadata(e.to_string()))?;
    drop(probe);
    super::artifact::validate_info(&info)?;
    plugin.info = info;
    Ok(plugin)
}
