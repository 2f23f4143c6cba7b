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

mod data;
pub use data::{Doc, read_docs};
pub mod manifest;
mod shards;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::Tensor;

use crate::api::{Batch, FlexError, FlexModel, Groups, Padding, batch_bounds};
use crate::hooks::{Access, CallContext, CallReport, EditMode, Emitted, Hook, HookError};
use crate::models::PointPattern;
pub use manifest::Manifest;
use manifest::{FORMAT, Identity, sha256_file};
use shards::{Shards, Tokens, real_rows};

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
/// identity, shards verified). Nothing is written here.
fn open(out: &Path, fresh: Manifest) -> Result<Manifest, HarvestError> {
    match Manifest::read(out)? {
        Some(m) if m.identity == fresh.identity => {
            m.verify(out)?;
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

/// Run the harvest; `progress(done, total)` after each batch (tokens). On
/// ranks other than global rank 0 of a launched job, the forwards run and
/// nothing is written (they read the manifest to resume where rank 0 does:
/// `out` must be on a filesystem every rank sees).
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
    let fresh = Manifest {
        identity,
        model: spec.model_dir.display().to_string(),
        total_tokens: total,
        widths,
        replicas: fm.options().mesh.dp,
        shards: Vec::new(),
        complete: false,
    };
    // Every rank reads where the harvest stands (`--out` on a filesystem
    // every rank sees), so that all resume at the same row; rank 0 writes.
    let manifest = open(&spec.out, fresh)?;
    let done = manifest.tokens_done();
    if manifest.complete || done >= total {
        return Ok(manifest);
    }
    if root {
        std::fs::create_dir_all(&spec.out).map_err(|e| HarvestError::io(&spec.out, e))?;
        clear_strays(&spec.out, &manifest)?;
        manifest.write(&spec.out)?;
    }
    // Batches of at least one row per replica, fixed from the start so that
    // a resumed run computes the same batches; where to continue: the batch
    // holding token `done`, and how many of its tokens are written already.
    let batches = batch_bounds(rows.len(), spec.batch_size, fm.options().mesh.dp.max(1))?;
    let (mut from, mut skip, mut seen) = (batches.len(), 0, 0);
    for (k, &(start, n)) in batches.iter().enumerate() {
        let tokens: usize = rows[start..start + n].iter().map(|r| r.ids.len()).sum();
        if seen + tokens > done {
            from = k;
            skip = done - seen;
            break;
        }
        seen += tokens;
    }
    let hook: Arc<dyn Hook> = Arc::new(Capture);
    let mut handles = Vec::new();
    for n in &names {
        handles.push(fm.register(hook.clone(), n, &["harvest"])?);
    }
    let result = harvest_rows(
        fm,
        spec,
        &names,
        (&rows, &batches[from..]),
        skip,
        manifest,
        done,
        &mut progress,
    );
    for h in handles {
        fm.remove(h);
    }
    result
}

/// The forwards of `batches` (`(first row, rows)` of `rows`; the first
/// batch's first `skip` tokens written already), shards written at global
/// rank 0.
#[allow(clippy::too_many_arguments)]
fn harvest_rows(
    fm: &mut FlexModel,
    spec: &Spec,
    names: &[String],
    (rows, batches): (&[data::Row], &[(usize, usize)]),
    mut skip: usize,
    manifest: Manifest,
    done: usize,
    progress: &mut impl FnMut(usize, usize),
) -> Result<Manifest, HarvestError> {
    let total = manifest.total_tokens;
    let root = fm.is_root();
    progress(done, total);
    let stop = names.last().cloned().unwrap_or_default();
    let mut shards = root.then(|| Shards::new(spec.out.clone(), manifest.clone(), names.to_vec()));
    let mut written = done;
    for &(start, n) in batches {
        let batch_rows = &rows[start..start + n];
        let ids: Vec<Vec<i64>> = batch_rows.iter().map(|r| r.ids.clone()).collect();
        let batch = Batch::pad(&ids, spec.padding, 0)?;
        let out = match fm.forward_until(&batch, &Groups::only(["harvest"]), &stop) {
            Ok(o) => o,
            Err(FlexError::NotRoot { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut t = Tokens {
            points: Vec::with_capacity(names.len()),
            token_ids: Vec::new(),
            doc_index: Vec::new(),
            position: Vec::new(),
        };
        for r in batch_rows {
            for (j, &id) in r.ids.iter().enumerate() {
                t.token_ids.push(id);
                t.doc_index.push(r.doc);
                t.position.push(r.start + j as i64);
            }
        }
        for n in names {
            let x = out
                .outputs
                .get(n)
                .ok_or_else(|| HarvestError::Corrupt(format!("no activation from {n}")))?;
            t.points.push(x.shallow_clone());
        }
        if skip > 0 {
            t = split_front(t, skip);
            skip = 0;
        }
        written += t.token_ids.len();
        if let Some(s) = shards.as_mut() {
            s.push(t)?;
        }
        progress(written, total);
    }
    match shards {
        Some(mut s) => {
            let m = s.finish(true)?;
            m.write(&spec.out)?;
            Ok(m)
        }
        None => Ok(manifest),
    }
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
