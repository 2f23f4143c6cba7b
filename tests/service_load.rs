//! The service under load and on the edges of its machine: 32 concurrent
//! clients (tenants) × 4 jobs each, every job ending with the right result
//! (each prompt's logits from `flexmodel run` of that prompt alone); HTTPS
//! on loopback with a certificate from a self-signed CA (curl and `remote run`); a
//! full disk (a file-size limit on the server) failing the job whose result
//! does not fit, cleanly, while the server goes on; the same results on one
//! rank, TP threads, `mpirun` and data-parallel replicas sharing a batch;
//! one tenant's flood of uploads never keeping another's waiting.

mod cli_common;
mod registry_common;
mod service_common;

use std::process::Command;

use cli_common::{bin, models, ok, saved};
use registry_common::curl;
use service_common::*;

/// Prompt `i` of the load test (8 distinct, of lengths 3..=10).
fn prompt(i: usize) -> Vec<i64> {
    (0..3 + i % 8)
        .map(|j| ((i * 13 + j * 7) % 101) as i64)
        .collect()
}

#[test]
fn thirty_two_clients_four_jobs_each_nothing_lost() {
    let dir = tmp("load");
    let state = dir.join("state");
    let keys: Vec<String> = (0..32).map(|i| key(&state, &format!("t{i}"))).collect();
    let srv = serve(
        &state,
        &["--batch-jobs", "8", "--max-active-jobs", "4"],
        &[],
    );
    // The reference: each prompt alone, in-process (`flexmodel run`).
    let model = models().join("gpt2-tiny");
    let want: Vec<tch::Tensor> = (0..8)
        .map(|i| {
            let f = dir.join(format!("want{i}.safetensors"));
            let ids: Vec<String> = prompt(i).iter().map(i64::to_string).collect();
            ok(&Command::new(bin())
                .args(["run", "--model", s(&model), "--token-ids", &ids.join(",")])
                .args(["--save", s(&f)])
                .output()
                .unwrap());
            saved(&f)["logits"].shallow_clone()
        })
        .collect();
    let ended: Vec<(usize, String, serde_json::Value)> = std::thread::scope(|sc| {
        let hs: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(c, k)| {
                let srv = &srv;
                sc.spawn(move || {
                    let ids: Vec<(usize, String)> = (0..4)
                        .map(|j| {
                            let p = (c + j) % 8;
                            let body = serde_json::json!({"token_ids": [prompt(p)]});
                            (p, submit_ok(srv, k, &body))
                        })
                        .collect();
                    ids.into_iter()
                        .map(|(p, id)| {
                            let end = wait(srv, k, &id);
                            (p, id, end)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(ended.len(), 128);
    let mut shared = 0;
    for (n, (p, id, end)) in ended.iter().enumerate() {
        assert_eq!(end["state"], "done", "{end}");
        if end["batch_jobs"].as_i64().unwrap() > 1 {
            shared += 1;
        }
        let k = &keys[n / 4];
        let got = result(&srv, k, id, &dir);
        let d = max_diff(&got["logits"], &want[*p]);
        assert!(d <= 1e-4, "job {id} (prompt {p}): {d}");
    }
    assert!(shared > 0, "some jobs shared a batch under load");
    // Nothing left behind: every job in the database ended.
    let listed = std::fs::read_dir(state.join("results")).unwrap().count();
    assert_eq!(listed, 128);
}

#[test]
fn https_with_a_self_signed_certificate() {
    let dir = tmp("tls");
    // A self-signed CA (the cluster's own) and the server's certificate
    // signed by it, for 127.0.0.1.
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert, pem_key, csr) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("srv.csr"),
    );
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl").args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        s(&ca_key),
        "-out",
        s(&ca),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        s(&pem_key),
        "-out",
        s(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        s(&csr),
        "-CA",
        s(&ca),
        "-CAkey",
        s(&ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        s(&ext),
        "-out",
        s(&cert),
    ]);
    let state = dir.join("state");
    let k = key(&state, "alice");
    let srv = serve(
        &state,
        &["--tls-cert", s(&cert), "--tls-key", s(&pem_key)],
        &[],
    );
    assert!(srv.url.starts_with("https://127.0.0.1:"), "{}", srv.url);
    let (code, _) = curl(&["--cacert", s(&ca), &format!("{}/healthz", srv.url)]);
    assert_eq!(code, 200);
    // Without trusting the certificate, no connection.
    let (code, _) = curl(&[&format!("{}/healthz", srv.url)]);
    assert_eq!(code, 0);
    // Plain HTTP to the HTTPS port: refused.
    let plain = srv.url.replace("https://", "http://");
    let (code, _) = curl(&[&format!("{plain}/healthz")]);
    assert_ne!(code, 200);
    let out = dir.join("remote.safetensors");
    let said = ok(&Command::new(bin())
        .args(["remote", "run", "--server", &srv.url, "--key", &k])
        .args(["--ca-cert", s(&ca), "--token-ids", "3,1,4,1,5"])
        .args(["--save", s(&out)])
        .output()
        .unwrap());
    assert!(said.contains("done"), "{said}");
    assert_eq!(saved(&out)["logits"].size(), [1, 5, 101]);
}

#[test]
fn a_full_disk_fails_the_job_that_does_not_fit_and_nothing_else() {
    let dir = tmp("full");
    let state = dir.join("state");
    let k = key(&state, "alice");
    // Files of the server may grow to 1 MiB: a result of 256 × 32 tokens'
    // logits (3.3 MB) cannot be written; a small one can.
    let srv = serve_under(&["prlimit", "--fsize=1048576", "--"], &state, &[], &[]);
    let rows: Vec<Vec<i64>> = (0..256)
        .map(|i| (0..32).map(|j| (i * 5 + j) % 101).collect())
        .collect();
    let big = submit_ok(&srv, &k, &serde_json::json!({"token_ids": rows}));
    let end = wait(&srv, &k, &big);
    assert_eq!(end["state"], "failed", "{end}");
    assert_eq!(end["error"]["reason"], "storage", "{end}");
    let (code, _) = curl(&[
        "-H",
        &auth(&k),
        &format!("{}/v1/jobs/{big}/result", srv.url),
    ]);
    assert_eq!(code, 409);
    let small = submit_ok(&srv, &k, &serde_json::json!({"token_ids": [[1, 2, 3]]}));
    assert_eq!(wait(&srv, &k, &small)["state"], "done");
    let names: Vec<String> = std::fs::read_dir(state.join("results"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [format!("{small}.safetensors")],
        "no partial file left"
    );
}

/// A server on one rank, on two TP threads (`--tp 2`), and under `mpirun
/// -np 2 --tp 2` (rank 0 serves; both hold their shard): the same job,
/// with hooks, gives the same result on each.
#[test]
fn one_rank_threads_and_mpirun_serve_the_same_results() {
    use base64::Engine;
    let dir = tmp("layouts");
    let hook = |plugin: &str, at: &str, config: serde_json::Value| {
        let bytes = std::fs::read(flexmodel_tests::artifacts_dir().join(plugin)).unwrap();
        serde_json::json!({"component": base64::engine::general_purpose::STANDARD.encode(bytes),
                           "at": at, "config": config})
    };
    let job = serde_json::json!({"token_ids": [[5, 9, 2, 77], [1, 2]], "hooks": [
        hook("scale.wasm", "blocks.0.hook_resid_post", serde_json::json!({"factor": 1.5})),
        hook("retrieve.wasm", "blocks.1.hook_resid_post", serde_json::json!({})),
    ]});
    let mut results = Vec::new();
    for layout in ["one", "threads", "mpirun"] {
        let state = dir.join(layout);
        let k = key(&state, "alice");
        let srv = match layout {
            "one" => serve(&state, &[], &[]),
            "threads" => serve(&state, &["--tp", "2"], &[]),
            _ => serve_under(
                &["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "2"],
                &state,
                &["--tp", "2"],
                &[
                    ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
                    ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
                    ("OMPI_MCA_plm", "isolated"),
                    ("OMPI_MCA_rmaps_base_oversubscribe", "1"),
                ],
            ),
        };
        // Two jobs in a row: the ranks stay together between batches.
        for _ in 0..2 {
            let id = submit_ok(&srv, &k, &job);
            let end = wait(&srv, &k, &id);
            assert_eq!(end["state"], "done", "{layout}: {end}");
            results.push((layout, result(&srv, &k, &id, &dir)));
        }
        // mpirun passes SIGTERM on to its ranks (a SIGKILL would orphan them).
        let _ = Command::new("kill")
            .arg(srv.child.id().to_string())
            .status();
    }
    let (_, one) = &results[0];
    for (layout, r) in &results[1..] {
        assert_eq!(r.len(), one.len(), "{layout}");
        for (name, t) in one {
            let d = max_diff(t, &r[name]);
            assert!(d <= 1e-5, "{layout} {name}: {d}");
        }
    }
}

/// Two tenants' jobs in one batch on two data-parallel replicas
/// (`--dp 2`): each replica holds one job's row, each job's hooks act on
/// its own row only, and each result equals the job alone on one rank.
#[test]
fn data_parallel_replicas_keep_each_jobs_rows() {
    use base64::Engine;
    let dir = tmp("dp");
    let hook = |plugin: &str, at: &str, config: serde_json::Value| {
        let bytes = std::fs::read(flexmodel_tests::artifacts_dir().join(plugin)).unwrap();
        serde_json::json!({"component": base64::engine::general_purpose::STANDARD.encode(bytes),
                           "at": at, "config": config})
    };
    let a = serde_json::json!({"token_ids": [[5, 9, 2, 77, 3]], "hooks": [
        hook("scale.wasm", "**", serde_json::json!({"factor": 0.5})),
        hook("retrieve.wasm", "blocks.1.hook_resid_post", serde_json::json!({})),
    ]});
    let b = serde_json::json!({"token_ids": [[1, 2]], "hooks": [
        hook("retrieve.wasm", "blocks.1.hook_resid_post", serde_json::json!({})),
    ]});
    let state = dir.join("dp");
    let (ka, kb) = (key(&state, "alice"), key(&state, "bob"));
    let srv = serve(
        &state,
        &["--dp", "2", "--batch-jobs", "2", "--batch-wait-ms", "5000"],
        &[],
    );
    let ids: Vec<String> = std::thread::scope(|sc| {
        let x = sc.spawn(|| submit_ok(&srv, &ka, &a));
        let y = sc.spawn(|| submit_ok(&srv, &kb, &b));
        vec![x.join().unwrap(), y.join().unwrap()]
    });
    let mut shared = Vec::new();
    for (k, id) in [(&ka, &ids[0]), (&kb, &ids[1])] {
        let end = wait(&srv, k, id);
        assert_eq!(end["state"], "done", "{end}");
        assert_eq!(end["batch_jobs"], 2, "{end}");
        shared.push(result(&srv, k, id, &dir));
    }
    let one = dir.join("one");
    let k = key(&one, "alice");
    let srv = serve(&one, &[], &[]);
    for (i, job) in [a, b].iter().enumerate() {
        let id = submit_ok(&srv, &k, job);
        assert_eq!(wait(&srv, &k, &id)["state"], "done");
        let alone = result(&srv, &k, &id, &dir);
        assert_eq!(alone.len(), shared[i].len());
        for (name, t) in &alone {
            let d = max_diff(t, &shared[i][name]);
            assert!(d <= 1e-4, "job {i} {name}: {d}");
        }
    }
}

/// Uploads are checked and compiled one at a time per tenant, two at once
/// in all: a tenant submitting many new components at once keeps another
/// tenant's upload waiting for no more than a compile or two.
#[test]
fn one_tenants_uploads_never_keep_anothers_waiting() {
    use base64::Engine;
    let dir = tmp("gate");
    let state = dir.join("state");
    let (ka, kb) = (key(&state, "alice"), key(&state, "bob"));
    let srv = serve(&state, &[], &[]);
    // Distinct components (never compiled before): `retrieve` with a
    // custom section of its own.
    let salt = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    let plugin = std::fs::read(flexmodel_tests::artifacts_dir().join("retrieve.wasm")).unwrap();
    let body = |i: usize| {
        let (name, payload) = (b"flexmodel-test", format!("{salt}-{i}"));
        let mut bytes = plugin.clone();
        bytes.push(0);
        bytes.push((1 + name.len() + payload.len()) as u8);
        bytes.push(name.len() as u8);
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(payload.as_bytes());
        serde_json::json!({"token_ids": [[1, 2]], "return_logits": false, "hooks": [{
            "component": base64::engine::general_purpose::STANDARD.encode(&bytes),
            "at": "blocks.0.hook_resid_post", "config": {}}]})
    };
    // One upload alone, for scale.
    let t = std::time::Instant::now();
    submit_ok(&srv, &kb, &body(0));
    let one = t.elapsed();
    let bob = std::thread::scope(|sc| {
        for i in 1..=6 {
            let (srv, ka, b) = (&srv, &ka, body(i));
            sc.spawn(move || submit_ok(srv, ka, &b));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let t = std::time::Instant::now();
        submit_ok(&srv, &kb, &body(7));
        t.elapsed()
    });
    assert!(
        bob < one * 4,
        "bob waited {bob:?}; one upload takes {one:?}"
    );
}

/// A tenant holds at most `--max-event-streams` event streams open at once:
/// the next is a 429 naming the quota while another tenant's open; streams
/// that ended free their places.
#[test]
fn event_streams_are_counted_per_tenant() {
    let dir = tmp("streams");
    let state = dir.join("state");
    let (ka, kb) = (key(&state, "alice"), key(&state, "bob"));
    let srv = serve(&state, &["--max-event-streams", "2"], &[]);
    // A long job (its hooks spin at every point) and one queued after it.
    let spin = serde_json::json!({"token_ids": [[1, 2]], "hooks": [
        upload("bench.wasm", "**", serde_json::json!({"mode": "spin", "iters": 30_000_000u64})),
    ]});
    let long = submit_ok(&srv, &ka, &spin);
    let after = submit_ok(&srv, &kb, &serde_json::json!({"token_ids": [[1]]}));
    let events = |id: &str| format!("{}/v1/jobs/{id}/events", srv.url);
    // Open a stream and read its first event.
    let open = |k: &str, id: &str| {
        let mut c = Command::new("curl")
            .args(["-sN", "-H", &auth(k), &events(id)])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("data:") {
            line.clear();
            assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0);
        }
        (c, out)
    };
    let mut alice = vec![open(&ka, &long), open(&ka, &long)];
    let (code, v) = curl(&["-H", &auth(&ka), &events(&long)]);
    assert_eq!(code, 429, "{v}");
    assert!(v.contains("quota event_streams"), "{v}");
    let mut bob = open(&kb, &after);
    assert_eq!(wait(&srv, &ka, &long)["state"], "done");
    assert_eq!(wait(&srv, &kb, &after)["state"], "done");
    // Both jobs ended: so did their streams, and their places are free.
    for (c, _) in alice.iter_mut().chain([&mut bob]) {
        assert!(c.wait().unwrap().success());
    }
    let (code, v) = curl(&["-H", &auth(&ka), &events(&long)]);
    assert_eq!(code, 200, "{v}");
    assert!(v.contains("\"done\""), "{v}");
    alice.clear();
}
