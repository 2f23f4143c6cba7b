//! `flexmodel serve` as real processes: keys made with `serve keys add`, the
//! server started on a free loopback port with a tiny model, jobs submitted
//! and fetched over HTTP (curl): auth (401), tenant isolation (404),
//! revocation on the next request, results equal to `flexmodel run`, a
//! shared plugin pulled from a real registry under the server's trust
//! policy, a quota (429), and `kill -9` with jobs queued, then a restart:
//! every accepted job ends, and a client waiting on one follows the
//! restarted server to its result.

mod cli_common;
mod registry_common;
mod service_common;

use std::path::Path;
use std::process::Command;

use cli_common::{bin, models, ok, saved};
use flexmodel_tests::artifacts_dir;
use registry_common::{curl, registry};
use service_common::*;

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
    // No trust policy named: refused, unless told to run any plugin.
    let o = Command::new(bin())
        .args(["serve", "--model", s(&models().join("gpt2-tiny"))])
        .args(["--state", s(&state), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("--trust") && e.trim().lines().count() == 1,
        "{e}"
    );
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
    assert_eq!(model["architecture"], "GPT2LMHeadModel", "{model}");

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
    assert_eq!(cancel(&srv, &kb, &id).0, 404);
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
    let said = ok(&Command::new(bin())
        .args(["remote", "run", "--server", &srv.url, "--key", &ka])
        .args([
            "--token-ids",
            "5,9,2,77",
            "--top-k",
            "3",
            "--save",
            s(&remote),
        ])
        .output()
        .unwrap());
    assert!(
        said.contains("prompt 0: 4 tokens; next token: \"#"),
        "{said}"
    );
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
    // The worker is held for seconds by a job whose hooks spin at every
    // hook point (within their fuel): every job after it is still queued
    // at the kill.
    let carol = key(&state, "carol");
    let spin = serde_json::json!({"token_ids": [[1, 2]], "hooks": [
        upload("bench.wasm", "**", serde_json::json!({"mode": "spin", "iters": 300_000_000u64})),
    ]});
    let spun = submit_ok(&srv, &carol, &spin);
    wait_running(&srv, &carol, &spun);
    // Long jobs (many rows each), submitted at once from 8 clients.
    let rows: Vec<Vec<i64>> = (0..256)
        .map(|i| (0..32).map(|j| (i * 7 + j) % 90).collect())
        .collect();
    // Every other job asks for a retry after an interruption.
    let body = |i: u32| serde_json::json!({"token_ids": rows, "retries": i % 2});
    let answers: Vec<(u32, u16, serde_json::Value)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let (srv, k, b) = (&srv, &k, body(i));
                sc.spawn(move || {
                    let (code, v) = submit(srv, k, &b);
                    (i % 2, code, v)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ids = Vec::new();
    let mut limited = false;
    for (retries, code, v) in answers {
        match code {
            202 => ids.push((v["id"].as_str().unwrap().to_string(), retries)),
            429 => {
                assert!(v["error"].as_str().unwrap().contains("active_jobs"), "{v}");
                limited = true;
            }
            c => panic!("{c}: {v}"),
        }
    }
    assert!(limited, "the quota of 3 active jobs answered 429");
    assert!(!ids.is_empty());
    // A client waiting on its job's events through the crash: `remote run
    // --retries 1` follows the restarted server and saves the result.
    let kb = key(&state, "bob");
    let remote = dir.join("remote.safetensors");
    let mut client = Command::new(bin())
        .args(["remote", "run", "--server", &srv.url, "--key", &kb])
        .args(["--token-ids", "5,9,2,77", "--retries", "1", "--save"])
        .arg(&remote)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (mut err, said) = (client.stderr.take().unwrap(), said.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = std::io::Read::read(&mut err, &mut buf) {
                said.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let t = std::time::Instant::now();
    while !said.lock().unwrap().contains(": queued") {
        assert!(t.elapsed().as_secs() < 60, "{}", said.lock().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // kill -9 with jobs queued (and one running), then a restart.
    let mut srv = srv;
    let port = srv.url.rsplit(':').next().unwrap().to_string();
    kill9(&mut srv.child);
    let listen = format!("127.0.0.1:{port}");
    let srv = serve(
        &state,
        &["--max-active-jobs", "3", "--listen", &listen],
        &[],
    );
    let out = client.wait_with_output().unwrap();
    reader.join().unwrap();
    assert!(out.status.success(), "{}", said.lock().unwrap());
    let local = dir.join("local.safetensors");
    ok(&Command::new(bin())
        .args(["run", "--model", s(&models().join("gpt2-tiny"))])
        .args(["--token-ids", "5,9,2,77", "--save", s(&local)])
        .output()
        .unwrap());
    assert!(saved(&remote)["logits"].equal(&saved(&local)["logits"]));
    // The spinning job was still running at the kill (it ends
    // interrupted), so the client's job, queued after it, had not ended.
    let end = wait(&srv, &carol, &spun);
    assert_eq!(end["error"]["reason"], "interrupted", "{end}");
    for (id, retries) in &ids {
        let end = wait(&srv, &k, id);
        match end["state"].as_str().unwrap() {
            "done" => {
                let f = dir.join(format!("{id}.safetensors"));
                assert_eq!(fetch(&srv, &k, id, &f), 200);
                assert!(saved(&f).contains_key("0/logits"));
            }
            // Only a job without retries may end interrupted.
            "failed" if *retries == 0 => {
                assert_eq!(end["error"]["reason"], "interrupted", "{end}")
            }
            other => panic!("job {id} (retries {retries}) ended {other}: {end}"),
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

/// `remote run --stop-at` with an uploaded plugin gives what `flexmodel run
/// --stop-at` gives with the same plugin file.
#[test]
fn remote_stop_at_with_an_uploaded_plugin_matches_run() {
    let dir = tmp("stop");
    let state = dir.join("state");
    let k = key(&state, "alice");
    let srv = serve(&state, &[], &[]);
    let model = models().join("gpt2-tiny");
    let hook = format!(
        "{}@blocks.0.hook_resid_post",
        artifacts_dir().join("retrieve.wasm").display()
    );
    let common = [
        "--token-ids",
        "5,9,2,77",
        "--stop-at",
        "blocks.0.hook_resid_post",
        "--hook",
        &hook,
    ];
    let (remote, local) = (
        dir.join("remote.safetensors"),
        dir.join("local.safetensors"),
    );
    ok(&Command::new(bin())
        .args(["remote", "run", "--server", &srv.url, "--key", &k])
        .args(common)
        .args(["--save", s(&remote)])
        .output()
        .unwrap());
    ok(&Command::new(bin())
        .args(["run", "--model", s(&model)])
        .args(common)
        .args(["--save", s(&local)])
        .output()
        .unwrap());
    let (remote, local) = (saved(&remote), saved(&local));
    assert_eq!(
        remote.keys().collect::<Vec<_>>(),
        local.keys().collect::<Vec<_>>()
    );
    assert!(!remote.contains_key("logits"), "no logits past the stop");
    for (name, t) in &local {
        assert!(t.equal(&remote[name]), "{name}");
    }
}
