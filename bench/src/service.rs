//! A `flexmodel serve` process and jobs run on it with the library's client, for
//! `service-bench`: start a server on a free loopback port, make tenants'
//! keys, submit a job, wait for its end on its event stream, fetch the
//! result.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use flexmodel::service::client::Client;

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
            .args(["serve", "--listen", "127.0.0.1:0", "--allow-unsigned"])
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

/// A job's final status and its result's size.
pub struct Ended {
    pub status: serde_json::Value,
    pub bytes: u64,
}

/// Submit `body` as `key`'s job with the library's client (what `flexmodel
/// remote run` does), wait for it to end on its event stream, save the
/// result to `save`; `c` is one tenant's client (its connections kept).
pub fn run(c: &Client, body: &serde_json::Value, save: &Path) -> Result<Ended> {
    let id = c.submit(body)?;
    let status = c.wait(&id, Duration::from_secs(600), |_| {})?;
    let bytes = c.save_result(&id, save)?;
    Ok(Ended { status, bytes })
}
