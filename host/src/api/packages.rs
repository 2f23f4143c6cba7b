//! Registering shared plugins by spec: the plugin found and checked by a
//! [`Resolver`] (its trust policy, lockfile, registries, cache), loaded,
//! registered, and recorded for provenance. The one path the CLI and the
//! API take, so both apply the same policy.

use std::sync::Arc;

use super::facade::FlexModel;
use crate::engine::{FlexError, HookHandle};
use crate::hooks::Runtime;
use crate::package::reference::HookSpec;
use crate::package::resolve::{Resolved, Resolver};

/// What one call of a plugin may use, below the runtime's limits (`None`:
/// the runtime's, or the plugin manifest's ask).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub fuel_per_call: Option<u64>,
    pub memory_bytes: Option<usize>,
    /// The seed of its random streams (`None`: the runtime's).
    pub seed: Option<u64>,
}

/// A plugin the trust policy accepted, loaded: what a registration needs
/// (a server keeps the uploads it accepted, so that a repeated upload is
/// neither checked nor hashed twice).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub digest: String,
    pub source: String,
    pub signed_by: Option<String>,
    pub plugin: Arc<crate::hooks::Plugin>,
}

/// What was registered: the package, the component's digest, where it
/// came from and who signed it (`flexmodel.plugins` in a saved result).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginRecord {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub source: String,
    pub signed_by: Option<String>,
    #[serde(skip)]
    pub handle: HookHandle,
}

impl FlexModel {
    /// Register the hook `spec` describes (`PLUGIN.wasm@PATTERN[=CONFIG]` or
    /// `namespace:name@VERSION@PATTERN[=CONFIG]`) under `groups`: the
    /// plugin resolved and checked by `resolver`, loaded on `rt`.
    pub fn register_spec(
        &mut self,
        rt: &Arc<Runtime>,
        resolver: &Resolver,
        spec: &str,
        groups: &[&str],
    ) -> Result<PluginRecord, FlexError> {
        let h = HookSpec::parse(spec)?;
        let r = resolver.resolve(&h.source)?;
        self.register_resolved(rt, r, &h.pattern, &h.config, groups, Limits::default())
    }

    /// Register a plugin a [`Resolver`] accepted (a package, a file or
    /// uploaded bytes) on `pattern` with `config`, what one call may use
    /// lowered to `limits`.
    pub fn register_resolved(
        &mut self,
        rt: &Arc<Runtime>,
        r: Resolved,
        pattern: &str,
        config: &str,
        groups: &[&str],
        limits: Limits,
    ) -> Result<PluginRecord, FlexError> {
        let plugin = rt.load(&r.bytes)?;
        let accepted = Accepted {
            digest: r.digest,
            source: r.label,
            signed_by: r.verdict.signed_by.map(|p| p.display().to_string()),
            plugin,
        };
        self.register_accepted(&accepted, pattern, config, groups, limits)
    }

    /// Register a plugin accepted and loaded before (see [`Accepted`]).
    pub fn register_accepted(
        &mut self,
        a: &Accepted,
        pattern: &str,
        config: &str,
        groups: &[&str],
        limits: Limits,
    ) -> Result<PluginRecord, FlexError> {
        let mut plugin = a.plugin.clone();
        if limits != Limits::default() {
            plugin =
                Arc::new(plugin.limited(limits.fuel_per_call, limits.memory_bytes, limits.seed));
        }
        let handle = self.register_wasm(&plugin, pattern, config, groups)?;
        let (name, version) = plugin.package();
        Ok(PluginRecord {
            name,
            version,
            digest: a.digest.clone(),
            source: a.source.clone(),
            signed_by: a.signed_by.clone(),
            handle,
        })
    }
}
