//! A loaded HookFunction: a compiled component that was checked to target the
//! `flexmodel:hook/hook-plugin` world at a version this host supports, with
//! its content hash and self-description. This is the shareable artifact:
//! two teams holding the same hash hold the same hook.

use std::sync::Arc;

use wasmtime::component::Component;

use super::bindings::HookPluginPre;
use super::engine::Core;
use super::error::LoadError;

pub use super::wit::{WIT_PACKAGE, WIT_VERSION};

/// What a plugin says about itself (WIT `plugin-info`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub hook_points: Vec<String>,
    pub edits: bool,
}

/// A validated, compiled plugin, ready to be instantiated per rank.
pub struct Plugin {
    /// Hex SHA-256 of the component bytes.
    pub hash: String,
    pub info: PluginInfo,
    /// `flexmodel:hook` version the component was built against.
    pub wit_version: String,
    /// Its `flexmodel-manifest` section, checked against the component
    /// (`None`: an unpacked plugin).
    pub manifest: Option<super::manifest::Manifest>,
    /// What one call may use, after the manifest's asks (never more than
    /// the runtime allows): fuel, when the runtime meters fuel, and bytes of
    /// linear memory.
    pub(crate) fuel_per_call: Option<u64>,
    pub(crate) max_memory_bytes: usize,
    /// The seed of its instances' random streams (the runtime's unless a
    /// job asked for its own).
    pub(crate) seed: u64,
    pub(crate) pre: HookPluginPre<super::store::HostState>,
    pub(crate) core: Arc<Core>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("hash", &self.hash)
            .field("wit_version", &self.wit_version)
            .finish()
    }
}

/// Refuse what is not a component before handing bytes to the compiler.
pub fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm(format!(
            "{} bytes without the `\\0asm` magic number",
            bytes.len()
        )));
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(LoadError::CoreModule);
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(LoadError::NotWasm(format!(
            "unknown WebAssembly binary version {:02x?}",
            &bytes[4..8]
        )));
    }
    Ok(())
}

/// `flexmodel:hook/<iface>@<version>` → `<version>`.
fn our_version(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(WIT_PACKAGE)?.strip_prefix('/')?;
    rest.split_once('@').map(|(_, v)| v).or(Some(""))
}

/// Same major.minor as [`WIT_VERSION`] (0.x: minor is the breaking number).
fn compatible(v: &str) -> bool {
    let mut ours = WIT_VERSION.split('.');
    let mut theirs = v.split('.');
    ours.next() == theirs.next() && ours.next() == theirs.next()
}

