//! `manifest.json` of a harvest folder: what was harvested (model, points,
//! dtype, the data file's hash, context and shard size) and the complete
//! shards with their token counts and SHA-256. Written atomically (a
//! temporary file renamed over it), so a shard is listed only once it is
//! whole on disk.
//!
//! With several data-parallel replicas each replica writes its own shards
//! (`shard-dp{r}-NNNNN.safetensors`) and lists them as they complete in its
//! own `progress-dp{r}.json` (the same format, its shards only): no two
//! processes ever write one file. Global rank 0 merges the lists into
//! `manifest.json` when a run starts and when it ends, then removes them.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::HarvestError;

pub const FORMAT: &str = "flexmodel-harvest/1";
pub const FILE: &str = "manifest.json";

/// Shard `k` of replica `replica` of `replicas`.
pub fn shard_file(replicas: usize, replica: usize, k: usize) -> String {
    if replicas > 1 {
        format!("shard-dp{replica}-{k:05}.safetensors")
    } else {
        format!("shard-{k:05}.safetensors")
    }
}

/// Where replica `r` of several lists its complete shards during a run.
pub fn progress_file(r: usize) -> String {
    format!("progress-dp{r}.json")
}

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
    /// The data-parallel replica that wrote it (its rows of each batch).
    #[serde(default)]
    pub replica: usize,
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

    /// Replica `r`'s shards, in order.
    pub fn replica_shards(&self, r: usize) -> Vec<Shard> {
        let mine = self.shards.iter().filter(|s| s.replica == r);
        mine.cloned().collect()
    }

    /// Read the manifest of `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<Manifest>, HarvestError> {
        Manifest::read_as(dir, FILE)
    }

    /// Read `dir/file` (the manifest or a replica's progress), if there.
    pub fn read_as(dir: &Path, file: &str) -> Result<Option<Manifest>, HarvestError> {
        let p = dir.join(file);
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
        self.write_as(dir, FILE)
    }

    /// Write it atomically as `dir/file`.
    pub fn write_as(&self, dir: &Path, file: &str) -> Result<(), HarvestError> {
        let p = dir.join(file);
        let tmp = dir.join(format!("{file}.partial"));
        let text =
            serde_json::to_string_pretty(self).map_err(|e| HarvestError::Corrupt(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| HarvestError::io(&tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| HarvestError::io(&p, e))
    }

    /// Check every listed shard: named `shard-NNNNN.safetensors` in order
    /// (each replica's, when several), its SHA-256, and the token count it
    /// holds (no more than the data has).
    pub fn verify(&self, dir: &Path) -> Result<(), HarvestError> {
        let corrupt = |p: &Path, why: &str| {
            HarvestError::Corrupt(format!(
                "{}: {why} (the harvest is corrupt: remove the folder to start over)",
                p.display()
            ))
        };
        let mut total = 0usize;
        let replicas = self.replicas.max(1);
        let mut next = vec![0usize; replicas];
        for s in &self.shards {
            let p = dir.join(&s.file);
            let k = next.get_mut(s.replica).ok_or_else(|| {
                let why = format!(
                    "{} is listed from replica {} of {replicas}",
                    s.file, s.replica
                );
                corrupt(&dir.join(FILE), &why)
            })?;
            if s.file != shard_file(replicas, s.replica, *k) {
                let why = format!(
                    "shard {k} of replica {} is listed as {:?}",
                    s.replica, s.file
                );
                return Err(corrupt(&dir.join(FILE), &why));
            }
            *k += 1;
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
