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
    /// Comma-separated token ids (one prompt).
    #[arg(long, value_delimiter = ',')]
    pub token_ids: Option<Vec<i64>>,
    /// namespace:name@VERSION@PATTERN[=CONFIG_JSON], repeatable (pinned to
    /// the lockfile's digest when it lists the reference).
    #[arg(long = "hook")]
    pub hooks: Vec<String>,
    /// Greedy generation of this many tokens.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long, default_value = flexmodel::package::lock::FILE)]
    pub lock: PathBuf,
    /// Where to save the result (safetensors).
    #[arg(long)]
    pub save: PathBuf,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

fn body(a: &RemoteRunArgs) -> Result<serde_json::Value> {
    let lock = Lockfile::read(&a.lock)?;
    let mut hooks = Vec::new();
    for spec in &a.hooks {
        let h = HookSpec::parse(spec)?;
        let PluginSource::Package(r) = &h.source else {
            bail!(
                "--hook {spec}: a server runs published plugins only (namespace:name@VERSION@PATTERN)"
            );
        };
        let config: serde_json::Value = serde_json::from_str(&h.config)
            .with_context(|| format!("--hook {spec}: config is not JSON"))?;
        let mut v = serde_json::json!({"plugin": r.to_string(), "at": h.pattern, "config": config});
        if let Some(pin) = lock.as_ref().and_then(|l| l.find(r)) {
            v["digest"] = pin.digest.clone().into();
        }
        hooks.push(v);
    }
    let mut b = match (&a.token_ids, a.prompt.is_empty()) {
        (Some(t), true) => serde_json::json!({"token_ids": [t]}),
        (None, false) => serde_json::json!({"prompts": a.prompt}),
        _ => bail!("give --token-ids or --prompt (one or more)"),
    };
    b["hooks"] = hooks.into();
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
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
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
        match v["state"].as_str() {
            Some("done") => break,
            Some("failed") => bail!(
                "job {id} failed ({}): {}",
                v["error"]["reason"].as_str().unwrap_or("?"),
                v["error"]["message"].as_str().unwrap_or("")
            ),
            Some("cancelled") => bail!("job {id} was cancelled"),
            Some(s) => {
                let pos = v["position"]
                    .as_i64()
                    .map(|p| format!(", {p} ahead"))
                    .unwrap_or_default();
                eprint!("\rjob {id}: {s}{pos}   ");
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
    eprintln!();
    println!(
        "job {id} done: saved {} ({} bytes)",
        a.save.display(),
        bytes.len()
    );
    Ok(())
}
