//! `flexmodel remote run`: a job on a `flexmodel serve` server, with the
//! flags of `run` (and `--max-new-tokens` of `generate`): submitted, waited
//! for with a progress line, its result saved. One-line errors for 401,
//! 404, 429 and failed jobs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use flexmodel::api::Padding;
use flexmodel::package::lock::Lockfile;
use flexmodel::package::reference::{HookSpec, PluginSource};
use flexmodel::service::client::Client;

#[derive(Subcommand)]
pub enum RemoteCmd {
    /// Run a job on the server and save its result.
    Run(RemoteRunArgs),
}

#[derive(clap::Args)]
pub struct RemoteRunArgs {
    /// The server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub server: String,
    /// API key (or FLEXMODEL_KEY).
    #[arg(long)]
    pub key: Option<String>,
    /// A prompt (repeatable).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// JSONL file: each line a string, {"prompt": "..."} or {"token_ids": [..]}.
    #[arg(long, conflicts_with_all = ["prompt", "token_ids"])]
    pub prompts: Option<PathBuf>,
    /// Comma-separated token ids (one prompt).
    #[arg(long, value_delimiter = ',')]
    pub token_ids: Option<Vec<i64>>,
    /// namespace:name@VERSION@PATTERN[=CONFIG_JSON] (pinned to the
    /// lockfile's digest when it lists the reference) or
    /// PLUGIN.wasm@PATTERN[=CONFIG_JSON] (the component is uploaded, and
    /// must pass the server's trust policy), repeatable.
    #[arg(long = "hook")]
    pub hooks: Vec<String>,
    /// Where shorter prompts are padded, right or left (as `run
    /// --padding`: what the hooks see). The server chooses the batches: a
    /// job's prompts run together, with other tenants' jobs padded alike.
    #[arg(long, default_value = "right")]
    pub padding: Padding,
    /// Stop the forward after this hook point (as `run --stop-at`).
    #[arg(long, conflicts_with = "max_new_tokens")]
    pub stop_at: Option<String>,
    /// Seed of the hooks' random streams (as `run --seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Generation goes on past the model's EOS tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Run again this many times if the server is interrupted.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Trust this CA certificate (PEM) for an https server, e.g. a
    /// self-signed one.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Greedy generation of this many tokens.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long, default_value = flexmodel::package::lock::FILE)]
    pub lock: PathBuf,
    /// Where to save the result (safetensors).
    #[arg(long)]
    pub save: PathBuf,
    /// How many top next-token predictions to print per prompt (ids: the
    /// tokenizer is the server's).
    #[arg(long, default_value_t = 5)]
    pub top_k: i64,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

fn body(a: &RemoteRunArgs) -> Result<serde_json::Value> {
    let lock = Lockfile::read(&a.lock)?;
    let mut hooks = Vec::new();
    for spec in &a.hooks {
        let h = HookSpec::parse(spec)?;
        let config: serde_json::Value = serde_json::from_str(&h.config)
            .with_context(|| format!("--hook {spec}: config is not JSON"))?;
        let v = match &h.source {
            PluginSource::Package(r) => {
                let mut v =
                    serde_json::json!({"plugin": r.to_string(), "at": h.pattern, "config": config});
                if let Some(pin) = lock.as_ref().and_then(|l| l.find(r)) {
                    v["digest"] = pin.digest.clone().into();
                }
                v
            }
            PluginSource::File(p) => {
                use base64::Engine;
                let bytes =
                    std::fs::read(p).with_context(|| format!("--hook {spec}: {}", p.display()))?;
                serde_json::json!({
                    "component": base64::engine::general_purpose::STANDARD.encode(&bytes),
                    "digest": flexmodel::package::digest(&bytes),
                    "at": h.pattern,
                    "config": config,
                })
            }
        };
        hooks.push(v);
    }
    let mut b = match (&a.token_ids, a.prompt.is_empty(), &a.prompts) {
        (Some(t), true, None) => serde_json::json!({"token_ids": [t]}),
        (None, false, None) => serde_json::json!({"prompts": a.prompt}),
        (None, true, Some(file)) => {
            use super::prompts::Prompt;
            let all = super::prompts::read_prompts(file)?;
            let texts: Option<Vec<String>> = all
                .iter()
                .map(|p| match p {
                    Prompt::Text(t) => Some(t.clone()),
                    Prompt::Ids(_) => None,
                })
                .collect();
            let ids: Option<Vec<Vec<i64>>> = all
                .iter()
                .map(|p| match p {
                    Prompt::Ids(i) => Some(i.clone()),
                    Prompt::Text(_) => None,
                })
                .collect();
            match (texts, ids) {
                (Some(t), _) => serde_json::json!({"prompts": t}),
                (_, Some(i)) => serde_json::json!({"token_ids": i}),
                _ => bail!(
                    "{}: a job holds either texts or token ids, not both",
                    file.display()
                ),
            }
        }
        _ => bail!("give --token-ids, --prompt (one or more) or --prompts FILE"),
    };
    b["hooks"] = hooks.into();
    if a.padding == Padding::Left {
        b["padding"] = "left".into();
    }
    if a.retries > 0 {
        b["retries"] = a.retries.into();
    }
    if let Some(at) = &a.stop_at {
        b["stop_at"] = at.clone().into();
    }
    if let Some(seed) = a.seed {
        b["seed"] = seed.into();
    }
    if a.ignore_eos {
        b["ignore_eos"] = true.into();
    }
    if let Some(n) = a.max_new_tokens {
        b["max_new_tokens"] = n.into();
    }
    Ok(b)
}

pub fn remote(cmd: &RemoteCmd) -> Result<()> {
    let RemoteCmd::Run(a) = cmd;
    let ca = match &a.ca_cert {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("--ca-cert {}", p.display()))?),
        None => None,
    };
    let key = a
        .key
        .clone()
        .or_else(|| std::env::var("FLEXMODEL_KEY").ok())
        .ok_or_else(|| anyhow!("give --key or set FLEXMODEL_KEY"))?;
    let client = Client::new(&a.server, &key, ca.as_deref()).map_err(|e| match &a.ca_cert {
        Some(p) => anyhow!("--ca-cert {}: {e}", p.display()),
        None => e.into(),
    })?;
    let id = client.submit(&body(a)?)?;
    let mut shown = false;
    let waited = client.wait(&id, Duration::from_secs(a.timeout), |v| {
        let state = v["state"].as_str().unwrap_or("?");
        if matches!(state, "queued" | "running") {
            let pos = v["position"]
                .as_i64()
                .map(|p| format!(", {p} ahead"))
                .unwrap_or_default();
            eprint!("\rjob {id}: {state}{pos}   ");
            shown = true;
        } else if shown {
            eprintln!();
        }
    });
    waited?;
    let bytes = client.save_result(&id, &a.save)?;
    print_predictions(&a.save, a.top_k)?;
    println!("job {id} done: saved {} ({bytes} bytes)", a.save.display());
    Ok(())
}

/// Each prompt's next-token predictions from a saved result, as `run`
/// prints them.
fn print_predictions(path: &std::path::Path, k: i64) -> Result<()> {
    if k <= 0 {
        return Ok(());
    }
    let tensors: std::collections::BTreeMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(path)
            .with_context(|| format!("reading {}", path.display()))?
            .into_iter()
            .collect();
    let mut logits: Vec<(usize, &tch::Tensor)> = tensors
        .iter()
        .filter_map(|(name, t)| match name.as_str() {
            "logits" => Some((0, t)),
            n => n.strip_suffix("/logits")?.parse().ok().map(|i| (i, t)),
        })
        .collect();
    logits.sort_by_key(|(i, _)| *i);
    for (i, l) in logits {
        if l.dim() == 3 && l.size()[1] > 0 {
            println!(
                "prompt {i}: {} tokens; next token: {}",
                l.size()[1],
                super::show::show(&super::show::top_k(l, k, None))
            );
        }
    }
    Ok(())
}
