//! A `flexmodel serve` process and a client for it (reqwest), for
//! `service-bench`: start a server on a free loopback port, make tenants'
//! keys, submit a job, wait for its end on its event stream, fetch the
//! result.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// The `flexmodel` binary next to this benchmark's.
pub fn flexmodel_bin() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me
        .parent()
        .ok_or_else(|| anyhow!("no folder for {}", me.display()))?
        .join("flexmodel");
    if !bin.exists() {
        bail!(
            "{} is missing: cargo build --release -p flexmodel",
            bin.display()
        );
    }
    Ok(bin)
}

/// A server process, killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `flexmodel serve --model MODEL --state STATE EXTRA...` on a free port.
    pub fn start(model: &Path, state: &Path, extra: &[&str]) -> Result<Server> {
        let mut child = Command::new(flexmodel_bin()?)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--model")
            .arg(model)
            .arg("--state")
            .arg(state)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting flexmodel serve")?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("the server said {line:?}"))?
            .to_string();
        Ok(Server { child, url })
    }
}

/// A new key for `tenant` in `state`.
pub fn add_key(state: &Path, tenant: &str) -> Result<String> {
    let o = Command::new(flexmodel_bin()?)
        .args(["serve", "keys", "add", "--tenant", tenant, "--state"])
        .arg(state)
        .output()?;
    if !o.status.success() {
        bail!("keys add: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

pub struct Client {
    http: reqwest::blocking::Client,
    base: String,
}

/// A job's final status and its result's bytes.
pub struct Ended {
    pub status: serde_json::Value,
    pub result: Vec<u8>,
}

impl Client {
    pub fn new(base: &str) -> Result<Client> {
        Ok(Client {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()?,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// Submit `body` as `key`'s job, wait for it to end (its event
    /// stream), fetch the result.
    pub fn run(&self, key: &str, body: &serde_json::Value) -> Result<Ended> {
        let auth = format!("Bearer {key}");
        let r = self
            .http
            .post(format!("{}/v1/jobs", self.base))
            .header("Authorization", &auth)
            .json(body)
            .send()?;
        let code = r.status();
        let text = r.text()?;
        if code.as_u16() != 202 {
            bail!("submit: {code}: {text}");
        }
        let id = serde_json::from_str::<serde_json::Value>(&text)?["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no id in {text}"))?;
        let events = self
            .http
            .get(format!("{}/v1/jobs/{id}/events", self.base))
            .header("Authorization", &auth)
            .send()?;
        let mut last = serde_json::Value::Null;
        for line in BufReader::new(events).lines() {
            let line = line?;
            if let Some(d) = line.strip_prefix("data: ") {
                last = serde_json::from_str(d)?;
                if !matches!(last["state"].as_str(), Some("queued" | "running")) {
                    break;
                }
            }
        }
        if last["state"] != "done" {
            bail!("job {id}: {last}");
        }
        let result = self
            .http
            .get(format!("{}/v1/jobs/{id}/result", self.base))
            .header("Authorization", &auth)
            .send()?
            .bytes()?
            .to_vec();
        Ok(Ended {
            status: last,
            result,
        })
    }
}
