//! `flexmodel generate`: text generation with hooks firing at every step;
//! tokens printed as they come.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use flexmodel::api::{FlexError, GenerateOptions, Groups, Sampling};
use tch::Tensor;

use super::prompts::{Prompt, token_ids};
use super::show::save;
use super::{MeshArgs, ModelArgs};

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (needs tokenizer.json in the model folder).
    #[arg(long, conflicts_with = "token_ids")]
    pub prompt: Option<String>,
    /// Comma-separated token ids of the prompt.
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
    /// Stop at this token id.
    #[arg(long)]
    pub eos: Option<i64>,
    /// PLUGIN.wasm@PATTERN[=CONFIG_JSON], repeatable.
    #[arg(long = "hook")]
    pub hooks: Vec<String>,
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
    fn options(&self) -> GenerateOptions {
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
            eos: self.eos,
        }
    }
}

pub fn generate(a: &GenerateArgs) -> Result<()> {
    let prompt = match (&a.prompt, &a.token_ids) {
        (Some(p), _) => Prompt::Text(p.clone()),
        (None, Some(ids)) => Prompt::Ids(ids.clone()),
        (None, None) => return Err(anyhow!("give --prompt or --token-ids")),
    };
    let opts = a.options();
    let mut fm = super::load(&a.model, a.mesh)?;
    let root = fm.is_root();
    let vocab = super::vocab(&fm);
    let seed = match opts.sampling {
        Sampling::Sample { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    super::register_hooks(&mut fm, &a.hooks, a.fuel, seed)?;
    let tok = fm.tokenizer().cloned();
    let ids = token_ids(&prompt, tok.as_ref(), vocab)?;
    let t = Tensor::from_slice(&ids).unsqueeze(0);
    // Stream: print the text each new token adds (decoding the whole tail
    // keeps multi-byte characters and spacing right).
    let mut shown = String::new();
    let mut new: Vec<i64> = Vec::new();
    let mut out = std::io::stdout();
    if root {
        match &tok {
            Some(tk) => print!("{}", tk.decode(&ids)),
            None => print!("{ids:?} ->"),
        }
    }
    let result = fm.generate(&t, &Groups::All, &opts, |_, next| {
        new.push(next[0]);
        let piece = match &tok {
            Some(tk) => {
                let text = tk.decode(&new);
                let piece = text
                    .strip_prefix(shown.as_str())
                    .unwrap_or(&text)
                    .to_string();
                shown = text;
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
    println!();
    println!(
        "({} new tokens: {:?})",
        g.new_tokens[0].len(),
        g.new_tokens[0]
    );
    for (hook, point, level, msg) in &g.logs {
        eprintln!("[{hook} @ {point}] {level:?}: {msg}");
    }
    if let Some(path) = &a.save {
        let mut saved = g.outputs;
        saved.insert("tokens".into(), g.tokens);
        save(path, &saved, &g.producers)?;
        println!("saved {} tensors to {}", saved.len(), path.display());
    }
    Ok(())
}
