//! Harvesting activations to disk (for SAE training and probing): a dataset
//! tokenised, cut to a context, run in padded batches (rows of similar
//! lengths together, to cut padding) with a host hook at each requested
//! point, and only real tokens written, in a flat layout:
//! shards `shard-00000.safetensors`, ... each holding per point a
//! `[tokens, width]` tensor under the point's name and `token_ids`,
//! `doc_index`, `position` (`[tokens]`, i64: the token, its document, its
//! position in the document), listed in `manifest.json` with their token
//! counts and SHA-256. Resumable: a rerun with the same arguments verifies
//! the listed shards and continues after the last one (a shard is listed
//! only once whole on disk), so the shards hold every token exactly once.
//! Data-parallel replicas write their own shards ([`manifest`]).

mod data;
pub use data::{Doc, read_docs};
pub mod manifest;
mod shards;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::Tensor;

use crate::api::{Batch, FlexError, FlexModel, Groups, Padding, batch_bounds};
use crate::hooks::{Access, CallContext, CallReport, EditMode, Emitted, Hook, HookError};
use crate::models::PointPattern;
pub use manifest::Manifest;
use manifest::{FORMAT, Identity, Shard, sha256_file};
use shards::{Place, Shards, Tokens, real_rows};

#[derive(Debug, thiserror::Error)]
pub enum HarvestError {
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Foreign(String),
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Flex(#[from] FlexError),
}

impl HarvestError {
    fn io(path: &Path, source: std::io::Error) -> HarvestError {
        HarvestError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// What to harvest.
pub struct Spec {
    pub model_dir: PathBuf,
    pub data: PathBuf,
    /// Hook-point names, aliases or patterns.
    pub points: Vec<String>,
    pub out: PathBuf,
    pub batch_size: usize,
    pub context: usize,
    pub shard_tokens: usize,
    pub padding: Padding,
}

/// Canonical names of the points `patterns` select (forward order) and each
/// one's width; every one must be `[batch, seq, ...]`.
fn select(fm: &FlexModel, patterns: &[String]) -> Result<(Vec<String>, Vec<usize>), HarvestError> {
    let base = fm.points(1, 1);
    let grown = fm.points(2, 3);
    let mut chosen = std::collections::BTreeSet::new();
    for p in patterns {
        let pat = PointPattern::new(p).map_err(|e| HarvestError::Input(e.to_string()))?;
        chosen.extend(
            pat.select(&base)
                .map_err(|e| HarvestError::Input(e.to_string()))?,
        );
    }
    let mut names = Vec::new();
    let mut widths = Vec::new();
    for (a, b) in base.iter().zip(&grown) {
        if !chosen.contains(&a.name) {
            continue;
        }
        let tokens_first = a.shape.len() >= 2 && b.shape[0] == 2 && b.shape[1] == 3;
        let rest_fixed = a.shape[2.min(a.shape.len())..] == b.shape[2.min(b.shape.len())..];
        if !(tokens_first && rest_fixed) {
            return Err(HarvestError::Input(format!(
                "{} is {:?} per token: harvest takes points laid out [batch, seq, ...]",
                a.name, a.shape
            )));
        }
        names.push(a.name.clone());
        widths.push(a.shape[2..].iter().product::<i64>() as usize);
    }
    Ok((names, widths))
}

fn dtype_name(k: tch::Kind) -> String {
    match k {
        tch::Kind::Float => "f32".into(),
        tch::Kind::BFloat16 => "bf16".into(),
        tch::Kind::Half => "f16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The manifest to continue in `out`: a new one, or the one there (same
/// identity; and, unless complete, the same data-parallel replicas, whose
/// rows of each batch it holds). Nothing is written here.
fn open(out: &Path, fresh: Manifest) -> Result<Manifest, HarvestError> {
    match Manifest::read(out)? {
        Some(m) if m.identity == fresh.identity => {
            if !m.complete && m.replicas.max(1) != fresh.replicas {
                return Err(HarvestError::Foreign(format!(
                    "{} holds a harvest under way on {} data-parallel replicas: rerun it with --dp {}",
                    out.display(),
                    m.replicas.max(1),
                    m.replicas.max(1)
                )));
            }
            if m.complete {
                m.verify(out)?;
            }
            Ok(m)
        }
        Some(m) => Err(HarvestError::Foreign(format!(
            "{} holds a harvest of something else ({} in {}; points {:?}, context {}, shards of {} tokens): \
             give another --out or the same arguments",
            out.display(),
            m.model,
            m.identity.dtype,
            m.identity.points,
            m.identity.context,
            m.identity.shard_tokens
        ))),
        None => {
            let foreign = out.exists()
                && std::fs::read_dir(out)
                    .map_err(|e| HarvestError::io(out, e))?
                    .next()
                    .is_some();
            if foreign {
                return Err(HarvestError::Foreign(format!(
                    "{} is not empty and holds no harvest manifest: give an empty or new folder",
                    out.display()
                )));
            }
            Ok(fresh)
        }
    }
}

/// Run the harvest; `progress(done, total)` after each batch (tokens).
/// Every rank of a launched job runs the forwards; the first rank of each
/// data-parallel replica writes that replica's shards (its rows of every
/// batch: nothing crosses between replicas), and global rank 0 the
/// manifest. Every rank reads where the harvest stands, so `out` must be
/// on a filesystem every rank sees.
pub fn run(
    fm: &mut FlexModel,
    spec: &Spec,
    mut progress: impl FnMut(usize, usize),
) -> Result<Manifest, HarvestError> {
    if spec.batch_size == 0 || spec.context == 0 || spec.shard_tokens == 0 {
        return Err(HarvestError::Input(
            "--batch-size, --context and --shard-tokens must be positive".into(),
        ));
    }
    let (names, widths) = select(fm, &spec.points)?;
    let docs = data::read(&spec.data, fm.tokenizer(), fm.vocab_size())?;
    let rows = data::bucketed(data::rows(&docs, spec.context), spec.batch_size);
    let total: usize = rows.iter().map(|r| r.ids.len()).sum();
    let identity = Identity {
        format: FORMAT.into(),
        model_config_sha256: sha256_file(&spec.model_dir.join("config.json"))?,
        points: names.clone(),
        dtype: dtype_name(fm.options().kind),
        data_sha256: sha256_file(&spec.data)?,
        context: spec.context,
        shard_tokens: spec.shard_tokens,
    };
    let root = fm.is_root();
    let dp = fm.options().mesh.dp.max(1);
    let fresh = Manifest {
        identity,
        model: spec.model_dir.display().to_string(),
        total_tokens: total,
        widths,
        replicas: dp,
        shards: Vec::new(),
        complete: false,
    };
    let manifest = open(&spec.out, fresh)?;
    if manifest.complete {
        if root {
            clear_progress(&spec.out, dp)?;
        }
        return Ok(manifest);
    }
    // Where each replica stands: its complete shards.
    let mut manifest = manifest;
    manifest.shards = standing(&spec.out, &manifest)?.concat();
    manifest.verify(&spec.out)?;
    if root {
        std::fs::create_dir_all(&spec.out).map_err(|e| HarvestError::io(&spec.out, e))?;
        clear_strays(&spec.out, &manifest)?;
        manifest.write(&spec.out)?;
    }
    // Batches of at least one row per replica, fixed from the start so that
    // a resumed run computes the same batches. Each replica continues its
    // own stream of tokens (its rows of each batch): every replica runs
    // from the first batch one of them has not written whole, skipping the
    // tokens it wrote already.
    let batches = batch_bounds(rows.len(), spec.batch_size, dp)?;
    let plan = Plan::new(&rows, &batches, dp);
    let done: Vec<usize> = (0..dp)
        .map(|r| manifest.replica_shards(r).iter().map(|s| s.tokens).sum())
        .collect();
    let from = (0..dp)
        .map(|r| plan.first_unwritten(r, done[r]))
        .min()
        .unwrap_or(batches.len());
    let skip: Vec<usize> = (0..dp).map(|r| done[r] - plan.before(r, from)).collect();
    let hook: Arc<dyn Hook> = Arc::new(Capture);
    let mut handles = Vec::new();
    for n in &names {
        handles.push(fm.register(hook.clone(), n, &["harvest"])?);
    }
    let result = harvest_rows(
        fm,
        spec,
        &names,
        (&plan, from),
        skip,
        &manifest,
        &mut progress,
    );
    for h in handles {
        fm.remove(h);
    }
    result?;
    // Every replica's last shard is listed before rank 0 merges the lists.
    fm.barrier()?;
    if !root {
        return Ok(manifest);
    }
    let mut last = Manifest::read(&spec.out)?.unwrap_or(manifest);
    last.shards = standing(&spec.out, &last)?.concat();
    last.complete = true;
    last.write(&spec.out)?;
    clear_progress(&spec.out, dp)?;
    Ok(last)
}

/// Each replica's complete shards: from its progress file when it has one
/// (several replicas, a run under way or cut short), else from `m`.
fn standing(out: &Path, m: &Manifest) -> Result<Vec<Vec<Shard>>, HarvestError> {
    if m.replicas <= 1 {
        return Ok(vec![m.shards.clone()]);
    }
    let mut each = Vec::with_capacity(m.replicas);
    for r in 0..m.replicas {
        let file = manifest::progress_file(r);
        match Manifest::read_as(out, &file)? {
            Some(p) if p.identity == m.identity => {
                if p.shards.iter().any(|s| s.replica != r) {
                    return Err(HarvestError::Corrupt(format!(
                        "{}: lists another replica's shards (the harvest is corrupt: remove the folder to start over)",
                        out.join(&file).display()
                    )));
                }
                each.push(p.shards);
            }
            Some(_) => {
                return Err(HarvestError::Corrupt(format!(
                    "{}: the progress of another harvest (remove the folder to start over)",
                    out.join(&file).display()
                )));
            }
            None => each.push(m.replica_shards(r)),
        }
    }
    Ok(each)
}

/// Remove the replicas' progress files (once the manifest lists it all).
fn clear_progress(out: &Path, dp: usize) -> Result<(), HarvestError> {
    for r in 0..dp {
        let p = out.join(manifest::progress_file(r));
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| HarvestError::io(&p, e))?;
        }
    }
    Ok(())
}

/// Which rows each replica computes in each batch, and their tokens.
struct Plan<'a> {
    rows: &'a [data::Row],
    batches: &'a [(usize, usize)],
    /// `(first row, rows)` of replica `r` in batch `k`: `parts[k][r]`.
    parts: Vec<Vec<(usize, usize)>>,
    /// Replica `r`'s tokens in batch `k`: `tokens[k][r]`.
    tokens: Vec<Vec<usize>>,
}

impl<'a> Plan<'a> {
    fn new(rows: &'a [data::Row], batches: &'a [(usize, usize)], dp: usize) -> Plan<'a> {
        let parts: Vec<Vec<(usize, usize)>> = batches
            .iter()
            .map(|&(start, n)| {
                (0..dp)
                    .map(|r| {
                        let (s, l) = crate::models::shard::balanced(n as i64, dp as i64, r as i64);
                        (start + s as usize, l as usize)
                    })
                    .collect()
            })
            .collect();
        let tokens = parts
            .iter()
            .map(|p| {
                p.iter()
                    .map(|&(s, l)| rows[s..s + l].iter().map(|r| r.ids.len()).sum())
                    .collect()
            })
            .collect();
        Plan {
            rows,
            batches,
            parts,
            tokens,
        }
    }

