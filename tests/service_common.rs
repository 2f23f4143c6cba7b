//! Helpers of the service tests: keys, a server process on a free
//! loopback port, jobs over HTTP (curl).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flexmodel_tests::artifacts_dir;

use crate::cli_common::{bin, models, ok, saved};
use crate::registry_common::curl;

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fm-service-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn key(state: &Path, tenant: &str) -> String {
    key_with(state, tenant, &[])
}

/// A key for `tenant` with `quotas` (`NAME=VALUE`).
pub fn key_with(state: &Path, tenant: &str, quotas: &[&str]) -> String {
    let mut cmd = Command::new(bin());
    cmd.args([
        "serve",
        "keys",
        "add",
        "--state",
        s(state),
        "--tenant",
        tenant,
    ]);
    for q in quotas {
        cmd.args(["--quota", q]);
    }
    let out = ok(&cmd.output().unwrap());
    let k = out.trim().to_string();
    assert!(k.starts_with("fm_"), "{k}");
    k
}

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    serve_under(&[], state, extra, env)
}

/// `serve` started by `wrapper` (e.g. `prlimit --fsize=N --`), if any.
pub fn serve_under(wrapper: &[&str], state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let model = models().join("gpt2-tiny");
    let mut cmd = match wrapper.split_first() {
        None => Command::new(bin()),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin());
            c
        }
    };
    cmd.args(["serve", "--state", s(state)]);
    // Any plugin, unless the test gives a trust policy.
    if !extra.contains(&"--trust") {
        cmd.arg("--allow-unsigned");
    }
    // The tiny GPT-2, unless the test names a model.
    if !extra.contains(&"--model") {
        cmd.args(["--model", s(&model)]);
    }
    // A free port, unless the test names one (a restart on the same port).
    if !extra.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("server said {line:?}"))
        .to_string();
    Server { child, url }
}

pub fn auth(k: &str) -> String {
    format!("Authorization: Bearer {k}")
}

pub fn submit(srv: &Server, k: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    // The body from a file: an uploaded component is over the limit of a
    // command line.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("fm-body-{}-{n}.json", std::process::id()));
    std::fs::write(&file, body.to_string()).unwrap();
    let (code, text) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth(k),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{}/v1/jobs", srv.url),
    ]);
    let _ = std::fs::remove_file(&file);
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

pub fn status(srv: &Server, k: &str, id: &str) -> (u16, serde_json::Value) {
    let (code, text) = curl(&["-H", &auth(k), &format!("{}/v1/jobs/{id}", srv.url)]);
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Poll until the job ends; its final status.
pub fn wait(srv: &Server, k: &str, id: &str) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let (code, v) = status(srv, k, id);
        assert_eq!(code, 200, "{v}");
        if !matches!(v["state"].as_str(), Some("queued" | "running")) {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "job {id} never ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn fetch(srv: &Server, k: &str, id: &str, to: &Path) -> u16 {
    let (code, _) = curl(&[
        "-H",
        &auth(k),
        "-o",
        s(to),
        &format!("{}/v1/jobs/{id}/result", srv.url),
    ]);
    code
}

pub fn kill9(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// A job's result, fetched and read.
pub fn result(
    srv: &Server,
    k: &str,
    id: &str,
    dir: &Path,
) -> std::collections::BTreeMap<String, tch::Tensor> {
    let f = dir.join(format!("{id}.safetensors"));
    assert_eq!(fetch(srv, k, id, &f), 200, "result of {id}");
    saved(&f)
}

/// A job's final status `end` says it failed for `reason`, with a
/// message that names `says`.
pub fn failed_with(end: &serde_json::Value, reason: &str, says: &str) {
    assert_eq!(end["state"], "failed", "{end}");
    assert_eq!(end["error"]["reason"], reason, "{end}");
    let message = end["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(says), "{end}");
}

/// `DELETE /v1/jobs/{id}`: the answer's code and body.
pub fn cancel(srv: &Server, k: &str, id: &str) -> (u16, String) {
    curl(&[
        "-X",
        "DELETE",
        "-H",
        &auth(k),
        &format!("{}/v1/jobs/{id}", srv.url),
    ])
}

/// Submit `body`; its id (the answer must be 202).
pub fn submit_ok(srv: &Server, k: &str, body: &serde_json::Value) -> String {
    let (code, v) = submit(srv, k, body);
    assert_eq!(code, 202, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// Wait until job `id` runs (or ended).
pub fn wait_running(srv: &Server, k: &str, id: &str) {
    let t = Instant::now();
    while status(srv, k, id).1["state"] == "queued" {
        assert!(t.elapsed() < Duration::from_secs(60), "{id} never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Largest difference between two tensors of the same shape.
pub fn max_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// `a` and `b` hold the same tensors, equal within 1e-4.
pub fn assert_same(
    a: &std::collections::BTreeMap<String, tch::Tensor>,
    b: &std::collections::BTreeMap<String, tch::Tensor>,
    what: &str,
) {
    let names = |m: &std::collections::BTreeMap<String, tch::Tensor>| -> Vec<String> {
        m.keys().cloned().collect()
    };
    assert_eq!(names(a), names(b), "{what}: the same tensors");
    for (name, t) in a {
        let d = max_diff(t, &b[name]);
        assert!(d <= 1e-4, "{what} {name}: {d}");
    }
}

/// A hook uploading `plugin` (a built example) with `config` at `at`.
pub fn upload(plugin: &str, at: &str, config: serde_json::Value) -> serde_json::Value {
    let bytes = std::fs::read(artifacts_dir().join(plugin)).unwrap();
    serde_json::json!({
        "component": STANDARD.encode(bytes),
        "at": at,
        "config": config,
    })
}
