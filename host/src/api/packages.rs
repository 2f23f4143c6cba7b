//! Registering shared plugins by spec: the plugin found and checked by a
//! [`Resolver`] (its trust policy, lockfile, registries, cache), loaded,
//! registered, and recorded for provenance. The one path the CLI and the
//! API take, so both apply the same policy.

use std::sync::Arc;

use super::facade::FlexModel;
use crate::engine::{FlexError, HookHandle};
use crate::hooks::Runtime;
use crate::package::reference::HookSpec;
use crate::package::resolve::Resolver;

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
        let plugin = rt.load(&r.bytes)?;
        let handle = self.register_wasm(&plugin, &h.pattern, &h.config, groups)?;
        let (name, version) = plugin.package();
        Ok(PluginRecord {
            name,
            version,
            digest: r.digest,
            source: r.label,
            signed_by: r.verdict.signed_by.map(|p| p.display().to_string()),
            handle,
        })
    }
}
