//! `flexmodel generate`: text generation with hooks firing at every step;
//! tokens printed as they come.

use std::path::PathBuf;

use anyhow::{Context, Result};
use flexmodel::api::{Batch, FlexError, GenerateOptions, Groups, Padding, Sampling};
use flexmodel::models::Tokenizer;

use super::prompts::{collect, token_ids};
use super::show::save;
use super::{MeshArgs, ModelArgs};

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A prompt (needs tokenizer.json in the model folder); repeatable:
    /// several prompts are generated as one batch, padded on the left.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// JSONL file of prompts: each line a string, {"prompt": "..."} or
    /// {"token_ids": [..]}.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Comma-separated token ids of a prompt.
    #[arg(long, value_delimiter = ',')]
    pub token_ids: Option<Vec<i64>>,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sample with this temperature (default: greedy).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sample among the K most likely tokens (with --temperature).
    #[arg(long)]
    pub top_k: Option<i64>,
    /// Seed of the sampler and of the hooks' random streams.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// End-of-sequence token id (repeatable); default: the model's
    /// (`generation_config.json`, else `config.json`), as transformers.
    #[arg(long)]
    pub eos: Vec<i64>,
    /// Generate `--max-new-tokens` whatever tokens come.
    #[arg(long, conflicts_with = "eos")]
    pub ignore_eos: bool,
    /// PLUGIN.wasm@PATTERN[=CONFIG_JSON] or
    /// namespace:name@VERSION@PATTERN[=CONFIG_JSON], repeatable.
    #[arg(long = "hook")]
    pub hooks: Vec<String>,
    #[command(flatten)]
    pub plugins: super::PluginArgs,
    /// Save `tokens` and the hooks' tensors (`step{k}/<point>`).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Fuel per hook call.
    #[arg(long, default_value_t = 4_000_000_000)]
    pub fuel: u64,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

impl GenerateArgs {
    fn options(&self, model_eos: &[i64]) -> GenerateOptions {
        let sampling = match self.temperature {
            Some(temperature) => Sampling::Sample {
                temperature,
                top_k: self.top_k,
                seed: self.seed,
            },
            None => Sampling::Greedy,
        };
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            sampling,
            eos: match (self.ignore_eos, self.eos.is_empty()) {
                (true, _) => Vec::new(),
                (false, true) => model_eos.to_vec(),
                (false, false) => self.eos.clone(),
            },
            ..GenerateOptions::default()
        }
    }
}

pub fn generate(a: &GenerateArgs) -> Result<()> {
    let prompts = collect(&a.prompt, a.prompts.as_deref(), a.token_ids.as_ref())?;
    let mut fm = super::load(&a.model, a.mesh)?;
    let opts = a.options(fm.eos_tokens());
    let root = fm.is_root();
    let vocab = super::vocab(&fm);
    let seed = match opts.sampling {
        Sampling::Sample { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    let prov = super::register_hooks(&mut fm, &a.hooks, a.fuel, seed, &a.plugins)?;
    let tok = fm.tokenizer().cloned();
    let rows = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| token_ids(p, tok.as_ref(), vocab).with_context(|| format!("prompt {i}")))
        .collect::<Result<Vec<_>>>()?;
    let batch = Batch::pad(&rows, Padding::Left, 0)?;
    let one = rows.len() == 1;
    // One prompt: stream the text each new token adds (decoding the whole
    // tail keeps multi-byte characters and spacing right).
    let mut shown = String::new();
    let mut new: Vec<i64> = Vec::new();
    let mut out = std::io::stdout();
    if root && one {
        print!("{}", text(tok.as_ref(), &rows[0]));
    }
    let result = fm.generate(&batch, &Groups::All, &opts, |_, next| {
        if !one || new.last().is_some_and(|l| opts.eos.contains(l)) {
            return;
        }
        new.push(next[0]);
        let piece = match &tok {
            Some(tk) => {
                let t = tk.decode(&new);
                let piece = t.strip_prefix(shown.as_str()).unwrap_or(&t).to_string();
                shown = t;
                piece
            }
            None => format!(" {}", next[0]),
        };
        print!("{piece}");
        let _ = std::io::Write::flush(&mut out);
    });
    let g = match result {
        Ok(g) => g,
        Err(FlexError::NotRoot { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for (i, (p, n)) in rows.iter().zip(&g.new_tokens).enumerate() {
        if one {
            println!();
        } else {
            println!(
                "prompt {i}: {}{}",
                text(tok.as_ref(), p),
                continuation(tok.as_ref(), n)
            );
        }
        let end = if n.last().is_some_and(|l| opts.eos.contains(l)) {
            ", ended by EOS"
        } else {
            ""
        };
        println!("({} new tokens{end}: {n:?})", n.len());
    }
    for (hook, point, level, msg) in &g.logs {
        eprintln!("[{hook} @ {point}] {level:?}: {msg}");
    }
    if let Some(path) = &a.save {
        let mut saved = g.outputs;
        saved.insert("tokens".into(), g.tokens);
        save(path, &saved, &g.producers, &prov.metadata())?;
        println!("saved {} tensors to {}", saved.len(), path.display());
    }
    Ok(())
}

fn text(tok: Option<&Tokenizer>, ids: &[i64]) -> String {
    match tok {
        Some(t) => t.decode(ids),
        None => format!("{ids:?} ->"),
    }
}

fn continuation(tok: Option<&Tokenizer>, ids: &[i64]) -> String {
    match tok {
        Some(t) => t.decode(ids),
        None => ids.iter().map(|i| format!(" {i}")).collect(),
    }
}
