//! `flexmodel run`: forwards with hooks over prompts; next-token
//! predictions printed, outputs saved.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use flexmodel::api::{FlexError, FlexModel, Groups, LogLine};
use tch::{Device, Tensor};

use super::prompts::{Prompt, read_prompts, token_ids};
use super::show::{row, save, show, top_k};
use super::{MeshArgs, ModelArgs};

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One prompt (needs tokenizer.json in the model folder).
    #[arg(long, conflicts_with_all = ["prompts", "token_ids"])]
    pub prompt: Option<String>,
    /// JSONL file: each line a string, {"prompt": "..."} or {"token_ids": [..]}.
    #[arg(long, conflicts_with = "token_ids")]
    pub prompts: Option<PathBuf>,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    pub token_ids: Option<Vec<i64>>,
    /// PLUGIN.wasm@PATTERN[=CONFIG_JSON], repeatable.
    #[arg(long = "hook")]
    pub hooks: Vec<String>,
    /// Save logits and retrieved tensors to a safetensors file.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// How many top next-token predictions to print.
    #[arg(long, default_value_t = 5)]
    pub top_k: i64,
    /// Fuel per hook call (deterministic CPU limit).
    #[arg(long, default_value_t = 4_000_000_000)]
    pub fuel: u64,
    /// Seed of the hooks' random streams.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop the forward after this hook point (name, alias or pattern):
    /// only the hooks up to there run; no logits are computed or saved.
    #[arg(long)]
    pub stop_at: Option<String>,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// What one forward gave global rank 0.
struct Pass {
    logits: Option<Tensor>,
    outputs: BTreeMap<String, Tensor>,
    producers: BTreeMap<String, String>,
    logs: Vec<LogLine>,
}

