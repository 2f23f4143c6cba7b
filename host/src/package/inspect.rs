//! `flexmodel plugin inspect`: everything a component says about itself
//! without running it (its SHA-256, the standard metadata, the manifest,
//! the signature, its imports and exports), plus what it answers when the
//! host asks (`info`), when it loads.

use serde::Serialize;

use super::sign::{self, Signature};
use super::{PackageError, digest};
use crate::hooks::manifest::{self, Manifest};

/// The standard fields (`wasm-metadata`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metadata {
    pub name: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    pub authors: Option<String>,
    pub licenses: Option<String>,
    pub source: Option<String>,
    pub homepage: Option<String>,
    pub revision: Option<String>,
}

/// Read the standard fields of the outer component.
pub fn metadata(bytes: &[u8]) -> Result<Metadata, PackageError> {
    let p = wasm_metadata::Payload::from_binary(bytes)
        .map_err(|e| PackageError::Input(format!("component metadata: {e}")))?;
    let m = p.metadata();
    let s = |v: Option<String>| v.map(|v| v.to_string());
    Ok(Metadata {
        name: m.name.clone(),
        version: s(m.version.as_ref().map(ToString::to_string)),
        description: s(m.description.as_ref().map(ToString::to_string)),
        authors: s(m.authors.as_ref().map(ToString::to_string)),
        licenses: s(m.licenses.as_ref().map(ToString::to_string)),
        source: s(m.source.as_ref().map(ToString::to_string)),
        homepage: s(m.homepage.as_ref().map(ToString::to_string)),
        revision: s(m.revision.as_ref().map(ToString::to_string)),
    })
}

/// The names the outer component imports and exports (top level).
pub fn interface_names(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), PackageError> {
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| PackageError::Input(format!("component: {e}")))?;
        match payload {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(r) if depth == 0 => {
                for i in r {
                    let i = i.map_err(|e| PackageError::Input(format!("component: {e}")))?;
                    imports.push(i.name.name.to_string());
                }
            }
            wasmparser::Payload::ComponentExportSection(r) if depth == 0 => {
                for e in r {
                    let e = e.map_err(|e| PackageError::Input(format!("component: {e}")))?;
                    exports.push(e.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

#[derive(Debug, Clone, Serialize)]
pub struct SignatureReport {
    /// `unsigned`, `signed`, or `modified` (the content changed after signing).
    pub state: String,
    pub key_ids: Vec<String>,
}

/// What `plugin inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub sha256: String,
    pub bytes: usize,
    pub metadata: Metadata,
    pub manifest: Option<Manifest>,
    pub signature: SignatureReport,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

pub fn inspect(bytes: &[u8]) -> Result<Inspection, PackageError> {
    crate::hooks::artifact::check_header(bytes)?;
    let (imports, exports) = interface_names(bytes)?;
    let signature = match sign::signature(bytes)? {
        Signature::Unsigned => SignatureReport {
            state: "unsigned".into(),
            key_ids: vec![],
        },
        Signature::Signed { key_ids } => SignatureReport {
            state: "signed".into(),
            key_ids,
        },
        Signature::Modified => SignatureReport {
            state: "modified".into(),
            key_ids: vec![],
        },
    };
    Ok(Inspection {
        sha256: digest(bytes),
        bytes: bytes.len(),
        metadata: metadata(bytes)?,
        manifest: manifest::read(bytes)?,
        signature,
        imports,
        exports,
    })
}
