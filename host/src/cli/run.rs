//! `flexmodel run`: forwards with hooks over prompts; next-token
//! predictions printed, outputs saved.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use flexmodel::api::rows::{Rows, seq_dims};
use flexmodel::api::{Batch, FlexError, FlexModel, Groups, LogLine, Padding, batch_bounds};
use tch::{Device, Tensor};

use super::prompts::{Prompt, collect, token_ids};
use super::show::{save, show, top_k};
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
    /// Prompts per forward: prompts of any lengths run as one padded batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Where a shorter prompt's padding goes (results are the same).
    #[arg(long, default_value = "right")]
    pub padding: Padding,
    /// PLUGIN.wasm@PATTERN[=CONFIG_JSON] or
    /// namespace:name@VERSION@PATTERN[=CONFIG_JSON], repeatable.
    #[arg(long = "hook")]
    pub hooks: Vec<String>,
    #[command(flatten)]
    pub plugins: super::PluginArgs,
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
    t: &Batch,
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
        let texts: Vec<String> = self.prompt.iter().cloned().collect();
        collect(&texts, self.prompts.as_deref(), self.token_ids.as_ref())
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
    ids: &'r [Vec<i64>],
    rows: Rows<'r>,
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
        for (j, ids) in self.ids.iter().enumerate() {
            let i = self.first + j;
            let logits = pass.logits.as_ref().map(|l| self.rows.logits(l, j));
            progress.say(match &logits {
                Some(l) => format!(
                    "prompt {i}: {} tokens; next token: {}",
                    ids.len(),
                    show(&top_k(l, a.top_k, fm.tokenizer()))
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
            if let Some(l) = logits {
                saved
                    .tensors
                    .insert(format!("{prefix}logits"), l.to_device(Device::Cpu));
            }
            for (key, v) in &pass.outputs {
                saved
                    .tensors
                    .insert(format!("{prefix}{key}"), self.rows.part(key, v, j));
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
    let prov = super::register_hooks(&mut fm, &a.hooks, a.fuel, a.seed, &a.plugins)?;
    let dims = seq_dims(&fm);
    let many = prompts.len() > 1;
    let progress = Progress::new(prompts.len(), root);
    let mut saved = Saved::default();
    for (first, n) in batch_bounds(prompts.len(), a.batch_size, a.mesh.dp.max(1))? {
        let mut rows = Vec::with_capacity(n);
        for (j, p) in prompts[first..first + n].iter().enumerate() {
            let ids = token_ids(p, fm.tokenizer(), vocab)
                .with_context(|| format!("prompt {}", first + j))?;
            rows.push(ids);
        }
        let batch = Batch::pad(&rows, a.padding, 0)?;
        let Some(pass) = forward(&mut fm, &batch, a.stop_at.as_deref())
            .map_err(|e| anyhow!("prompts {first}..{}: {e:#}", first + n))?
        else {
            continue; // not global rank 0
        };
        for (hook, point, level, msg) in &pass.logs {
            progress.say(format!("[{hook} @ {point}] {level:?}: {msg}"));
        }
        let seen = Seen {
            first,
            many,
            ids: &rows,
            rows: Rows {
                lens: rows.iter().map(|r| r.len() as i64).collect(),
                seq_len: batch.ids.size()[1],
                padding: a.padding,
                padded: batch.attention_mask.is_some(),
                dims: &dims,
            },
        };
        seen.record(a, &pass, &fm, &progress, &mut saved);
    }
    if let Some(b) = progress.0 {
        b.finish_and_clear();
    }
    if let (Some(path), true) = (&a.save, root) {
        save(path, &saved.tensors, &saved.producers, &prov.metadata())?;
        println!(
            "saved {} tensors to {}",
            saved.tensors.len(),
            path.display()
        );
    }
    Ok(())
}