/// A forward (or one stopped at `stop_at`); `None` on ranks other than
/// global rank 0 of a launched job.
fn forward(
    fm: &mut FlexModel,
    t: &Tensor,
    stop_at: Option<&str>,
) -> Result<Option<Pass>, FlexError> {
    let r = match stop_at {
        None => fm.forward(t, &Groups::All).map(|o| Pass {
            logits: Some(o.logits),
            outputs: o.outputs,
            producers: o.producers,
            logs: o.logs,
        }),
        Some(p) => fm.forward_until(t, &Groups::All, p).map(|o| Pass {
            logits: None,
            outputs: o.outputs,
            producers: o.producers,
            logs: o.logs,
        }),
    };
    match r {
        Ok(p) => Ok(Some(p)),
        Err(FlexError::NotRoot { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl RunArgs {
    fn prompts(&self) -> Result<Vec<Prompt>> {
        if let Some(p) = &self.prompt {
            Ok(vec![Prompt::Text(p.clone())])
        } else if let Some(f) = &self.prompts {
            read_prompts(f)
        } else if let Some(ids) = &self.token_ids {
            Ok(vec![Prompt::Ids(ids.clone())])
        } else {
            Err(anyhow!("give --prompt, --prompts or --token-ids"))
        }
    }
}

/// The progress bar over many prompts (at global rank 0), and how to print
/// a line past it (a hidden bar, stdout not a terminal, swallows its
/// `println`: print ourselves then).
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(n: usize, show: bool) -> Progress {
        Progress((n > 1 && show).then(|| {
            let b = indicatif::ProgressBar::new(n as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} prompts {elapsed_precise}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        }))
    }
    fn say(&self, line: String) {
        match &self.0 {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => println!("{line}"),
        }
    }
    fn inc(&self) {
        if let Some(b) = &self.0 {
            b.inc(1);
        }
    }
}

/// What a run saves: tensors by key, and who emitted each.
#[derive(Default)]
struct Saved {
    tensors: BTreeMap<String, Tensor>,
    producers: BTreeMap<String, String>,
}

/// A batch of prompts that went through one forward.
struct Seen<'r> {
    /// Index of its first prompt.
    first: usize,
    /// Whether the run has several prompts (keys get an `i/` prefix).
    many: bool,
    rows: &'r [Vec<i64>],
}

impl Seen<'_> {
    /// Print each prompt's line and keep its rows of the logits and outputs.
    fn record(
        &self,
        a: &RunArgs,
        pass: &Pass,
        fm: &FlexModel,
        progress: &Progress,
        saved: &mut Saved,
    ) {
        let n = self.rows.len() as i64;
        for (j, ids) in self.rows.iter().enumerate() {
            let (i, jl) = (self.first + j, j as i64);
            progress.say(match &pass.logits {
                Some(l) => format!(
                    "prompt {i}: {} tokens; next token: {}",
                    ids.len(),
                    show(&top_k(&row(l, jl, n), a.top_k, fm.tokenizer()))
                ),
                None => format!(
                    "prompt {i}: {} tokens; stopped after {}",
                    ids.len(),
                    a.stop_at.as_deref().unwrap_or("")
                ),
            });
            progress.inc();
            let prefix = if self.many {
                format!("{i}/")
            } else {
                String::new()
            };
            if let Some(l) = &pass.logits {
                let key = format!("{prefix}logits");
                saved
                    .tensors
                    .insert(key, row(l, jl, n).to_device(Device::Cpu));
            }
            for (key, v) in &pass.outputs {
                saved
                    .tensors
                    .insert(format!("{prefix}{key}"), row(v, jl, n));
                if let Some(p) = pass.producers.get(key) {
                    saved.producers.insert(format!("{prefix}{key}"), p.clone());
                }
            }
        }
    }
}

pub fn run(a: &RunArgs) -> Result<()> {
    let prompts = a.prompts()?;
    let mut fm = super::load(&a.model, a.mesh)?;
    let root = fm.is_root();
    let vocab = super::vocab(&fm);
    super::register_hooks(&mut fm, &a.hooks, a.fuel, a.seed)?;
    // Data parallelism splits a batch: prompts go dp at a time.
    let chunk = a.mesh.dp.max(1);
    if !prompts.len().is_multiple_of(chunk) {
        bail!(
            "--dp {chunk} batches prompts {chunk} at a time: give a multiple of {chunk} prompts (got {})",
            prompts.len()
        );
    }
    let many = prompts.len() > 1;
    let progress = Progress::new(prompts.len(), root);
    let mut saved = Saved::default();
    for (c, group) in prompts.chunks(chunk).enumerate() {
        let first = c * chunk;
        let mut rows = Vec::with_capacity(group.len());
        for (j, p) in group.iter().enumerate() {
            let ids = token_ids(p, fm.tokenizer(), vocab)
                .with_context(|| format!("prompt {}", first + j))?;
            rows.push(ids);
        }
        if rows.iter().any(|r| r.len() != rows[0].len()) {
            bail!(
                "prompts {first}..{} are batched for --dp {chunk} and must have the same number of tokens",
                first + group.len()
            );
        }
        let t = Tensor::stack(
            &rows
                .iter()
                .map(|r| Tensor::from_slice(r))
                .collect::<Vec<_>>(),
            0,
        );
        let Some(pass) = forward(&mut fm, &t, a.stop_at.as_deref())
            .map_err(|e| anyhow!("prompt {first}: {e:#}"))?
        else {
            continue; // not global rank 0
        };
        for (hook, point, level, msg) in &pass.logs {
            progress.say(format!("[{hook} @ {point}] {level:?}: {msg}"));
        }
        let seen = Seen {
            first,
            many,
            rows: &rows,
        };
        seen.record(a, &pass, &fm, &progress, &mut saved);
    }
    if let Some(b) = progress.0 {
        b.finish_and_clear();
    }
    if let (Some(path), true) = (&a.save, root) {
        save(path, &saved.tensors, &saved.producers)?;
        println!(
            "saved {} tensors to {}",
            saved.tensors.len(),
            path.display()
        );
    }
    Ok(())
}
