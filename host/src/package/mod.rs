//! Hook plugins as shareable artifacts: named (`namespace:name@semver`),
//! described, signed, published to and pulled from an OCI registry, pinned
//! by a lockfile.
//!
//! - [`pack`]: write the standard metadata (through `wasm-metadata`) and
//!   the `flexmodel-manifest` section into a component; [`inspect`] reads
//!   everything back.
//! - [`sign`]: Ed25519 signatures embedded in the component, in the
//!   format of `wasmsign2` (the crate does the signing and verifying);
//!   [`trust`]: which keys are trusted for which namespace, and the policy.
//! - [`reference`]: `namespace:name@version` and hook specs naming one.
//! - [`registry`]: publish and pull with wkg's OCI layout (`oci-client`);
//!   [`store`]: the content-addressed local cache of pulled plugins;
//!   [`lock`]: `flexmodel.lock`.
//! - [`resolve`]: from a hook spec to verified component bytes.

pub mod inspect;
pub mod lock;
pub mod pack;
pub mod reference;
pub mod registry;
pub mod resolve;
pub mod sign;
pub mod store;
pub mod trust;

pub use reference::{PackageRef, PluginSource};
pub use trust::{Policy, TrustPolicy, Verdict};

use crate::hooks::LoadError;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Refused by the trust policy; the message says which check failed.
    #[error("{0}")]
    Untrusted(String),
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    /// A reference does not match the lockfile (`--locked`).
    #[error("{0}")]
    Locked(String),
}

impl PackageError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> PackageError {
        PackageError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Read a file, with the path in the error.
pub(crate) fn read(path: &std::path::Path) -> Result<Vec<u8>, PackageError> {
    std::fs::read(path).map_err(|e| PackageError::io(path, e))
}

/// Write a file whole or not at all (a temporary file renamed into place),
/// so a failed write changes nothing already there.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), PackageError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| PackageError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        PackageError::io(path, e)
    })
}
