//! `flexmodel serve` as real processes: keys made with `serve keys add`, the
//! server started on a free loopback port with a tiny model, jobs submitted
//! and fetched over HTTP (curl): auth (401), tenant isolation (404),
//! revocation on the next request, results equal to `flexmodel run`, a
//! shared plugin pulled from a real registry under the server's trust
//! policy, a quota (429), and `kill -9` with jobs queued, then a restart:
//! every accepted job ends.

mod cli_common;
mod registry_common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cli_common::{bin, models, ok, saved};
use flexmodel_tests::artifacts_dir;
use registry_common::{curl, registry};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fm-service-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn key(state: &Path, tenant: &str) -> String {
    let out = ok(&Command::new(bin())
        .args([
            "serve",
            "keys",
            "add",
            "--state",
            s(state),
            "--tenant",
            tenant,
        ])
        .output()
        .unwrap());
    let k = out.trim().to_string();
    assert!(k.starts_with("fm_"), "{k}");
    k
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let model = models().join("gpt2-tiny");
    let mut cmd = Command::new(bin());
    cmd.args([
        "serve",
        "--model",
        s(&model),
        "--listen",
        "127.0.0.1:0",
        "--state",
        s(state),
    ])
    .args(extra)
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

fn auth(k: &str) -> String {
    format!("Authorization: Bearer {k}")
}

fn submit(srv: &Server, k: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (code, text) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth(k),
        "-H",
        "Content-Type: application/json",
        "--data",
        &body.to_string(),
        &format!("{}/v1/jobs", srv.url),
    ]);
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn status(srv: &Server, k: &str, id: &str) -> (u16, serde_json::Value) {
    let (code, text) = curl(&["-H", &auth(k), &format!("{}/v1/jobs/{id}", srv.url)]);
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Poll until the job ends; its final status.
fn wait(srv: &Server, k: &str, id: &str) -> serde_json::Value {
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

fn fetch(srv: &Server, k: &str, id: &str, to: &Path) -> u16 {
    let (code, _) = curl(&[
        "-H",
        &auth(k),
        "-o",
        s(to),
        &format!("{}/v1/jobs/{id}/result", srv.url),
    ]);
    code
}

#[test]
fn tenants_keys_jobs_and_results() {
    let dir = tmp("basic");
    let state = dir.join("state");
    let (ka, kb) = (key(&state, "alice"), key(&state, "bob"));
    let listed = ok(&Command::new(bin())
        .args(["serve", "keys", "list", "--state", s(&state)])
        .output()
        .unwrap());
    assert!(listed.contains("alice") && listed.contains("bob"));
    assert!(
        !listed.contains(ka.rsplit('_').next().unwrap()),
        "secrets are never listed"
    );
    let db = std::fs::read(state.join("state.db")).unwrap();
    let secret = ka.rsplit('_').next().unwrap();
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "only a hash is stored"
    );

    let srv = serve(&state, &[], &[]);
    let (code, _) = curl(&[&format!("{}/healthz", srv.url)]);
    assert_eq!(code, 200);
    // No key, a wrong key: 401.
    let (code, _) = curl(&[&format!("{}/v1/model", srv.url)]);
    assert_eq!(code, 401);
    // The same key with its last hex digit changed.
    let last = if ka.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &ka[..ka.len() - 1]);
    let (code, _) = curl(&["-H", &auth(&forged), &format!("{}/v1/model", srv.url)]);
    assert_eq!(code, 401);
    let (code, model) = curl(&["-H", &auth(&ka), &format!("{}/v1/model", srv.url)]);
    assert_eq!(code, 200);
    let model: serde_json::Value = serde_json::from_str(&model).unwrap();
    assert!(model["hook_points"].as_array().unwrap().len() > 10);

    // A bad job: 400, nothing queued.
    let (code, v) = submit(&srv, &ka, &serde_json::json!({"token_ids": []}));
    assert_eq!(code, 400, "{v}");
    // A job: 202, then done; the result equals `flexmodel run`.
    let (code, v) = submit(
        &srv,
        &ka,
        &serde_json::json!({"token_ids": [[5, 9, 2, 77], [1, 2]]}),
    );
    assert_eq!(code, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let end = wait(&srv, &ka, &id);
    assert_eq!(end["state"], "done", "{end}");
    let got = dir.join("got.safetensors");
    assert_eq!(fetch(&srv, &ka, &id, &got), 200);
    let got = saved(&got);
    let model_dir = models().join("gpt2-tiny");
    for (i, ids) in ["5,9,2,77", "1,2"].iter().enumerate() {
        let want = dir.join(format!("want{i}.safetensors"));
        ok(&Command::new(bin())
            .args([
                "run",
                "--model",
                s(&model_dir),
                "--token-ids",
                ids,
                "--save",
                s(&want),
            ])
            .output()
            .unwrap());
        let want = saved(&want);
        assert!(
            got[&format!("{i}/logits")].equal(&want["logits"]),
            "prompt {i}"
        );
    }
    // Another tenant: 404 for the status, the result and a cancel, never data.
    assert_eq!(status(&srv, &kb, &id).0, 404);
    assert_eq!(fetch(&srv, &kb, &id, &dir.join("x")), 404);
    let (code, _) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &auth(&kb),
        &format!("{}/v1/jobs/{id}", srv.url),
    ]);
    assert_eq!(code, 404);
    assert_eq!(status(&srv, &kb, "nonexistent").0, 404);
    // The client: `flexmodel remote run`, same result; one-line errors.
    let remote = dir.join("remote.safetensors");
    ok(&Command::new(bin())
        .args([
            "remote",
            "run",
            "--server",
            &srv.url,
            "--key",
            &ka,
            "--token-ids",
            "5,9,2,77",
            "--save",
            s(&remote),
        ])
        .output()
        .unwrap());
    let want = saved(&dir.join("want0.safetensors"));
    assert!(saved(&remote)["logits"].equal(&want["logits"]));
    let o = Command::new(bin())
        .args([
            "remote",
            "run",
            "--server",
            &srv.url,
            "--key",
            &forged,
            "--token-ids",
            "1",
            "--save",
            s(&remote),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("401") && e.trim().lines().count() == 1, "{e}");
    // Revocation takes effect on the next request.
    ok(&Command::new(bin())
        .args(["serve", "keys", "revoke", "--state", s(&state), &ka])
        .output()
        .unwrap());
    assert_eq!(status(&srv, &ka, &id).0, 401);
    assert_eq!(status(&srv, &kb, &id).0, 404);
}

