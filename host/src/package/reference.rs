//! Naming a plugin: `namespace:name@version` (a published package, by tag)
//! or `namespace:name@sha256:<hex>` (by the digest of its OCI manifest),
//! and the hook specs that take either a package or a `.wasm` file:
//! `PLUGIN.wasm@PATTERN[=CONFIG]` or `namespace:name@VERSION@PATTERN[=CONFIG]`
//! (after `namespace:name` the first `@` starts the version, the next one
//! the pattern).

use std::fmt;
use std::path::PathBuf;

use super::PackageError;
use crate::hooks::manifest::valid_ident;

/// Which version of a package.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// A semantic version: the registry tag.
    Version(String),
    /// `sha256:<hex>`: the OCI manifest's digest.
    Digest(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageRef {
    pub namespace: String,
    pub name: String,
    pub selector: Selector,
}

impl fmt::Display for PackageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = match &self.selector {
            Selector::Version(v) | Selector::Digest(v) => v,
        };
        write!(f, "{}:{}@{v}", self.namespace, self.name)
    }
}

fn bad(s: &str, why: &str) -> PackageError {
    PackageError::Input(format!("{s:?}: {why}"))
}

/// A `sha256:` digest of 64 lowercase hex digits.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    })
}

impl PackageRef {
    /// `namespace:name@version` or `namespace:name@sha256:<hex>`.
    pub fn parse(s: &str) -> Result<PackageRef, PackageError> {
        let (pkg, sel) = s
            .split_once('@')
            .ok_or_else(|| bad(s, "expected namespace:name@version"))?;
        let (namespace, name) = pkg
            .split_once(':')
            .ok_or_else(|| bad(s, "expected namespace:name@version"))?;
        if !valid_ident(namespace) || !valid_ident(name) {
            return Err(bad(
                s,
                "namespace and name must each be 1-64 characters of [a-z0-9-]",
            ));
        }
        let selector = if sel.starts_with("sha256:") {
            if !valid_digest(sel) {
                return Err(bad(s, "a digest is sha256: and 64 lowercase hex digits"));
            }
            Selector::Digest(sel.to_string())
        } else {
            semver::Version::parse(sel).map_err(|e| {
                bad(
                    s,
                    &format!("version {sel:?} is not a semantic version: {e}"),
                )
            })?;
            Selector::Version(sel.to_string())
        };
        Ok(PackageRef {
            namespace: namespace.into(),
            name: name.into(),
            selector,
        })
    }

    /// `namespace:name`.
    pub fn package(&self) -> String {
        format!("{}:{}", self.namespace, self.name)
    }

    /// The repository path under a registry prefix: `[PREFIX/]namespace/name`.
    pub fn repository(&self, prefix: &str) -> String {
        let p = prefix.trim_matches('/');
        if p.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{p}/{}/{}", self.namespace, self.name)
        }
    }
}

/// Where a hook's plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    File(PathBuf),
    Package(PackageRef),
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::File(p) => write!(f, "{}", p.display()),
            PluginSource::Package(r) => write!(f, "{r}"),
        }
    }
}

/// A parsed `--hook`: the plugin, the hook-point pattern, the configuration
/// (JSON text, `{}` when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSpec {
    pub source: PluginSource,
    pub pattern: String,
    pub config: String,
}

impl HookSpec {
    pub fn parse(spec: &str) -> Result<HookSpec, PackageError> {
        let usage = "expected PLUGIN.wasm@PATTERN[=CONFIG_JSON] or \
                     namespace:name@VERSION@PATTERN[=CONFIG_JSON]";
        let (source, rest) = if let Some(at) = spec.find(".wasm@") {
            (
                PluginSource::File(PathBuf::from(&spec[..at + 5])),
                &spec[at + 6..],
            )
        } else {
            // namespace:name@VERSION@PATTERN: the version ends at the next
            // `@` (a digest's `sha256:` holds none).
            let first = spec.find('@').ok_or_else(|| bad(spec, usage))?;
            let second = spec[first + 1..]
                .find('@')
                .map(|i| first + 1 + i)
                .ok_or_else(|| bad(spec, usage))?;
            (
                PluginSource::Package(PackageRef::parse(&spec[..second])?),
                &spec[second + 1..],
            )
        };
        let (pattern, config) = match rest.split_once('=') {
            Some((p, c)) => (p.to_string(), c.to_string()),
            None => (rest.to_string(), "{}".to_string()),
        };
        if pattern.is_empty() {
            return Err(bad(spec, "empty hook-point pattern"));
        }
        Ok(HookSpec {
            source,
            pattern,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let h =
            HookSpec::parse(r#"acme:scale@0.2.0@blocks.*.hook_resid_post={"factor":2}"#).unwrap();
        assert_eq!(
            h.source,
            PluginSource::Package(PackageRef {
                namespace: "acme".into(),
                name: "scale".into(),
                selector: Selector::Version("0.2.0".into()),
            })
        );
        assert_eq!(h.pattern, "blocks.*.hook_resid_post");
        assert_eq!(h.config, r#"{"factor":2}"#);
        let h = HookSpec::parse("a/b/scale.wasm@*").unwrap();
        assert_eq!(h.source, PluginSource::File("a/b/scale.wasm".into()));
        assert_eq!(h.config, "{}");
        let d = format!("acme:scale@sha256:{}@x", "a".repeat(64));
        assert!(matches!(
            HookSpec::parse(&d).unwrap().source,
            PluginSource::Package(PackageRef {
                selector: Selector::Digest(_),
                ..
            })
        ));
        for bad in [
            "acme:scale@0.2.0",
            "acme:scale@0.2@x",
            "Acme:scale@0.2.0@x",
            "scale@0.2.0@x",
            "acme:scale@sha256:abc@x",
            "acme:scale@0.2.0@",
        ] {
            assert!(HookSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
