//! A plugin's manifest: the `flexmodel-manifest` custom section of a packed
//! component (JSON, schema [`SCHEMA`]). It names the plugin
//! (`namespace:name@version`), the contract it was built against
//! (`flexmodel:hook@0.1.x`), the hook points it is meant for, its edit mode,
//! a JSON Schema of its configuration and the resources it asks for. The
//! host reads it at load, checks it against what the component really
//! imports, exports and says of itself (refusing a mismatch), holds the
//! plugin to the resources it asked for, and validates a registration's
//! configuration against the schema before `init`.
//!
//! The schema, version 1 (`"schema": "flexmodel-manifest/1"`; unknown
//! fields are refused, so a later version is a new schema string):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `schema` | string | `flexmodel-manifest/1` |
//! | `name` | string | `namespace:name`, each `[a-z0-9-]`, 1–64 characters |
//! | `version` | string | semantic version, equal to the plugin's own |
//! | `contract` | string | `flexmodel:hook@X.Y.Z`, the WIT version of its imports and exports |
//! | `hook_points` | [string] | glob patterns it is meant for (the plugin's own) |
//! | `edit_mode` | string | `read-only` or `edits` (as the plugin's `info.edits`) |
//! | `config_schema` | object? | JSON Schema (draft 2020-12 and earlier) of the configuration |
//! | `resources` | object | `fuel_per_call`, `memory_bytes`: what one call may use at most |

use serde::{Deserialize, Serialize};

use super::error::LoadError;
use super::wit::{WIT_PACKAGE, WIT_VERSION};

/// The custom section's name.
pub const SECTION: &str = "flexmodel-manifest";
/// The schema this host reads and writes.
pub const SCHEMA: &str = "flexmodel-manifest/1";

/// What one call of the plugin may use at most; the host refuses a plugin
/// that asks for more than it allows and holds it to what it asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_per_call: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManifestEdit {
    ReadOnly,
    Edits,
}

/// What a plugin says of itself (its WIT `plugin-info`), as the manifest
/// is checked against it.
pub struct Said<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub hook_points: &'a [String],
    pub edits: bool,
}

/// The `flexmodel-manifest` section (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    pub name: String,
    pub version: String,
    pub contract: String,
    #[serde(default)]
    pub hook_points: Vec<String>,
    pub edit_mode: ManifestEdit,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<serde_json::Value>,
    #[serde(default)]
    pub resources: Resources,
}

fn bad(message: String) -> LoadError {
    LoadError::Manifest(message)
}

/// `[a-z0-9-]`, 1–64 characters (a namespace or a name).
pub fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `namespace:name` → its parts.
pub fn split_name(full: &str) -> Result<(&str, &str), LoadError> {
    match full.split_once(':') {
        Some((ns, n)) if valid_ident(ns) && valid_ident(n) => Ok((ns, n)),
        _ => Err(bad(format!(
            "name {full:?} must be namespace:name, each 1-64 characters of [a-z0-9-]"
        ))),
    }
}

impl Manifest {
    /// Parse and check the section's bytes on their own (the component is
    /// checked by [`Manifest::check`]).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, LoadError> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("{SECTION} section is not valid: {e}")))?;
        if m.schema != SCHEMA {
            return Err(bad(format!(
                "{SECTION} schema {:?} is not supported (this host reads {SCHEMA})",
                m.schema
            )));
        }
        split_name(&m.name)?;
        semver::Version::parse(&m.version).map_err(|e| {
            bad(format!(
                "version {:?} is not a semantic version: {e}",
                m.version
            ))
        })?;
        let v = m
            .contract
            .strip_prefix(WIT_PACKAGE)
            .and_then(|r| r.strip_prefix('@'))
            .ok_or_else(|| {
                bad(format!(
                    "contract {:?} must be {WIT_PACKAGE}@X.Y.Z",
                    m.contract
                ))
            })?;
        semver::Version::parse(v)
            .map_err(|e| bad(format!("contract version {v:?} is invalid: {e}")))?;
        for p in &m.hook_points {
            globset::Glob::new(p)
                .map_err(|e| bad(format!("hook-point pattern {p:?} is not a valid glob: {e}")))?;
        }
        if let Some(s) = &m.config_schema {
            jsonschema::validator_for(s)
                .map_err(|e| bad(format!("config_schema is not a valid JSON Schema: {e}")))?;
        }
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `namespace`, `name`.
    pub fn parts(&self) -> (&str, &str) {
        self.name.split_once(':').unwrap_or(("", &self.name))
    }

    /// The contract's version (`X.Y.Z`).
    pub fn contract_version(&self) -> &str {
        self.contract.rsplit_once('@').map_or("", |(_, v)| v)
    }

    /// Refuse a manifest that says something the component does not:
    /// `wit_version` is the version of its `flexmodel:hook` imports and
    /// exports, `info` what the plugin says of itself.
    pub fn check(&self, wit_version: &str, info: &Said<'_>) -> Result<(), LoadError> {
        let mismatch = |what: &str, manifest: String, component: String| {
            Err(bad(format!(
                "the manifest says {what} {manifest}, the component {component}"
            )))
        };
        if self.contract_version() != wit_version {
            return mismatch(
                "contract",
                self.contract.clone(),
                format!("imports and exports {WIT_PACKAGE}@{wit_version}"),
            );
        }
        let (_, name) = self.parts();
        if name != info.name {
            return mismatch(
                "name",
                self.name.clone(),
                format!("is named {:?}", info.name),
            );
        }
        if self.version != info.version {
            return mismatch(
                "version",
                self.version.clone(),
                format!("says {:?}", info.version),
            );
        }
        if self.hook_points != info.hook_points {
            return mismatch(
                "hook points",
                format!("{:?}", self.hook_points),
                format!("says {:?}", info.hook_points),
            );
        }
        let edits = self.edit_mode == ManifestEdit::Edits;
        if edits != info.edits {
            return mismatch(
                "edit mode",
                format!("{:?}", self.edit_mode).to_lowercase(),
                format!("says edits = {}", info.edits),
            );
        }
        Ok(())
    }