#[test]
fn a_shared_plugin_runs_under_the_servers_trust_policy() {
    let dir = tmp("plugins");
    let reg = registry(&dir);
    let cache = dir.join("cache");
    let envs = [
        ("FLEXMODEL_PLUGIN_CACHE", s(&cache)),
        ("FLEXMODEL_REGISTRY_USER", "acme"),
        ("FLEXMODEL_REGISTRY_PASSWORD", "s3cret"),
    ];
    let run = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.args(args);
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let plugin = dir.join("scale.wasm");
    std::fs::copy(artifacts_dir().join("scale.wasm"), &plugin).unwrap();
    ok(&run(&["plugin", "keygen", "-o", s(&dir.join("flexmodel"))]));
    ok(&run(&[
        "plugin",
        "sign",
        s(&plugin),
        "--key",
        s(&dir.join("flexmodel")),
    ]));
    let out = ok(&run(&[
        "plugin",
        "publish",
        s(&plugin),
        &format!("{}/flexmodel/scale:0.1.0", reg.addr),
    ]));
    assert!(out.contains("published"));
    let digest = flexmodel::package::digest(&std::fs::read(&plugin).unwrap());
    std::fs::write(
        dir.join("trust.toml"),
        "default = \"require-signed\"\n[namespace.flexmodel]\nkeys = [\"flexmodel.pub\"]\n",
    )
    .unwrap();
    let state = dir.join("state");
    let k = key(&state, "alice");
    let trust = dir.join("trust.toml");
    let srv = serve(
        &state,
        &["--registry", &reg.addr, "--trust", s(&trust)],
        &envs,
    );
    let hook = serde_json::json!({"plugin": "flexmodel:scale@0.1.0", "digest": digest,
                                  "at": "transformer.h.0", "config": {"factor": 3}});
    let (code, v) = submit(
        &srv,
        &k,
        &serde_json::json!({"token_ids": [[5, 9, 2, 77]], "hooks": [hook]}),
    );
    assert_eq!(code, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(wait(&srv, &k, &id)["state"], "done");
    let got = dir.join("got.safetensors");
    assert_eq!(fetch(&srv, &k, &id, &got), 200);
    let want = dir.join("want.safetensors");
    let model_dir = models().join("gpt2-tiny");
    ok(&run(&[
        "run",
        "--model",
        s(&model_dir),
        "--token-ids",
        "5,9,2,77",
        "--save",
        s(&want),
        "--hook",
        &format!("{}@transformer.h.0={{\"factor\":3}}", s(&plugin)),
    ]));
    assert!(saved(&got)["logits"].equal(&saved(&want)["logits"]));
    // A digest that does not match, a bad config, an unsigned plugin's
    // namespace: each fails its own job with a typed reason.
    let wrong = serde_json::json!({"plugin": "flexmodel:scale@0.1.0", "digest": format!("sha256:{}", "0".repeat(64)),
                                   "at": "transformer.h.0", "config": {"factor": 3}});
    let (_, v) = submit(
        &srv,
        &k,
        &serde_json::json!({"token_ids": [[1]], "hooks": [wrong]}),
    );
    let end = wait(&srv, &k, v["id"].as_str().unwrap());
    assert_eq!(end["state"], "failed");
    assert_eq!(end["error"]["reason"], "untrusted", "{end}");
    let bad = serde_json::json!({"plugin": "flexmodel:scale@0.1.0", "at": "transformer.h.0", "config": {"factor": "x"}});
    let (_, v) = submit(
        &srv,
        &k,
        &serde_json::json!({"token_ids": [[1]], "hooks": [bad]}),
    );
    let end = wait(&srv, &k, v["id"].as_str().unwrap());
    assert_eq!(end["error"]["reason"], "plugin", "{end}");
    // The server went on serving.
    let (_, v) = submit(&srv, &k, &serde_json::json!({"token_ids": [[1, 2]]}));
    assert_eq!(wait(&srv, &k, v["id"].as_str().unwrap())["state"], "done");
}

#[test]
fn quotas_and_kill_dash_nine_lose_nothing() {
    let dir = tmp("kill");
    let state = dir.join("state");
    let k = key(&state, "alice");
    let srv = serve(&state, &["--max-active-jobs", "3"], &[]);
    // Long jobs (many rows each), submitted at once from 8 clients.
    let rows: Vec<Vec<i64>> = (0..256)
        .map(|i| (0..32).map(|j| (i * 7 + j) % 90).collect())
        .collect();
    let body = serde_json::json!({"token_ids": rows});
    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|_| sc.spawn(|| submit(&srv, &k, &body)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ids = Vec::new();
    let mut limited = false;
    for (code, v) in answers {
        match code {
            202 => ids.push(v["id"].as_str().unwrap().to_string()),
            429 => {
                assert!(v["error"].as_str().unwrap().contains("active_jobs"), "{v}");
                limited = true;
            }
            c => panic!("{c}: {v}"),
        }
    }
    assert!(limited, "the quota of 3 active jobs answered 429");
    assert!(!ids.is_empty());
    // kill -9 with jobs queued (and one running), then a restart.
    let mut srv = srv;
    kill9(&mut srv.child);
    let srv = serve(&state, &["--max-active-jobs", "3"], &[]);
    for id in &ids {
        let end = wait(&srv, &k, id);
        match end["state"].as_str().unwrap() {
            "done" => {
                let f = dir.join(format!("{id}.safetensors"));
                assert_eq!(fetch(&srv, &k, id, &f), 200);
                assert!(saved(&f).contains_key("0/logits"));
            }
            "failed" => assert_eq!(end["error"]["reason"], "interrupted", "{end}"),
            other => panic!("job {id} ended {other}"),
        }
    }
    // No half-written result is left.
    for e in std::fs::read_dir(state.join("results")).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(
            p.extension().and_then(|x| x.to_str()),
            Some("safetensors"),
            "{}",
            p.display()
        );
    }
}

fn kill9(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Every route the server answers is in `docs/openapi.yaml`, and the
/// document names no route the server lacks.
#[test]
fn the_openapi_document_lists_the_routes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let code = std::fs::read_to_string(root.join("host/src/service/http.rs")).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/openapi.yaml")).unwrap();
    let routes: Vec<&str> = code
        .split(".route(\"")
        .skip(1)
        .map(|r| r.split('"').next().unwrap())
        .collect();
    assert!(routes.len() >= 5);
    for r in &routes {
        assert!(
            doc.contains(&format!("  {r}:\n")),
            "{r} missing from docs/openapi.yaml"
        );
    }
    let documented = doc.lines().filter(|l| l.starts_with("  /")).count();
    assert_eq!(documented, routes.len(), "documented paths vs routes");
}
