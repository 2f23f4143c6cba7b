//! `flexmodel.lock`: each package reference a project uses, pinned to the
//! digest of the component it resolved to (and of its OCI manifest, and the
//! registry it came from). `flexmodel plugin lock` writes it; runs use the
//! pinned digest for every reference it lists, and with `--locked` refuse
//! anything else (a reference it does not list, a local `.wasm` file, a
//! component whose digest differs).
//!
//! ```toml
//! version = 1
//!
//! [[plugin]]
//! name = "acme:scale"
//! version = "0.2.0"
//! registry = "127.0.0.1:5000"
//! digest = "sha256:…"            # the component
//! manifest-digest = "sha256:…"   # its OCI manifest
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::reference::{PackageRef, Selector};
use super::{PackageError, read, write_atomic};

pub const FILE: &str = "flexmodel.lock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Locked {
    pub name: String,
    pub version: String,
    pub registry: String,
    pub digest: String,
    pub manifest_digest: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    pub version: u32,
    #[serde(default)]
    pub plugin: Vec<Locked>,
}

impl Lockfile {
    /// Read `path`; `None` when it does not exist.
    pub fn read(path: &Path) -> Result<Option<Lockfile>, PackageError> {
        if !path.exists() {
            return Ok(None);
        }
        let text = String::from_utf8(read(path)?)
            .map_err(|_| PackageError::Input(format!("{} is not UTF-8", path.display())))?;
        let l: Lockfile = toml::from_str(&text)
            .map_err(|e| PackageError::Input(format!("{}: {e}", path.display())))?;
        if l.version != 1 {
            return Err(PackageError::Input(format!(
                "{}: lockfile version {} is not supported (1 is)",
                path.display(),
                l.version
            )));
        }
        for p in &l.plugin {
            if !super::reference::valid_digest(&p.digest)
                || !super::reference::valid_digest(&p.manifest_digest)
            {
                return Err(PackageError::Input(format!(
                    "{}: {}@{}: digests must be sha256:<64 hex digits>",
                    path.display(),
                    p.name,
                    p.version
                )));
            }
        }
        Ok(Some(l))
    }

    pub fn write(&self, path: &Path) -> Result<(), PackageError> {
        let mut l = self.clone();
        l.version = 1;
        l.plugin
            .sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        let text = toml::to_string(&l)
            .map_err(|e| PackageError::Input(format!("{}: {e}", path.display())))?;
        write_atomic(
            path,
            format!(
                "# Written by `flexmodel plugin lock`; pins each plugin to its digest.\n{text}"
            )
            .as_bytes(),
        )
    }

    /// The entry pinning `r`.
    pub fn find(&self, r: &PackageRef) -> Option<&Locked> {
        let name = r.package();
        self.plugin.iter().find(|p| {
            p.name == name
                && match &r.selector {
                    Selector::Version(v) => &p.version == v,
                    Selector::Digest(d) => &p.manifest_digest == d || &p.digest == d,
                }
        })
    }

    /// Add or replace the entry of `l.name@l.version`.
    pub fn pin(&mut self, l: Locked) {
        self.plugin
            .retain(|p| !(p.name == l.name && p.version == l.version));
        self.plugin.push(l);
    }
}
