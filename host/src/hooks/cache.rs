//! The on-disk cache of compiled components, trusted no further than the
//! plugin it came from.
//!
//! A cache entry is native code that the host maps and runs, so whoever can
//! write one could run anything in the host. Entries are therefore:
//! - **authenticated**: each file carries an HMAC-SHA256 tag, under a secret
//!   key kept *outside* the cache directory (`cache.key` in the user's config
//!   directory by default, 0600), over the component's digest, the engine
//!   configuration and the artifact. A tampered, swapped (another plugin's
//!   entry under this one's name) or planted entry fails the check and is
//!   recompiled, never run;
//! - **in a private directory**: it must be a real directory owned by this
//!   user and not writable by group or others (refused with an error
//!   otherwise; created 0700 when missing);
//! - **written safely**: files are created exclusively (`O_CREAT|O_EXCL`,
//!   `O_NOFOLLOW`, 0600) under a temporary name and renamed into place, and
//!   read with `O_NOFOLLOW`, so a planted symlink is neither followed nor
//!   overwritten through;
//! - **bounded**: beyond [`CacheLimits::max_bytes`] the least recently used
//!   entries are removed;
//! - **shared by the processes of a machine**: a per-entry file lock makes
//!   one process compile while the others wait and then read its entry.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::error::LoadError;
use super::limits::CacheLimits;

const MAGIC: &[u8; 8] = b"FMCWASM1";
const TAG: usize = 32;
const KEY_BYTES: usize = 32;

/// The cache of compiled components in one directory.
pub struct CodeCache {
    dir: PathBuf,
    key: [u8; KEY_BYTES],
    limits: CacheLimits,
}

fn cache_err(path: &Path, message: impl Into<String>) -> LoadError {
    LoadError::Cache {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `$FLEXMODEL_CACHE_KEY`, else `<user config dir>/flexmodel/cache.key`.
pub fn default_key_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLEXMODEL_CACHE_KEY") {
        return Some(PathBuf::from(p));
    }
    dirs::config_dir().map(|d| d.join("flexmodel").join("cache.key"))
}

