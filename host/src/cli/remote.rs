//! `flexmodel remote run`: a job on a `flexmodel serve` server, with the
//! flags of `run` (and `--max-new-tokens` of `generate`): submitted, waited
//! for with a progress line, its result saved. One-line errors for 401,
//! 404, 429 and failed jobs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use flexmodel::package::lock::Lockfile;
use flexmodel::package::reference::{HookSpec, PluginSource};

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

/// The server's one-line answer for a refused request.
fn refused(status: reqwest::StatusCode, text: &str) -> anyhow::Error {
    let msg = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    anyhow!("server answered {}: {msg}", status.as_u16())
}

pub fn remote(cmd: &RemoteCmd) -> Result<()> {
    let RemoteCmd::Run(a) = cmd;
    let base = a.server.trim_end_matches('/');
    let mut builder = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60));
    if let Some(ca) = &a.ca_cert {
        let pem = std::fs::read(ca).with_context(|| format!("--ca-cert {}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("--ca-cert {}: not a PEM certificate", ca.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build()?;
    let key = a
        .key
        .clone()
        .or_else(|| std::env::var("FLEXMODEL_KEY").ok())
        .ok_or_else(|| anyhow!("give --key or set FLEXMODEL_KEY"))?;
    let auth = format!("Bearer {key}");
    let r = client
        .post(format!("{base}/v1/jobs"))
        .header("Authorization", &auth)
        .json(&body(a)?)
        .send()
        .with_context(|| format!("connecting to {base}"))?;
    let status = r.status();
    let text = r.text()?;
    if status.as_u16() != 202 {
        return Err(refused(status, &text));
    }
    let id = serde_json::from_str::<serde_json::Value>(&text)?["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the server gave no job id"))?;
    let start = std::time::Instant::now();
    let mut shown = false;
    loop {
        let r = client
            .get(format!("{base}/v1/jobs/{id}"))
            .header("Authorization", &auth)
            .send()?;
        let status = r.status();
        let text = r.text()?;
        if !status.is_success() {
            return Err(refused(status, &text));
        }
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let state = v["state"].as_str();
        if matches!(state, Some("done" | "failed" | "cancelled")) && shown {
            eprintln!();
        }
        match state {
            Some("done") => break,
            Some("failed") => bail!(
                "job {id} failed ({}): {}",
                v["error"]["reason"].as_str().unwrap_or("?"),
                v["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            ),
            Some("cancelled") => bail!("job {id} was cancelled"),
            Some(s) => {
                let pos = v["position"]
                    .as_i64()
                    .map(|p| format!(", {p} ahead"))
                    .unwrap_or_default();
                eprint!("\rjob {id}: {s}{pos}   ");
                shown = true;
            }
            None => bail!("unexpected status: {text}"),
        }
        if start.elapsed() > Duration::from_secs(a.timeout) {
            bail!("job {id} did not end within {} s", a.timeout);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = client
        .get(format!("{base}/v1/jobs/{id}/result"))
        .header("Authorization", &auth)
        .send()?;
    let status = r.status();
    if !status.is_success() {
        let text = r.text()?;
        return Err(refused(status, &text));
    }
    let bytes = r.bytes()?;
    std::fs::write(&a.save, &bytes).with_context(|| format!("writing {}", a.save.display()))?;
    print_predictions(&a.save, a.top_k)?;
    println!(
        "job {id} done: saved {} ({} bytes)",
        a.save.display(),
        bytes.len()
    );
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