    /// Validate a registration's configuration (JSON text) against the
    /// schema, with an error naming the field.
    pub fn validate_config(&self, plugin: &str, config: &str) -> Result<(), LoadError> {
        let Some(schema) = &self.config_schema else {
            return Ok(());
        };
        let value: serde_json::Value =
            serde_json::from_str(config).map_err(|e| LoadError::Init {
                plugin: plugin.into(),
                error: format!("invalid config: not JSON: {e}"),
            })?;
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| bad(format!("config_schema is not a valid JSON Schema: {e}")))?;
        if let Some(e) = validator.iter_errors(&value).next() {
            let path = e.instance_path().to_string();
            let field = if path.is_empty() {
                "the configuration".to_string()
            } else {
                format!("field {path}")
            };
            return Err(LoadError::Init {
                plugin: plugin.into(),
                error: format!("invalid config: {field}: {e} (the manifest's config_schema)"),
            });
        }
        Ok(())
    }
}

/// The version of the `flexmodel:hook` contract this host implements.
pub fn host_contract() -> String {
    format!("{WIT_PACKAGE}@{WIT_VERSION}")
}

/// The payload of the top-level custom section `name` of a component, if
/// any (`Err` on a malformed binary).
pub fn custom_section<'a>(bytes: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, LoadError> {
    let mut found = None;
    for s in sections(bytes)? {
        if let Section::Custom { name: n, payload } = s
            && n == name
        {
            if found.is_some() {
                return Err(bad(format!("more than one {name} section")));
            }
            found = Some(payload);
        }
    }
    Ok(found)
}

/// A top-level section of a binary (nested modules and components are
/// inside the payloads of their sections).
pub enum Section<'a> {
    Custom { name: &'a str, payload: &'a [u8] },
    Other { id: u8, bytes: &'a [u8] },
}

fn leb(bytes: &[u8], pos: &mut usize) -> Result<u64, LoadError> {
    let mut v: u64 = 0;
    for shift in (0..35).step_by(7) {
        let b = *bytes
            .get(*pos)
            .ok_or_else(|| LoadError::NotWasm("truncated section header".into()))?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(LoadError::NotWasm("section size is not a valid u32".into()))
}

/// The top-level sections after the 8-byte header, without validating
/// their contents.
pub fn sections(bytes: &[u8]) -> Result<Vec<Section<'_>>, LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm("no `\\0asm` header".into()));
    }
    let mut out = Vec::new();
    let mut pos = 8;
    while pos < bytes.len() {
        let id = bytes[pos];
        pos += 1;
        let size = leb(bytes, &mut pos)? as usize;
        let end = pos
            .checked_add(size)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| LoadError::NotWasm("a section runs past the end".into()))?;
        let body = &bytes[pos..end];
        if id == 0 {
            let mut p = 0;
            let len = leb(body, &mut p)? as usize;
            let name = body
                .get(p..p.saturating_add(len))
                .and_then(|n| std::str::from_utf8(n).ok())
                .ok_or_else(|| LoadError::NotWasm("a custom section's name is invalid".into()))?;
            out.push(Section::Custom {
                name,
                payload: &body[p + len..],
            });
        } else {
            out.push(Section::Other { id, bytes: body });
        }
        pos = end;
    }
    Ok(out)
}

/// Read the manifest of a component, if it has one.
pub fn read(bytes: &[u8]) -> Result<Option<Manifest>, LoadError> {
    custom_section(bytes, SECTION)?
        .map(Manifest::parse)
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            schema: SCHEMA.into(),
            name: "acme:scale".into(),
            version: "0.2.0".into(),
            contract: host_contract(),
            hook_points: vec!["*".into()],
            edit_mode: ManifestEdit::Edits,
            config_schema: Some(serde_json::json!({
                "type": "object",
                "properties": {"factor": {"type": "number"}},
                "additionalProperties": false
            })),
            resources: Resources::default(),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let m = manifest();
        assert_eq!(Manifest::parse(m.to_json().as_bytes()).unwrap(), m);
        let mut j: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        j["surprise"] = 1.into();
        assert!(Manifest::parse(j.to_string().as_bytes()).is_err());
        for (field, value) in [
            ("name", "Acme:scale"),
            ("name", "scale"),
            ("version", "0.2"),
            ("contract", "other:hook@0.1.2"),
            ("schema", "flexmodel-manifest/2"),
        ] {
            let mut j: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
            j[field] = value.into();
            let e = Manifest::parse(j.to_string().as_bytes()).unwrap_err();
            assert!(matches!(e, LoadError::Manifest(_)), "{field}: {e}");
        }
    }

    #[test]
    fn config_is_validated_with_the_field_named() {
        let m = manifest();
        assert!(m.validate_config("scale", r#"{"factor": 2}"#).is_ok());
        let e = m
            .validate_config("scale", r#"{"factor": "two"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/factor"), "{e}");
        let e = m
            .validate_config("scale", r#"{"fctor": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fctor"), "{e}");
    }

    #[test]
    fn sections_of_a_truncated_binary_are_an_error() {
        assert!(sections(b"\0asm\x0d\0\x01\0\x00\x05\x01").is_err());
        assert!(sections(b"\0asm\x0d\0\x01\0").unwrap().is_empty());
    }
}