/// A directory this user owns that nobody else may write: created 0700 if
/// missing; refused if it is a symlink, someone else's, or group/world
/// writable.
fn private_dir(dir: &Path) -> Result<(), LoadError> {
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| cache_err(dir, format!("cannot create it: {e}")))?;
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| cache_err(dir, e.to_string()))?;
    if !m.file_type().is_dir() {
        return Err(cache_err(dir, "is not a directory (a symlink is refused)"));
    }
    if m.uid() != euid() {
        return Err(cache_err(
            dir,
            format!(
                "is owned by uid {}, not by this user (uid {})",
                m.uid(),
                euid()
            ),
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(cache_err(
            dir,
            format!(
                "is writable by group or others (mode {:o}); run `chmod go-w` on it",
                m.mode() & 0o777
            ),
        ));
    }
    Ok(())
}

/// A new file, 0600, that did not exist (no symlink followed).
fn create_exclusive(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// Read the secret key, creating it (exclusively, 0600) if it does not exist.
fn load_key(path: &Path) -> Result<[u8; KEY_BYTES], LoadError> {
    if let Some(parent) = path.parent() {
        private_dir(parent)?;
    }
    if std::fs::symlink_metadata(path).is_err() {
        // Written whole under a temporary name, then linked into place (a
        // link never replaces an existing file): a concurrent reader sees no
        // key or a whole key, and racing creators agree on the first one.
        let key = random_bytes::<KEY_BYTES>().map_err(|e| cache_err(path, e.to_string()))?;
        let suffix = hex::encode(random_bytes::<8>().map_err(|e| cache_err(path, e.to_string()))?);
        let tmp = path.with_extension(format!("{suffix}.tmp"));
        let made = (|| {
            let mut f = create_exclusive(&tmp)?;
            f.write_all(&key)?;
            f.sync_all()?;
            match std::fs::hard_link(&tmp, path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                _ => Ok(()),
            }
        })();
        let _ = std::fs::remove_file(&tmp);
        made.map_err(|e| cache_err(path, format!("cannot create the key: {e}")))?;
    }
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| cache_err(path, format!("cannot open the key: {e}")))?;
    let m = f.metadata().map_err(|e| cache_err(path, e.to_string()))?;
    if !m.file_type().is_file() || m.uid() != euid() || m.mode() & 0o077 != 0 {
        return Err(cache_err(
            path,
            "the cache key must be a regular file owned by this user with mode 0600",
        ));
    }
    let mut key = [0u8; KEY_BYTES];
    f.read_exact(&mut key)
        .map_err(|e| cache_err(path, format!("cannot read the key: {e}")))?;
    Ok(key)
}

impl CodeCache {
    /// Open (creating if needed) the cache in `dir`, authenticated with the
    /// key in `key_file`, which must not be inside `dir`.
    pub fn open(dir: &Path, key_file: &Path, limits: CacheLimits) -> Result<CodeCache, LoadError> {
        private_dir(dir)?;
        let canon_dir = dir
            .canonicalize()
            .map_err(|e| cache_err(dir, e.to_string()))?;
        let key_parent = key_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        private_dir(key_parent)?;
        let canon_key_dir = key_parent
            .canonicalize()
            .map_err(|e| cache_err(key_file, e.to_string()))?;
        if canon_key_dir.starts_with(&canon_dir) {
            return Err(cache_err(
                key_file,
                "the cache key must not be inside the cache directory",
            ));
        }
        let key = load_key(key_file)?;
        Ok(CodeCache {
            dir: dir.to_path_buf(),
            key,
            limits,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the entry for a component digest under an engine key.
    pub fn entry_path(&self, digest: &str, engine_key: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{engine_key}.cwasm"))
    }

    fn tag(&self, digest: &str, engine_key: &str, art: &[u8]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key");
        m.update(MAGIC);
        m.update(&(digest.len() as u64).to_le_bytes());
        m.update(digest.as_bytes());
        m.update(&(engine_key.len() as u64).to_le_bytes());
        m.update(engine_key.as_bytes());
        m.update(art);
        m
    }

    /// The artifact cached for `digest` under `engine_key`, if there is one
    /// and its tag checks out. Anything else (missing, a symlink, not a
    /// regular file, tampered, another entry's contents) is `None`.
    pub fn get(&self, digest: &str, engine_key: &str) -> Option<Vec<u8>> {
        let path = self.entry_path(digest, engine_key);
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .ok()?;
        let m = f.metadata().ok()?;
        if !m.file_type().is_file() || m.uid() != euid() {
            return None;
        }
        let mut all = Vec::with_capacity(m.len() as usize);
        f.read_to_end(&mut all).ok()?;
        if all.len() < MAGIC.len() + TAG || &all[..MAGIC.len()] != MAGIC {
            return None;
        }
        let (head, art) = all.split_at(MAGIC.len() + TAG);
        self.tag(digest, engine_key, art)
            .verify_slice(&head[MAGIC.len()..])
            .ok()?;
        // In place: no second buffer the size of the code.
        all.drain(..MAGIC.len() + TAG);
        // Most recently used: eviction goes by modification time.
        let _ = f.set_modified(std::time::SystemTime::now());
        Some(all)
    }

    /// Store `art` for `digest` under `engine_key`, then evict beyond the
    /// size bound. Never follows or writes through a symlink.
    pub fn put(&self, digest: &str, engine_key: &str, art: &[u8]) -> std::io::Result<()> {
        let path = self.entry_path(digest, engine_key);
        let suffix = hex::encode(random_bytes::<8>()?);
        let tmp = self
            .dir
            .join(format!(".{digest}-{engine_key}.{suffix}.tmp"));
        let tag = self.tag(digest, engine_key, art).finalize().into_bytes();
        let written = (|| {
            let mut f = create_exclusive(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&tag)?;
            f.write_all(art)?;
            f.sync_data()?;
            // rename replaces a planted symlink itself, never its target.
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        self.evict();
        Ok(())
    }

    /// Hold the compile lock of one entry (blocks while another process or
    /// thread compiles it).
    pub fn lock(&self, digest: &str, engine_key: &str) -> std::io::Result<File> {
        let path = self.dir.join(format!(".{digest}-{engine_key}.lock"));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        f.lock()?;
        Ok(f)
    }

    /// Bytes of all entries.
    pub fn size(&self) -> u64 {
        self.entries().iter().map(|(_, len, _)| len).sum()
    }

    fn entries(&self) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let m = std::fs::symlink_metadata(e.path()).ok()?;
                m.file_type().is_file().then(|| {
                    (
                        e.path(),
                        m.len(),
                        m.modified().unwrap_or(std::time::UNIX_EPOCH),
                    )
                })
            })
            .collect()
    }

    /// Remove least recently used entries until the cache fits its bound.
    pub fn evict(&self) {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        if total <= self.limits.max_bytes {
            return;
        }
        entries.sort_by_key(|(_, _, t)| *t);
        for (p, len, _) in entries {
            if total <= self.limits.max_bytes {
                break;
            }
            if std::fs::remove_file(&p).is_ok() {
                total -= len;
            }
        }
    }
}

/// Tighten a directory created by someone else's umask (used by tests).
pub fn make_private(dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