impl Plugin {
    pub(crate) fn from_component(
        core: &Arc<Core>,
        component: Component,
        hash: String,
    ) -> Result<Plugin, LoadError> {
        let engine = &core.engine;
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();

        // Version: any `flexmodel:hook/...` name, exported or imported.
        let mut wit_version = None;
        for name in exports.iter().chain(imports.iter()) {
            if let Some(v) = our_version(name) {
                if !compatible(v) {
                    return Err(LoadError::WrongVersion {
                        found: if v.is_empty() {
                            "(unversioned)".into()
                        } else {
                            v.into()
                        },
                        supported: WIT_VERSION.into(),
                    });
                }
                wit_version.get_or_insert_with(|| v.to_string());
            }
        }
        if !exports
            .iter()
            .any(|n| n.starts_with("flexmodel:hook/plugin@"))
        {
            return Err(LoadError::WrongWorld {
                exports: exports.join(", "),
            });
        }

        let pre = core.linker.instantiate_pre(&component).map_err(|e| {
            LoadError::UnsupportedImport(format!("{e:#}").lines().next().unwrap_or("").to_string())
        })?;
        let pre = HookPluginPre::new(pre).map_err(|e| LoadError::WrongWorld {
            exports: format!("{} ({e:#})", exports.join(", ")),
        })?;
        // `info` is filled in by asking the plugin (`runtime::describe`).
        Ok(Plugin {
            hash,
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                hook_points: vec![],
                edits: false,
            },
            wit_version: wit_version.unwrap_or_default(),
            manifest: None,
            fuel_per_call: None,
            max_memory_bytes: core.config.max_memory_bytes,
            seed: core.config.seed,
            pre,
            core: core.clone(),
        })
    }

    /// Take `manifest` (read from the component's bytes): checked against
    /// the component, its resource asks against what the runtime allows.
    pub(crate) fn with_manifest(
        mut self,
        manifest: super::manifest::Manifest,
    ) -> Result<Plugin, LoadError> {
        manifest.check(&self.wit_version, &self.said())?;
        let r = &manifest.resources;
        let host_memory = self.core.config.max_memory_bytes as u64;
        if let Some(m) = r.memory_bytes {
            if m > host_memory {
                return Err(LoadError::Manifest(format!(
                    "{} asks for {m} bytes of memory; this host allows {host_memory}",
                    manifest.name
                )));
            }
            self.max_memory_bytes = m as usize;
        }
        if let Some(f) = r.fuel_per_call {
            if let super::config::CpuLimit::Fuel(host) = self.core.config.cpu
                && f > host
            {
                return Err(LoadError::Manifest(format!(
                    "{} asks for {f} fuel per call; this host allows {host}",
                    manifest.name
                )));
            }
            self.fuel_per_call = Some(f);
        }
        self.manifest = Some(manifest);
        Ok(self)
    }

    /// This plugin with what one call may use lowered to `fuel_per_call`
    /// (when the runtime meters fuel) and `memory_bytes` (never raised):
    /// the limits of one tenant of a shared server; `seed` (if any) seeds
    /// its random streams instead of the runtime's seed.
    pub fn limited(
        &self,
        fuel_per_call: Option<u64>,
        memory_bytes: Option<usize>,
        seed: Option<u64>,
    ) -> Plugin {
        let fuel = match (self.fuel_per_call, fuel_per_call) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Plugin {
            hash: self.hash.clone(),
            info: self.info.clone(),
            wit_version: self.wit_version.clone(),
            manifest: self.manifest.clone(),
            fuel_per_call: fuel,
            max_memory_bytes: memory_bytes
                .map_or(self.max_memory_bytes, |m| m.min(self.max_memory_bytes)),
            seed: seed.unwrap_or(self.seed),
            pre: self.pre.clone(),
            core: self.core.clone(),
        }
    }

    /// What the plugin says of itself, as a manifest is checked against it.
    pub fn said(&self) -> super::manifest::Said<'_> {
        super::manifest::Said {
            name: &self.info.name,
            version: &self.info.version,
            hook_points: &self.info.hook_points,
            edits: self.info.edits,
        }
    }

    /// The CPU limit of one call: the runtime's, lowered to the fuel the
    /// manifest asked for.
    pub(crate) fn cpu(&self) -> super::config::CpuLimit {
        match (self.core.config.cpu, self.fuel_per_call) {
            (super::config::CpuLimit::Fuel(n), Some(f)) => super::config::CpuLimit::Fuel(n.min(f)),
            (c, _) => c,
        }
    }

    /// The package name (`namespace:name` from the manifest, else the
    /// plugin's own name) and version.
    pub fn package(&self) -> (String, String) {
        match &self.manifest {
            Some(m) => (m.name.clone(), m.version.clone()),
            None => (self.info.name.clone(), self.info.version.clone()),
        }
    }

    /// Short identity for logs: `name@version (sha256:abcd1234…)`.
    pub fn ident(&self) -> String {
        format!(
            "{}@{} (sha256:{})",
            self.info.name,
            self.info.version,
            &self.hash[..12]
        )
    }
}

pub(crate) fn validate_info(info: &PluginInfo) -> Result<(), LoadError> {
    let ok_name = !info.name.is_empty()
        && info.name.len() <= 64
        && info
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok_name {
        return Err(LoadError::BadMetadata(format!(
            "plugin name {:?} must be 1-64 characters of [a-z0-9-]",
            info.name
        )));
    }
    if info.version.is_empty() || info.version.len() > 64 {
        return Err(LoadError::BadMetadata(format!(
            "plugin version {:?} is invalid",
            info.version
        )));
    }
    for p in &info.hook_points {
        globset::Glob::new(p).map_err(|e| {
            LoadError::BadMetadata(format!("hook-point pattern {p:?} is not a valid glob: {e}"))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_compatibility() {
        assert!(compatible("0.1.0"));
        assert!(compatible("0.1.7"));
        assert!(!compatible("0.0.1"));
        assert!(!compatible("0.2.0"));
        assert!(!compatible("1.1.0"));
        assert_eq!(our_version("flexmodel:hook/plugin@0.1.0"), Some("0.1.0"));
        assert_eq!(our_version("flexmodel:hook/plugin"), Some(""));
        assert_eq!(our_version("wasi:cli/env@0.2.0"), None);
    }

    #[test]
    fn header_checks() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(LoadError::NotWasm(_))
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
