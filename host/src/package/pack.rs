//! `flexmodel plugin pack`: a component's identity and manifest written
//! into it. The standard fields (name, version, authors, description,
//! licenses, source, homepage, revision) go where the component model's
//! tools read them, through the `wasm-metadata` crate; the
//! `flexmodel-manifest` section (see `hooks::manifest`) is appended last.
//! What the manifest file leaves out comes from what the plugin says of
//! itself (its SDK `Info`: version, description, hook points, edits), so
//! `name = "acme:scale"` alone is a whole `plugin.toml`. Packing drops an
//! earlier signature: sign after packing.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use wasm_metadata::{AddMetadata, AddMetadataField};

use super::{PackageError, read};
use crate::hooks::Runtime;
use crate::hooks::manifest::{self, Manifest, ManifestEdit, Resources, SCHEMA, Section};

/// `plugin.toml`: the manifest as its author writes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginToml {
    /// `namespace:name`.
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    pub authors: Option<String>,
    pub licenses: Option<String>,
    pub source: Option<String>,
    pub homepage: Option<String>,
    pub revision: Option<String>,
    pub hook_points: Option<Vec<String>>,
    pub edit_mode: Option<ManifestEdit>,
    /// A JSON Schema: inline (a TOML table) or the path of a `.json` file
    /// next to `plugin.toml`.
    pub config_schema: Option<toml::Value>,
    #[serde(default)]
    pub resources: Resources,
}

impl PluginToml {
    pub fn read(path: &Path) -> Result<PluginToml, PackageError> {
        let text = String::from_utf8(read(path)?)
            .map_err(|_| PackageError::Input(format!("{} is not UTF-8", path.display())))?;
        let mut t: PluginToml = toml::from_str(&text)
            .map_err(|e| PackageError::Input(format!("{}: {e}", path.display())))?;
        // A schema given as a path is read now, relative to the manifest.
        if let Some(toml::Value::String(file)) = &t.config_schema {
            let p = path.parent().unwrap_or(Path::new(".")).join(file);
            let v: serde_json::Value = serde_json::from_slice(&read(&p)?)
                .map_err(|e| PackageError::Input(format!("{}: {e}", p.display())))?;
            t.config_schema = Some(
                toml::Value::try_from(v)
                    .map_err(|e| PackageError::Input(format!("{}: {e}", p.display())))?,
            );
        }
        Ok(t)
    }
}

/// Strip the sections packing and signing write (`flexmodel-manifest`,
/// `signature`) from a component.
pub fn strip(bytes: &[u8], names: &[&str]) -> Result<Vec<u8>, PackageError> {
    // The walker checks the header first: `bytes` is at least 8 bytes after.
    let sections = manifest::sections(bytes)?;
    let mut out = bytes[..8].to_vec();
    for s in sections {
        match s {
            Section::Custom { name, .. } if names.contains(&name) => {}
            Section::Custom { name, payload } => push_custom(&mut out, name, payload),
            Section::Other { id, bytes } => push_section(&mut out, id, bytes),
        }
    }
    Ok(out)
}

fn leb(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn push_section(out: &mut Vec<u8>, id: u8, body: &[u8]) {
    out.push(id);
    leb(out, body.len());
    out.extend_from_slice(body);
}

/// Append a custom section `name` holding `payload`.
pub fn push_custom(out: &mut Vec<u8>, name: &str, payload: &[u8]) {
    let mut body = Vec::with_capacity(name.len() + payload.len() + 5);
    leb(&mut body, name.len());
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    push_section(out, 0, &body);
}

fn set<T: Clone + std::fmt::Debug>(v: Option<T>) -> AddMetadataField<T> {
    match v {
        Some(v) => AddMetadataField::Set(v),
        None => AddMetadataField::Keep,
    }
}

fn meta_err(e: impl std::fmt::Display) -> PackageError {
    PackageError::Input(format!("component metadata: {e}"))
}

/// Pack `component` with `toml`; the packed bytes (checked by loading them).
pub fn pack(
    rt: &Arc<Runtime>,
    component: &[u8],
    toml: &PluginToml,
) -> Result<Vec<u8>, PackageError> {
    let bare = strip(component, &[manifest::SECTION, "signature"])?;
    let plugin = rt.load(&bare)?;
    let info = &plugin.info;
    let schema = match &toml.config_schema {
        Some(v) => Some(
            serde_json::to_value(v)
                .map_err(|e| PackageError::Input(format!("config_schema: {e}")))?,
        ),
        None => None,
    };
    let m = Manifest {
        schema: SCHEMA.into(),
        name: toml.name.clone(),
        version: toml.version.clone().unwrap_or_else(|| info.version.clone()),
        contract: format!(
            "{}@{}",
            crate::hooks::artifact::WIT_PACKAGE,
            plugin.wit_version
        ),
        hook_points: toml
            .hook_points
            .clone()
            .unwrap_or_else(|| info.hook_points.clone()),
        edit_mode: toml.edit_mode.unwrap_or(if info.edits {
            ManifestEdit::Edits
        } else {
            ManifestEdit::ReadOnly
        }),
        config_schema: schema,
        resources: toml.resources.clone(),
    };
    // The manifest on its own, then against the component.
    let m = Manifest::parse(m.to_json().as_bytes())?;
    m.check(&plugin.wit_version, &plugin.said())?;
    let description = toml
        .description
        .clone()
        .or_else(|| (!info.description.is_empty()).then(|| info.description.clone()));
    let mut add = AddMetadata::default();
    add.name = AddMetadataField::Set(m.name.clone());
    add.version = AddMetadataField::Set(wasm_metadata::Version::new(m.version.clone()));
    add.authors = set(toml.authors.clone().map(wasm_metadata::Authors::new));
    add.description = set(description.map(wasm_metadata::Description::new));
    add.licenses = set(toml
        .licenses
        .as_deref()
        .map(wasm_metadata::Licenses::new)
        .transpose()
        .map_err(meta_err)?);
    add.source = set(toml
        .source
        .as_deref()
        .map(wasm_metadata::Source::new)
        .transpose()
        .map_err(meta_err)?);
    add.homepage = set(toml
        .homepage
        .as_deref()
        .map(wasm_metadata::Homepage::new)
        .transpose()
        .map_err(meta_err)?);
    add.revision = set(toml.revision.clone().map(wasm_metadata::Revision::new));
    let mut out = add.to_wasm(&bare).map_err(meta_err)?;
    push_custom(&mut out, manifest::SECTION, m.to_json().as_bytes());
    // What a colleague's host will do with it.
    rt.load(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_refuses_what_is_not_a_binary() {
        // Found by the `manifest` fuzz target: the empty input panicked.
        for b in [&b""[..], b"\0as", b"\0asm\x0d\0\x01"] {
            assert!(strip(b, &["x"]).is_err());
        }
        let mut c = b"\0asm\x0d\0\x01\0".to_vec();
        push_custom(&mut c, "keep", b"1");
        push_custom(&mut c, "drop", b"2");
        let s = strip(&c, &["drop"]).unwrap();
        let mut want = b"\0asm\x0d\0\x01\0".to_vec();
        push_custom(&mut want, "keep", b"1");
        assert_eq!(s, want);
    }
}