    /// Replica `r`'s tokens in the batches before batch `k`.
    fn before(&self, r: usize, k: usize) -> usize {
        self.tokens[..k].iter().map(|t| t[r]).sum()
    }

    /// The first batch replica `r` has not written whole, given it wrote
    /// `done` tokens (the number of batches when it wrote them all).
    fn first_unwritten(&self, r: usize, done: usize) -> usize {
        let mut seen = 0;
        for (k, t) in self.tokens.iter().enumerate() {
            if seen + t[r] > done {
                return k;
            }
            seen += t[r];
        }
        self.tokens.len()
    }
}

/// The forwards of the batches from `from` on, each replica's shards
/// written by its first rank; `skip[r]`: the tokens replica `r` wrote
/// already from batch `from` on.
fn harvest_rows(
    fm: &mut FlexModel,
    spec: &Spec,
    names: &[String],
    (plan, from): (&Plan, usize),
    mut skip: Vec<usize>,
    manifest: &Manifest,
    progress: &mut impl FnMut(usize, usize),
) -> Result<(), HarvestError> {
    let total = manifest.total_tokens;
    let dp = skip.len();
    let mut written = manifest.tokens_done();
    progress(written, total);
    let stop = names.last().cloned().unwrap_or_default();
    // The writers of the replicas whose first rank this process runs.
    let mut writers: BTreeMap<usize, Shards> = BTreeMap::new();
    for k in from..plan.batches.len() {
        let (start, n) = plan.batches[k];
        let ids: Vec<Vec<i64>> = plan.rows[start..start + n]
            .iter()
            .map(|r| r.ids.clone())
            .collect();
        let batch = Batch::pad(&ids, spec.padding, 0)?;
        let outs = fm.forward_until_replicas(&batch, &Groups::only(["harvest"]), &stop)?;
        // What each replica writes of this batch (the rest it wrote before).
        let mut front = vec![0; dp];
        for r in 0..dp {
            front[r] = skip[r].min(plan.tokens[k][r]);
            skip[r] -= front[r];
            written += plan.tokens[k][r] - front[r];
        }
        for (r, out) in outs {
            let (first, len) = plan.parts[k][r];
            if front[r] == plan.tokens[k][r] {
                continue;
            }
            let mut t = tokens_of(&plan.rows[first..first + len], names, &out.outputs)?;
            if front[r] > 0 {
                t = split_front(t, front[r]);
            }
            let w = writers.entry(r).or_insert_with(|| {
                let mut mine = manifest.clone();
                mine.shards = manifest.replica_shards(r);
                let list = if dp > 1 {
                    manifest::progress_file(r)
                } else {
                    manifest::FILE.to_string()
                };
                let place = Place {
                    replica: r,
                    replicas: dp,
                    list,
                };
                Shards::new(spec.out.clone(), mine, names.to_vec(), place)
            });
            w.push(t)?;
        }
        progress(written, total);
    }
    for (_, mut w) in writers {
        w.finish(false)?;
    }
    Ok(())
}

/// The real tokens of `rows` and each point's activations of them.
fn tokens_of(
    rows: &[data::Row],
    names: &[String],
    outputs: &BTreeMap<String, Tensor>,
) -> Result<Tokens, HarvestError> {
    let mut t = Tokens {
        points: Vec::with_capacity(names.len()),
        token_ids: Vec::new(),
        doc_index: Vec::new(),
        position: Vec::new(),
    };
    for r in rows {
        for (j, &id) in r.ids.iter().enumerate() {
            t.token_ids.push(id);
            t.doc_index.push(r.doc);
            t.position.push(r.start + j as i64);
        }
    }
    for n in names {
        let x = outputs
            .get(n)
            .ok_or_else(|| HarvestError::Corrupt(format!("no activation from {n}")))?;
        if x.size()[0] as usize != t.token_ids.len() {
            return Err(HarvestError::Corrupt(format!(
                "{n}: {} rows of activations for {} tokens",
                x.size()[0],
                t.token_ids.len()
            )));
        }
        t.points.push(x.shallow_clone());
    }
    Ok(t)
}

/// `t` without its first `n` tokens.
fn split_front(t: Tokens, n: usize) -> Tokens {
    let len = t.token_ids.len();
    Tokens {
        points: t
            .points
            .iter()
            .map(|p| p.narrow(0, n as i64, (len - n) as i64))
            .collect(),
        token_ids: t.token_ids[n..].to_vec(),
        doc_index: t.doc_index[n..].to_vec(),
        position: t.position[n..].to_vec(),
    }
}

/// The host hook: each row's real tokens of a `[batch, seq, ...]` point as
/// `[tokens, width]`, emitted as gathered (one copy of the activation's
/// real part, no further one).
struct Capture;

impl Hook for Capture {
    fn name(&self) -> &str {
        "harvest"
    }

