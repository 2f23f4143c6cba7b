//! The local cache of pulled plugins, content-addressed: `blobs/sha256/<hex>`
//! holds a component whose SHA-256 is `<hex>` (checked again on every
//! read: a changed file is a miss, never a plugin), `refs/<registry>/<repo>/<tag>`
//! the digests a tag resolved to. A plugin enters the cache only after the
//! trust policy accepted it. Root: `FLEXMODEL_PLUGIN_CACHE`, else
//! `~/.cache/flexmodel/plugins`.

use std::path::{Path, PathBuf};

use super::{PackageError, digest, write_atomic};

pub struct Store {
    root: PathBuf,
}

/// A tag's resolution: the component's digest and the OCI manifest's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub digest: String,
    pub manifest_digest: String,
}

fn hex_of(d: &str) -> Result<&str, PackageError> {
    if !super::reference::valid_digest(d) {
        return Err(PackageError::Input(format!(
            "{d:?} is not a sha256: digest"
        )));
    }
    Ok(&d["sha256:".len()..])
}

/// A path component that cannot climb out of its folder.
fn safe(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .replace("..", "__")
}

impl Store {
    pub fn new(root: PathBuf) -> Store {
        Store { root }
    }

    /// `FLEXMODEL_PLUGIN_CACHE`, else `~/.cache/flexmodel/plugins`.
    pub fn default_location() -> Store {
        let root = std::env::var_os("FLEXMODEL_PLUGIN_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                dirs::cache_dir()
                    .unwrap_or_else(std::env::temp_dir)
                    .join("flexmodel/plugins")
            });
        Store::new(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob(&self, d: &str) -> Result<PathBuf, PackageError> {
        Ok(self.root.join("blobs/sha256").join(hex_of(d)?))
    }

    /// The component with digest `d`, if cached intact.
    pub fn get(&self, d: &str) -> Result<Option<Vec<u8>>, PackageError> {
        let p = self.blob(d)?;
        match std::fs::read(&p) {
            Ok(b) if digest(&b) == d => Ok(Some(b)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PackageError::io(&p, e)),
        }
    }

    /// Cache `bytes`; their digest.
    pub fn put(&self, bytes: &[u8]) -> Result<String, PackageError> {
        let d = digest(bytes);
        let p = self.blob(&d)?;
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| PackageError::io(dir, e))?;
        }
        write_atomic(&p, bytes)?;
        Ok(d)
    }

    fn ref_path(&self, registry: &str, repository: &str, tag: &str) -> PathBuf {
        let mut p = self.root.join("refs").join(safe(registry));
        for part in repository.split('/') {
            p = p.join(safe(part));
        }
        p.join(safe(tag))
    }

    pub fn set_ref(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        r: &Resolved,
    ) -> Result<(), PackageError> {
        let p = self.ref_path(registry, repository, tag);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| PackageError::io(dir, e))?;
        }
        write_atomic(
            &p,
            format!("{} {}\n", r.digest, r.manifest_digest).as_bytes(),
        )
    }

    pub fn get_ref(&self, registry: &str, repository: &str, tag: &str) -> Option<Resolved> {
        let text = std::fs::read_to_string(self.ref_path(registry, repository, tag)).ok()?;
        let mut it = text.split_whitespace();
        let (d, m) = (it.next()?, it.next()?);
        Some(Resolved {
            digest: d.into(),
            manifest_digest: m.into(),
        })
    }
}
