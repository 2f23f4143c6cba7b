//! `manifest.json` of a harvest folder: what was harvested (model, points,
//! dtype, the data file's hash, context and shard size) and the complete
//! shards with their token counts and SHA-256. Written atomically (a
//! temporary file renamed over it), so a shard is listed only once it is
//! whole on disk.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::HarvestError;

pub const FORMAT: &str = "flexmodel-harvest/1";
pub const FILE: &str = "manifest.json";

/// What the harvest is; a rerun must ask for the same to resume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub format: String,
    /// The model folder's config.json, hashed.
    pub model_config_sha256: String,
    /// Canonical hook-point names, in forward order.
    pub points: Vec<String>,
    pub dtype: String,
    pub data_sha256: String,
    pub context: usize,
    pub shard_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub file: String,
    pub tokens: usize,
    pub sha256: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    #[serde(flatten)]
    pub identity: Identity,
    /// The model folder, as given.
    pub model: String,
    /// Tokens the data holds (after truncation to the context).
    pub total_tokens: usize,
    /// Width of each point's rows (`[tokens, width]`).
    pub widths: Vec<usize>,
    /// Data-parallel replicas that computed the shards.
    pub replicas: usize,
    pub shards: Vec<Shard>,
    /// Every token has been written.
    pub complete: bool,
}

impl Manifest {
    pub fn tokens_done(&self) -> usize {
        self.shards
            .iter()
            .fold(0, |a, s| a.saturating_add(s.tokens))
    }

    /// Read the manifest of `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<Manifest>, HarvestError> {
        let p = dir.join(FILE);
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| HarvestError::io(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| HarvestError::Corrupt(format!("{}: {e}", p.display())))
    }

    /// Write it atomically.
    pub fn write(&self, dir: &Path) -> Result<(), HarvestError> {
        let p = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.partial"));
        let text =
            serde_json::to_string_pretty(self).map_err(|e| HarvestError::Corrupt(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| HarvestError::io(&tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| HarvestError::io(&p, e))
    }

    /// Check every listed shard: named `shard-NNNNN.safetensors` in order,
    /// its SHA-256, and the token count it holds (no more than the data has).
    pub fn verify(&self, dir: &Path) -> Result<(), HarvestError> {
        let corrupt = |p: &Path, why: &str| {
            HarvestError::Corrupt(format!(
                "{}: {why} (the harvest is corrupt: remove the folder to start over)",
                p.display()
            ))
        };
        let mut total = 0usize;
        for (i, s) in self.shards.iter().enumerate() {
            let p = dir.join(&s.file);
            if s.file != format!("shard-{i:05}.safetensors") {
                let why = format!("shard {i} is listed as {:?}", s.file);
                return Err(corrupt(&dir.join(FILE), &why));
            }
            let bytes = std::fs::read(&p).map_err(|e| HarvestError::io(&p, e))?;
            if hex::encode(Sha256::digest(&bytes)) != s.sha256 {
                return Err(corrupt(&p, "does not match its SHA-256 in the manifest"));
            }
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
                .map_err(|e| corrupt(&p, &e.to_string()))?;
            let held = meta.tensors().get("token_ids").map(|t| t.shape.clone());
            if held != Some(vec![s.tokens]) {
                let why = format!("holds token_ids {held:?}, listed as {} tokens", s.tokens);
                return Err(corrupt(&p, &why));
            }
            total = total.saturating_add(s.tokens);
        }
        if total > self.total_tokens {
            return Err(corrupt(
                &dir.join(FILE),
                "lists more tokens than the data holds",
            ));
        }
        Ok(())
    }
}

pub fn sha256_file(p: &Path) -> Result<String, HarvestError> {
    let bytes = std::fs::read(p).map_err(|e| HarvestError::io(p, e))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}