    fn access(&self) -> Access {
        Access {
            mode: EditMode::ReadOnly,
            reads: None,
        }
    }

    fn call(&self, ctx: &CallContext, t: &mut Tensor) -> Result<CallReport, HookError> {
        let size = t.size();
        let spans: Vec<(i64, i64)> = match ctx.tokens.as_ref().and_then(|k| k.real.clone()) {
            Some(r) => r
                .iter()
                .map(|&(s, l)| (i64::from(s), i64::from(l)))
                .collect(),
            None => vec![(0, size[1]); size[0] as usize],
        };
        let rows = real_rows(&t.detach(), &spans).to_device(tch::Device::Cpu);
        Ok(CallReport {
            emitted: vec![Emitted {
                key: ctx.hook_point.clone(),
                tensor: rows,
            }],
            ..CallReport::default()
        })
    }
}

/// Shard files not in the manifest (a shard written when the run was
/// killed, before it was listed) and `.partial` files: the rerun writes them
/// again.
fn clear_strays(out: &Path, m: &Manifest) -> Result<(), HarvestError> {
    for e in std::fs::read_dir(out).map_err(|e| HarvestError::io(out, e))? {
        let p = e.map_err(|e| HarvestError::io(out, e))?.path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        let listed = m.shards.iter().any(|s| s.file == name);
        let ours = name.starts_with("shard-") || name.ends_with(".partial");
        if ours && !listed {
            std::fs::remove_file(&p).map_err(|e| HarvestError::io(&p, e))?;
        }
    }
    Ok(())
}
