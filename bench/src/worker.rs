//! A persistent PyTorch worker (`tests/reference/bench_worker.py`) that runs
//! one configuration per request, so that the benchmarks alternate their
//! runs with PyTorch's in one session.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, bail};

/// glibc's tunables with the allocator settings of `flexmodel::tune_allocator`.
pub const TUNABLES: &str = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824:glibc.malloc.arena_max=1";

/// The worker script: `FLEXMODEL_BENCH_WORKER`, or the repository's (the
/// GPU bundle ships its own copy).
fn script() -> PathBuf {
    std::env::var_os("FLEXMODEL_BENCH_WORKER").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/bench_worker.py"),
        PathBuf::from,
    )
}

/// The worker's command line: `python bench_worker.py MODEL_DIR BATCH SEQ
/// THREADS`, with our allocator settings if `tunables`.
pub fn command(
    python: &Path,
    model_dir: &Path,
    batch: i64,
    seq: i64,
    threads: i32,
    tunables: bool,
) -> Command {
    let mut cmd = Command::new(python);
    if tunables {
        cmd.env("GLIBC_TUNABLES", TUNABLES);
    } else {
        cmd.env_remove("GLIBC_TUNABLES");
    }
    cmd.arg(script()).args([
        model_dir.to_str().unwrap_or("."),
        &batch.to_string(),
        &seq.to_string(),
        &threads.to_string(),
    ]);
    cmd
}

/// A persistent PyTorch worker.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    pub fn start(mut cmd: Command) -> Result<Worker> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the PyTorch worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        let mut w = Worker {
            child,
            stdin,
            stdout,
        };
        w.reply().context("the PyTorch worker did not start")?;
        Ok(w)
    }

    fn reply(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("the PyTorch worker exited");
            }
            if line.starts_with('{') {
                return Ok(serde_json::from_str(&line)?);
            }
        }
    }

    /// The worker's answer to one request line.
    pub fn ask(&mut self, request: &str) -> Result<serde_json::Value> {
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()?;
        self.reply()
    }

    /// Seconds of one run of `config`, or why it cannot run.
    pub fn run(&mut self, config: &str) -> Result<std::result::Result<f64, String>> {
        let v = self.ask(config)?;
        Ok(match v.get("secs").and_then(|s| s.as_f64()) {
            Some(s) => Ok(s),
            None => Err(v
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("?")
                .to_string()),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}
