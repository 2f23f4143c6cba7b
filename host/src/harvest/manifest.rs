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
        self.shards.iter().map(|s| s.tokens).sum()
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

    /// Check every listed shard against its SHA-256.
    pub fn verify(&self, dir: &Path) -> Result<(), HarvestError> {
        for s in &self.shards {
            let p = dir.join(&s.file);
            let got = sha256_file(&p)?;
            if got != s.sha256 {
                return Err(HarvestError::Corrupt(format!(
                    "{} does not match its SHA-256 in the manifest (the shard is corrupt: remove the folder to start over)",
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

pub fn sha256_file(p: &Path) -> Result<String, HarvestError> {
    let bytes = std::fs::read(p).map_err(|e| HarvestError::io(p, e))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}
