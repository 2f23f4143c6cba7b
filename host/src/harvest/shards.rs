//! Filling and writing shards: tokens accumulate per point until a shard
//! holds `shard_tokens`, which a writer thread saves (a `.partial` file
//! renamed into place, then the list rewritten to name it: the manifest,
//! or with several replicas this replica's progress file) while the next
//! batches compute. Memory stays at about two shards per replica whatever
//! the dataset's size.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use tch::Tensor;

use super::HarvestError;
use super::manifest::{Manifest, Shard, sha256_file, shard_file};

/// The tokens of one batch (or the part of one shard): per point
/// `[tokens, width]`, and the tokens' ids, documents and positions.
pub struct Tokens {
    pub points: Vec<Tensor>,
    pub token_ids: Vec<i64>,
    pub doc_index: Vec<i64>,
    pub position: Vec<i64>,
}

impl Tokens {
    fn len(&self) -> usize {
        self.token_ids.len()
    }

    fn split_off(&mut self, at: usize) -> Tokens {
        let n = self.len();
        let rest = Tokens {
            points: self
                .points
                .iter()
                .map(|t| t.narrow(0, at as i64, (n - at) as i64))
                .collect(),
            token_ids: self.token_ids.split_off(at),
            doc_index: self.doc_index.split_off(at),
            position: self.position.split_off(at),
        };
        self.points = self
            .points
            .iter()
            .map(|t| t.narrow(0, 0, at as i64))
            .collect();
        rest
    }
}

/// Whose shards a writer writes, and where it lists them.
pub struct Place {
    pub replica: usize,
    pub replicas: usize,
    /// The file (in the harvest folder) listing the shards written.
    pub list: String,
}

/// Accumulates tokens and hands full shards to the writer thread.
pub struct Shards {
    shard_tokens: usize,
    pending: Vec<Tokens>,
    pending_len: usize,
    next: usize,
    tx: Option<SyncSender<(usize, Vec<Tokens>)>>,
    writer: Option<JoinHandle<Result<Manifest, HarvestError>>>,
}

impl Shards {
    /// Continue `manifest` (its shards, `place`'s, already on disk) in
    /// `dir`.
    pub fn new(dir: PathBuf, manifest: Manifest, names: Vec<String>, place: Place) -> Shards {
        let (tx, rx) = sync_channel(1);
        let next = manifest.shards.len();
        let shard_tokens = manifest.identity.shard_tokens;
        let writer = std::thread::spawn(move || write_loop(dir, manifest, names, place, rx));
        Shards {
            shard_tokens,
            pending: Vec::new(),
            pending_len: 0,
            next,
            tx: Some(tx),
            writer: Some(writer),
        }
    }

    /// Add a batch's tokens; full shards go to the writer.
    pub fn push(&mut self, mut t: Tokens) -> Result<(), HarvestError> {
        while self.pending_len + t.len() >= self.shard_tokens {
            let take = self.shard_tokens - self.pending_len;
            let rest = t.split_off(take);
            self.pending.push(t);
            self.flush()?;
            t = rest;
        }
        if t.len() > 0 {
            self.pending_len += t.len();
            self.pending.push(t);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), HarvestError> {
        let parts = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| HarvestError::Corrupt("writer closed".into()))?;
        if tx.send((self.next, parts)).is_err() {
            // The writer stopped on an error: report it.
            return self.finish(false).map(|_| ());
        }
        self.next += 1;
        Ok(())
    }

    /// Write what is left (a last, smaller shard), mark the manifest
    /// complete when `complete`, and wait for the writer.
    pub fn finish(&mut self, complete: bool) -> Result<Manifest, HarvestError> {
        if self.pending_len > 0 {
            let parts = std::mem::take(&mut self.pending);
            self.pending_len = 0;
            if let Some(tx) = &self.tx {
                let _ = tx.send((self.next, parts));
                self.next += 1;
            }
        }
        drop(self.tx.take());
        let mut m = self
            .writer
            .take()
            .ok_or_else(|| HarvestError::Corrupt("writer already finished".into()))?
            .join()
            .map_err(|_| HarvestError::Corrupt("the shard writer panicked".into()))??;
        if complete {
            m.complete = true;
        }
        Ok(m)
    }
}

fn write_loop(
    dir: PathBuf,
    mut manifest: Manifest,
    names: Vec<String>,
    place: Place,
    rx: Receiver<(usize, Vec<Tokens>)>,
) -> Result<Manifest, HarvestError> {
    for (k, parts) in rx {
        let file = shard_file(place.replicas, place.replica, k);
        let path = dir.join(&file);
        let tmp = dir.join(format!("{file}.partial"));
        let cat = |f: &dyn Fn(&Tokens) -> Tensor| {
            Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0)
        };
        let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            tensors.insert(
                name.clone(),
                cat(&|t| t.points[i].shallow_clone()).contiguous(),
            );
        }
        let ids = |f: fn(&Tokens) -> &Vec<i64>| {
            Tensor::from_slice(
                &parts
                    .iter()
                    .flat_map(|t| f(t).iter().copied())
                    .collect::<Vec<i64>>(),
            )
        };
        tensors.insert("token_ids".into(), ids(|t| &t.token_ids));
        tensors.insert("doc_index".into(), ids(|t| &t.doc_index));
        tensors.insert("position".into(), ids(|t| &t.position));
        let tokens = tensors["token_ids"].size()[0] as usize;
        let list: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        Tensor::write_safetensors(&list, &tmp)
            .map_err(|e| HarvestError::io(&tmp, std::io::Error::other(e.to_string())))?;
        std::fs::rename(&tmp, &path).map_err(|e| HarvestError::io(&path, e))?;
        manifest.shards.push(Shard {
            file,
            tokens,
            sha256: sha256_file(&path)?,
            replica: place.replica,
        });
        manifest.write_as(&dir, &place.list)?;
    }
    Ok(manifest)
}

/// `[rows, seq, ...]` activation rows' real tokens, `(start, len)` per
/// row, as `[tokens, width]`.
pub fn real_rows(t: &Tensor, spans: &[(i64, i64)]) -> Tensor {
    let parts: Vec<Tensor> = spans
        .iter()
        .enumerate()
        .map(|(r, &(start, len))| t.get(r as i64).narrow(0, start, len))
        .collect();
    let x = Tensor::cat(&parts, 0);
    let n = x.size()[0];
    x.reshape([n, -1])
}
