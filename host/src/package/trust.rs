//! Whom a host trusts: `trust.toml` maps namespaces to public keys and
//! sets the policy, globally and per namespace:
//!
//! ```toml
//! default = "require-signed"      # or "allow-unsigned"
//!
//! [namespace.acme]
//! keys = ["keys/acme.pub"]        # relative to trust.toml
//! policy = "require-signed"       # optional, else `default`
//! ```
//!
//! Every path that loads a plugin (`run`, `generate`, `harvest`, the API,
//! the service) checks it against a [`TrustPolicy`]. Under
//! `require-signed`, refused with a message naming the reason: an unsigned
//! plugin, a plugin without a manifest (no namespace to trust), one signed
//! by a key nobody trusts, by a key trusted for another namespace only, or
//! changed after signing (one bit anywhere, or a repack). A plugin whose
//! signature no longer matches its content is refused under every policy.
//! Without a trust file the policy is `allow-unsigned` with no keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wasmsign2::PublicKey;

use super::sign::{self, Signature};
use super::{PackageError, read};
use crate::hooks::manifest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    RequireSigned,
    AllowUnsigned,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    default: Policy,
    #[serde(default)]
    namespace: BTreeMap<String, NamespaceFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceFile {
    #[serde(default)]
    keys: Vec<PathBuf>,
    policy: Option<Policy>,
}

struct Namespace {
    keys: Vec<(PathBuf, PublicKey)>,
    policy: Policy,
}

/// A loaded trust policy.
pub struct TrustPolicy {
    default: Policy,
    namespaces: BTreeMap<String, Namespace>,
    /// Where it came from (for messages).
    origin: String,
}

/// Why a plugin was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `namespace:name` from its manifest, if it has one.
    pub package: Option<String>,
    /// The trusted key file that verified it, if signed by one.
    pub signed_by: Option<PathBuf>,
    pub policy: Policy,
}

impl TrustPolicy {
    /// `allow-unsigned`, no keys: what a host without a trust file uses.
    pub fn allow_unsigned() -> TrustPolicy {
        TrustPolicy {
            default: Policy::AllowUnsigned,
            namespaces: BTreeMap::new(),
            origin: "the default policy (allow-unsigned, no trust file)".into(),
        }
    }

    pub fn load(path: &Path) -> Result<TrustPolicy, PackageError> {
        let text = String::from_utf8(read(path)?)
            .map_err(|_| PackageError::Input(format!("{} is not UTF-8", path.display())))?;
        let file: TrustFile = toml::from_str(&text)
            .map_err(|e| PackageError::Input(format!("{}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut namespaces = BTreeMap::new();
        for (ns, n) in file.namespace {
            if !manifest::valid_ident(&ns) {
                return Err(PackageError::Input(format!(
                    "{}: namespace {ns:?} must be 1-64 characters of [a-z0-9-]",
                    path.display()
                )));
            }
            let keys = n
                .keys
                .iter()
                .map(|k| {
                    let p = dir.join(k);
                    sign::read_public(&p).map(|pk| (p, pk))
                })
                .collect::<Result<Vec<_>, _>>()?;
            namespaces.insert(
                ns,
                Namespace {
                    keys,
                    policy: n.policy.unwrap_or(file.default),
                },
            );
        }
        Ok(TrustPolicy {
            default: file.default,
            namespaces,
            origin: path.display().to_string(),
        })
    }

    /// `--trust FILE`, or the default policy.
    pub fn from_arg(path: Option<&Path>) -> Result<TrustPolicy, PackageError> {
        match path {
            Some(p) => TrustPolicy::load(p),
            None => Ok(TrustPolicy::allow_unsigned()),
        }
    }

    fn policy(&self, namespace: Option<&str>) -> Policy {
        namespace
            .and_then(|n| self.namespaces.get(n))
            .map_or(self.default, |n| n.policy)
    }

    /// Check the bytes of a component against the policy; `label` names it
    /// in messages.
    pub fn check(&self, bytes: &[u8], label: &str) -> Result<Verdict, PackageError> {
        let refuse = |why: String| {
            Err(PackageError::Untrusted(format!(
                "{label}: refused by {}: {why}",
                self.origin
            )))
        };
        // The signature first: a change after signing is named as such,
        // whatever else it broke.
        let sig = sign::signature(bytes)?;
        if sig == Signature::Modified {
            return refuse(
                "its signature does not match its content: it was changed after signing".into(),
            );
        }
        let m = manifest::read(bytes)?;
        let package = m.as_ref().map(|m| m.name.clone());
        let namespace = m.as_ref().map(|m| m.parts().0.to_string());
        let policy = self.policy(namespace.as_deref());
        // A key of its own namespace that verifies it.
        let own = namespace
            .as_deref()
            .and_then(|n| self.namespaces.get(n))
            .and_then(|n| {
                n.keys
                    .iter()
                    .find(|(_, pk)| sign::verified_by(bytes, pk))
                    .map(|(p, _)| p.clone())
            });
        if own.is_some() {
            return Ok(Verdict {
                package,
                signed_by: own,
                policy,
            });
        }
        if policy == Policy::AllowUnsigned {
            return Ok(Verdict {
                package,
                signed_by: None,
                policy,
            });
        }
        let Some(ns) = namespace else {
            return refuse(
                "it has no manifest, so no namespace to trust keys for (pack it with \
                 `flexmodel plugin pack`, then sign it)"
                    .into(),
            );
        };
        let Signature::Signed { key_ids } = sig else {
            return refuse(format!(
                "it is unsigned, and namespace {ns} requires a signature"
            ));
        };
        // Signed, by a key not trusted for its namespace: say whose it is.
        for (other, n) in &self.namespaces {
            if let Some((p, _)) = n.keys.iter().find(|(_, pk)| sign::verified_by(bytes, pk)) {
                return refuse(format!(
                    "it is signed by {}, a key trusted for namespace {other}, not for {ns}",
                    p.display()
                ));
            }
        }
        let keys = if key_ids.is_empty() {
            "without a key id".to_string()
        } else {
            format!("key id {}", key_ids.join(", "))
        };
        let trusted = self.namespaces.get(&ns).map_or(0, |n| n.keys.len());
        refuse(format!(
            "it is signed by a key that is not trusted ({keys}); namespace {ns} trusts {trusted} key(s)"
        ))
    }
}
