//! From a hook's plugin source (a `.wasm` file or a package reference) to
//! component bytes the trust policy accepted: the lockfile's pin first,
//! then the local cache, then the registry. Nothing enters the cache, and
//! nothing is returned, before the policy accepted it.

use std::path::PathBuf;

use super::lock::{Locked, Lockfile};
use super::reference::{PackageRef, PluginSource, Selector};
use super::registry::{self, Registries, Registry};
use super::store::{Resolved as Tag, Store};
use super::trust::{TrustPolicy, Verdict};
use super::{PackageError, digest, read};

/// How plugins are found and checked.
pub struct Resolver {
    pub trust: TrustPolicy,
    pub registries: Registries,
    pub store: Store,
    pub lock: Option<Lockfile>,
    /// Refuse anything the lockfile does not pin (`--locked`).
    pub locked: bool,
    /// Largest component accepted, in bytes.
    pub max_bytes: usize,
}

/// A plugin ready to load.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub bytes: Vec<u8>,
    /// `sha256:` of the component.
    pub digest: String,
    pub verdict: Verdict,
    /// The file or the reference it came from.
    pub label: String,
}

impl Resolver {
    /// No trust file, no lockfile, registries from the environment.
    pub fn permissive() -> Result<Resolver, PackageError> {
        Ok(Resolver {
            trust: TrustPolicy::allow_unsigned(),
            registries: Registries::new(None, None, false)?,
            store: Store::default_location(),
            lock: None,
            locked: false,
            max_bytes: 64 << 20,
        })
    }

    pub fn resolve(&self, source: &PluginSource) -> Result<Resolved, PackageError> {
        match source {
            PluginSource::File(p) => self.file(p),
            PluginSource::Package(r) => self.package(r),
        }
    }

    fn file(&self, path: &PathBuf) -> Result<Resolved, PackageError> {
        let label = path.display().to_string();
        if self.locked {
            return Err(PackageError::Locked(format!(
                "{label}: --locked runs only packages pinned in {}",
                super::lock::FILE
            )));
        }
        let len = std::fs::metadata(path)
            .map_err(|e| PackageError::io(path, e))?
            .len();
        if len > self.max_bytes as u64 {
            return Err(PackageError::Input(format!(
                "{label} is {len} bytes, over the limit of {}",
                self.max_bytes
            )));
        }
        let bytes = read(path)?;
        let verdict = self.trust.check(&bytes, &label)?;
        Ok(Resolved {
            digest: digest(&bytes),
            bytes,
            verdict,
            label,
        })
    }

    /// Component bytes sent by a client (a service job's uploaded plugin),
    /// under the same policy as a file: size limit, trust.
    pub fn uploaded(&self, bytes: Vec<u8>, label: &str) -> Result<Resolved, PackageError> {
        if bytes.len() > self.max_bytes {
            return Err(PackageError::Input(format!(
                "{label} is {} bytes, over the limit of {}",
                bytes.len(),
                self.max_bytes
            )));
        }
        if self.locked {
            return Err(PackageError::Locked(format!(
                "{label}: --locked runs only packages pinned in {}",
                super::lock::FILE
            )));
        }
        let verdict = self.trust.check(&bytes, label)?;
        Ok(Resolved {
            digest: digest(&bytes),
            bytes,
            verdict,
            label: label.to_string(),
        })
    }

    fn accept(&self, bytes: Vec<u8>, label: String) -> Result<Resolved, PackageError> {
        let verdict = self.trust.check(&bytes, &label)?;
        self.store.put(&bytes)?;
        Ok(Resolved {
            digest: digest(&bytes),
            bytes,
            verdict,
            label,
        })
    }

    fn package(&self, r: &PackageRef) -> Result<Resolved, PackageError> {
        let label = r.to_string();
        let pin = self.lock.as_ref().and_then(|l| l.find(r)).cloned();
        if let Some(pin) = pin {
            if let Some(bytes) = self.store.get(&pin.digest)? {
                return self.accept(bytes, label);
            }
            let reg = Registry::parse(&pin.registry)?;
            let by_digest = PackageRef {
                selector: Selector::Digest(pin.manifest_digest.clone()),
                ..r.clone()
            };
            let (bytes, got) =
                registry::pull(&by_digest, &reg, self.registries.insecure, self.max_bytes)?;
            if got.digest != pin.digest {
                return Err(PackageError::Locked(format!(
                    "{label}: the registry serves {}, {} pins {}",
                    got.digest,
                    super::lock::FILE,
                    pin.digest
                )));
            }
            return self.accept(bytes, label);
        }
        if self.locked {
            return Err(PackageError::Locked(format!(
                "{label} is not pinned in {} (run `flexmodel plugin lock {label}`)",
                super::lock::FILE
            )));
        }
        let (resolved, _) = self.fetch(r)?;
        Ok(resolved)
    }

    /// The plugin `r` names, from the cache or the registry, with its lock
    /// entry.
    pub fn fetch(&self, r: &PackageRef) -> Result<(Resolved, Locked), PackageError> {
        let label = r.to_string();
        let reg = self.registries.of(&r.namespace)?;
        let repository = r.repository(&reg.prefix);
        let version = |bytes: &[u8]| -> Result<String, PackageError> {
            match &r.selector {
                Selector::Version(v) => Ok(v.clone()),
                Selector::Digest(_) => Ok(crate::hooks::manifest::read(bytes)?
                    .map(|m| m.version)
                    .unwrap_or_default()),
            }
        };
        if let Selector::Version(v) = &r.selector
            && let Some(tag) = self.store.get_ref(&reg.host, &repository, v)
            && let Some(bytes) = self.store.get(&tag.digest)?
        {
            let locked = Locked {
                name: r.package(),
                version: v.clone(),
                registry: reg.to_string(),
                digest: tag.digest.clone(),
                manifest_digest: tag.manifest_digest.clone(),
            };
            return Ok((self.accept(bytes, label)?, locked));
        }
        let (bytes, got) = registry::pull(r, &reg, self.registries.insecure, self.max_bytes)?;
        let v = version(&bytes)?;
        let resolved = self.accept(bytes, label)?;
        let tag = Tag {
            digest: got.digest.clone(),
            manifest_digest: got.manifest_digest.clone(),
        };
        if let Selector::Version(v) = &r.selector {
            self.store.set_ref(&reg.host, &repository, v, &tag)?;
        }
        Ok((
            resolved,
            Locked {
                name: r.package(),
                version: v,
                registry: reg.to_string(),
                digest: got.digest,
                manifest_digest: got.manifest_digest,
            },
        ))
    }
}
