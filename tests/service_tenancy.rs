//! The service's tenants sharing one model: co-tenancy batching (forward
//! jobs of several tenants in one padded batch, each equal to the job run
//! alone; a tenant whose plugins write and read everything they can sees
//! and changes nothing of another's rows; left-padded jobs), hostile plugins failing their
//! own job with a typed reason in a shared batch, per-tenant quotas (429
//! and failed jobs naming them), uploaded components under the trust
//! policy, server-sent events, cancelling a running job.

mod cli_common;
mod registry_common;
mod service_common;

use std::process::Command;
use std::time::{Duration, Instant};

use flexmodel_tests::artifacts_dir;
use service_common::*;

/// Submit `jobs` (tenant key, body) at once, from one thread each, to a
/// server with a batch window: the worker takes them together. Their ids.
fn together(srv: &Server, jobs: &[(&str, serde_json::Value)]) -> Vec<String> {
    std::thread::scope(|sc| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|(k, body)| sc.spawn(move || submit_ok(srv, k, body)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Run `jobs` together (each must report `batch_jobs` as in `batched`),
/// then each alone: the same tensors, equal (within 1e-4). The results
/// of the jobs run together.
fn together_then_alone(
    srv: &Server,
    jobs: &[(&str, serde_json::Value)],
    dir: &std::path::Path,
    batched: &[u64],
) -> Vec<std::collections::BTreeMap<String, tch::Tensor>> {
    let shared = together(srv, jobs);
    let mut results = Vec::new();
    for (((k, _), id), n) in jobs.iter().zip(&shared).zip(batched) {
        let end = wait(srv, k, id);
        assert_eq!(end["state"], "done", "{end}");
        assert_eq!(end["batch_jobs"], *n, "{end}");
        results.push(result(srv, k, id, dir));
    }
    for (i, (k, body)) in jobs.iter().enumerate() {
        let id = submit_ok(srv, k, body);
        let end = wait(srv, k, &id);
        assert_eq!(end["batch_jobs"], 1, "{end}");
        let alone = result(srv, k, &id, dir);
        assert_same(&alone, &results[i], &format!("job {i}"));
    }
    results
}

#[test]
fn co_tenancy_batches_give_each_job_its_own_result_and_rows() {
    let dir = tmp("cotenancy");
    let state = dir.join("state");
    let (ka, kb, kc) = (
        key(&state, "alice"),
        key(&state, "bob"),
        key(&state, "carol"),
    );
    let srv = serve(
        &state,
        &["--batch-jobs", "3", "--batch-wait-ms", "5000"],
        &[],
    );
    // Alice writes every element of every activation she can reach (scale
    // by 0 everywhere) and reads everything (retrieve everywhere).
    let alice = serde_json::json!({"token_ids": [[5, 9, 2, 77, 3, 8]], "hooks": [
        upload("scale.wasm", "**", serde_json::json!({"factor": 0.5})),
        upload("retrieve.wasm", "**", serde_json::json!({"padding": "keep"})),
    ]});
    // Bob: two prompts of different lengths, his residual stream retrieved
    // (real tokens only) and each prompt's last token at block 1.
    let bob = serde_json::json!({"token_ids": [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]], "hooks": [
        upload("retrieve.wasm", "blocks.0.hook_resid_post", serde_json::json!({})),
        upload("retrieve.wasm", "blocks.1.hook_resid_post", serde_json::json!({"slice": [null, -1], "name": "last"})),
    ]});
    let carol = serde_json::json!({"token_ids": [[7, 7, 7, 7]]});
    let jobs = [
        (ka.as_str(), alice.clone()),
        (kb.as_str(), bob.clone()),
        (kc.as_str(), carol.clone()),
    ];
    let together = together_then_alone(&srv, &jobs, &dir, &[3, 3, 3]);
    // Alice's hooks saw her own batch (one row), never the others' rows.
    let alice = &together[0];
    assert!(
        alice.len() > 10,
        "alice retrieved every point: {}",
        alice.len()
    );
    for (name, t) in alice {
        if name != "logits" {
            assert_eq!(t.size()[0], 1, "{name}: {:?}", t.size());
        }
    }
    // Bob's tensors are real tokens of his prompts in his own layout (keys
    // are canonical point names: `transformer.h.0` for GPT-2's block 0).
    let bob = &together[1];
    let shape = |k: &str| {
        bob.get(k)
            .map(|t| t.size())
            .unwrap_or_else(|| panic!("{k} in {:?}", bob.keys()))
    };
    assert_eq!(shape("0/transformer.h.0")[..2], [1, 3]);
    assert_eq!(shape("1/transformer.h.0")[..2], [1, 10]);
    assert_eq!(shape("1/transformer.h.1:last")[0], 1);
}

/// `"padding": "left"`: left-padded jobs share a batch with each other,
/// never with a right-padded one; each equals the job alone, `remote run
/// --padding left` and `flexmodel run --padding left` on the same prompts
/// and hooks (a hook's full-layout output keeps the job's own left padding,
/// though the shared batch was longer).
#[test]
fn left_padded_jobs_share_batches_with_their_kind() {
    let dir = tmp("left");
    let state = dir.join("state");
    let (kb, kc, kd) = (
        key(&state, "bob"),
        key(&state, "carol"),
        key(&state, "dave"),
    );
    let srv = serve(
        &state,
        &["--batch-jobs", "3", "--batch-wait-ms", "3000"],
        &[],
    );
    let keep = serde_json::json!({"padding": "keep"});
    let last = serde_json::json!({"slice": [null, -1], "name": "last"});
    let bob = serde_json::json!({"token_ids": [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]],
        "padding": "left", "hooks": [
        upload("retrieve.wasm", "blocks.0.hook_resid_post", keep.clone()),
        upload("retrieve.wasm", "blocks.1.hook_resid_post", last.clone()),
    ]});
    // Longer than Bob's: his rows get more padding in the shared batch.
    let carol = serde_json::json!({"token_ids": [vec![7; 12]], "padding": "left"});
    let dave = serde_json::json!({"token_ids": [[3, 3]]});
    let jobs = [
        (kb.as_str(), bob),
        (kc.as_str(), carol),
        (kd.as_str(), dave),
    ];
    let results = together_then_alone(&srv, &jobs, &dir, &[2, 2, 1]);
    let bob = &results[0];
    assert_eq!(bob["0/transformer.h.0"].size()[..2], [1, 10]);
    // The reference: `flexmodel run --padding left`.
    let prompts = dir.join("bob.jsonl");
    std::fs::write(
        &prompts,
        "{\"token_ids\": [1, 2, 3]}\n{\"token_ids\": [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]}\n",
    )
    .unwrap();
    let plugin = artifacts_dir().join("retrieve.wasm");
    let hooks = [
        format!("{}@blocks.0.hook_resid_post={keep}", plugin.display()),
        format!("{}@blocks.1.hook_resid_post={last}", plugin.display()),
    ];
    // `flexmodel run --padding left` (the reference) and `remote run
    // --padding left` (its components uploaded).
    let model = cli_common::models().join("gpt2-tiny");
    let remote = ["remote", "run", "--server", &srv.url, "--key", &kb];
    for (what, head) in [
        ("run", vec!["run", "--model", s(&model)]),
        ("remote run", remote.to_vec()),
    ] {
        let out = dir.join(format!("{what}.safetensors"));
        cli_common::ok(
            &Command::new(cli_common::bin())
                .args(&head)
                .args(["--prompts", s(&prompts), "--padding", "left"])
                .args(["--hook", &hooks[0], "--hook", &hooks[1], "--save", s(&out)])
                .output()
                .unwrap(),
        );
        assert_same(&cli_common::saved(&out), bob, what);
    }
}

/// The batch window closes early once as many jobs as in the last batch
/// have come: two tenants' jobs submitted together wait out the window the
/// first time only.
#[test]
fn the_batch_window_closes_once_the_last_batchs_company_came() {
    let dir = tmp("window");
    let state = dir.join("state");
    let (ka, kb) = (key(&state, "alice"), key(&state, "bob"));
    let srv = serve(
        &state,
        &["--batch-jobs", "8", "--batch-wait-ms", "3000"],
        &[],
    );
    let job = serde_json::json!({"token_ids": [[1, 2, 3]]});
    let jobs = [(ka.as_str(), job.clone()), (kb.as_str(), job)];
    for round in 0..2 {
        let ids = together(&srv, &jobs);
        let waited: Vec<u64> = jobs
            .iter()
            .zip(&ids)
            .map(|((k, _), id)| {
                let end = wait(&srv, k, id);
                assert_eq!(end["batch_jobs"], 2, "{end}");
                end["queued_ms"].as_u64().unwrap()
            })
            .collect();
        let first = waited.iter().max().copied().unwrap_or(0);
        match round {
            0 => assert!(
                first >= 2500,
                "the first batch waited its window: {waited:?}"
            ),
            _ => assert!(first < 1500, "the second closed early: {waited:?}"),
        }
    }
}

#[test]
fn hostile_plugins_fail_their_own_jobs_in_a_shared_batch() {
    let dir = tmp("hostile");
    let state = dir.join("state");
    let (ka, kb) = (key(&state, "mallory"), key(&state, "bob"));
    let srv = serve(
        &state,
        &[
            "--batch-jobs",
            "5",
            "--batch-wait-ms",
            "5000",
            "--fuel",
            "200000000",
            "--max-memory-bytes",
            "134217728",
            "--max-output-bytes",
            "16777216",
        ],
        &[],
    );
    let hostile = |mode: &str| {
        serde_json::json!({"token_ids": [[1, 2, 3, 4]], "hooks": [
            upload("hostile.wasm", "blocks.0.hook_resid_post", serde_json::json!({"mode": mode, "bytes": 32 << 20})),
        ]})
    };
    let bob = serde_json::json!({"token_ids": [[9, 8, 7], [6, 5]], "hooks": [
        upload("retrieve.wasm", "blocks.1.hook_resid_post", serde_json::json!({})),
    ]});
    let modes = [
        ("loop", "fuel"),
        ("memory", "memory"),
        ("panic", "trap"),
        ("big-output", "quota"),
    ];
    let mut jobs: Vec<(&str, serde_json::Value)> = modes
        .iter()
        .map(|(m, _)| (ka.as_str(), hostile(m)))
        .collect();
    jobs.push((kb.as_str(), bob.clone()));
    let ids = together(&srv, &jobs);
    for ((mode, reason), id) in modes.iter().zip(&ids) {
        let end = wait(&srv, &ka, id);
        assert_eq!(end["state"], "failed", "{mode}: {end}");
        assert_eq!(end["error"]["reason"], *reason, "{mode}: {end}");
    }
    let end = wait(&srv, &kb, &ids[4]);
    assert_eq!(end["state"], "done", "{end}");
    let shared = result(&srv, &kb, &ids[4], &dir);
    let id = submit_ok(&srv, &kb, &bob);
    assert_eq!(wait(&srv, &kb, &id)["state"], "done");
    let alone = result(&srv, &kb, &id, &dir);
    for (name, t) in &alone {
        assert!(max_diff(t, &shared[name]) <= 1e-4, "{name}");
    }
}

#[test]
fn tenant_quotas_name_the_quota_they_stop() {
    let dir = tmp("quotas");
    let state = dir.join("state");
    let small = key_with(&state, "small", &["output_bytes=1000", "active_jobs=1"]);
    let slow = key_with(&state, "slow", &["wall_ms=1"]);
    let frugal = key_with(&state, "frugal", &["fuel_per_call=1000"]);
    let free = key(&state, "free");
    let o = Command::new(cli_common::bin())
        .args([
            "serve",
            "keys",
            "add",
            "--state",
            s(&state),
            "--tenant",
            "x",
            "--quota",
            "cpu=1",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown quota"));
    let srv = serve(&state, &[], &[]);
    // output_bytes: logits of 4 tokens are more than 1000 bytes.
    let id = submit_ok(
        &srv,
        &small,
        &serde_json::json!({"token_ids": [[1, 2, 3, 4]]}),
    );
    let end = wait(&srv, &small, &id);
    failed_with(&end, "quota", "output_bytes");
    // active_jobs: one at a time. The first job spins in its hook until its
    // fuel (4e9) runs out, seconds: it is active when the second comes.
    let spin = serde_json::json!({"token_ids": [[1, 2]], "hooks": [
        upload("hostile.wasm", "blocks.0.hook_resid_post", serde_json::json!({"mode": "loop"})),
    ]});
    let b = submit_ok(&srv, &small, &spin);
    let (code, v) = submit(&srv, &small, &serde_json::json!({"token_ids": [[1]]}));
    assert_eq!(code, 429, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("quota active_jobs"),
        "{v}"
    );
    wait(&srv, &small, &b);
    // wall_ms: past 1 ms, the job's next hook call fails.
    let every = serde_json::json!({"token_ids": [[1, 2, 3]], "hooks": [
        upload("retrieve.wasm", "**", serde_json::json!({})),
    ]});
    let id = submit_ok(&srv, &slow, &every);
    let end = wait(&srv, &slow, &id);
    failed_with(&end, "quota", "wall_ms");
    // fuel_per_call: lowered for this tenant's plugins only.
    let scale = serde_json::json!({"token_ids": [[1, 2, 3]], "hooks": [
        upload("scale.wasm", "blocks.0.hook_resid_post", serde_json::json!({"factor": 2.0})),
    ]});
    let id = submit_ok(&srv, &frugal, &scale);
    let end = wait(&srv, &frugal, &id);
    assert_eq!(end["error"]["reason"], "fuel", "{end}");
    let id = submit_ok(&srv, &free, &scale);
    let end = wait(&srv, &free, &id);
    assert_eq!(end["state"], "done", "{end}");
}

#[test]
fn uploads_follow_the_trust_policy_and_events_stream_the_states() {
    let dir = tmp("upload");
    let state = dir.join("state");
    let k = key(&state, "alice");
    std::fs::write(dir.join("trust.toml"), "default = \"require-signed\"\n").unwrap();
    let trust = dir.join("trust.toml");
    let srv = serve(
        &state,
        &["--trust", s(&trust), "--batch-wait-ms", "1000"],
        &[],
    );
    let job = serde_json::json!({"token_ids": [[1, 2, 3]], "hooks": [
        upload("scale.wasm", "blocks.0.hook_resid_post", serde_json::json!({"factor": 2.0})),
    ]});
    // Refused when submitted (uploads are checked and compiled then).
    let (code, v) = submit(&srv, &k, &job);
    assert_eq!(code, 400, "an unsigned upload: {v}");
    assert!(v["error"].as_str().unwrap().contains("hooks[0]"), "{v}");
    // A component that is not one: refused the same way, nothing queued.
    let junk = serde_json::json!({"token_ids": [[1]], "hooks": [{"component": "AGFzbQ==", "at": "blocks.0.hook_resid_post"}]});
    assert_eq!(submit(&srv, &k, &junk).0, 400);
    // Events: the job waits out the batch window (running), then is done;
    // the stream ends.
    let id = submit_ok(&srv, &k, &serde_json::json!({"token_ids": [[4, 5]]}));
    let o = Command::new("curl")
        .args(["-sN", "--max-time", "60", "-H", &auth(&k)])
        .arg(format!("{}/v1/jobs/{id}/events", srv.url))
        .output()
        .unwrap();
    assert!(o.status.success(), "the stream ended by itself");
    let text = String::from_utf8_lossy(&o.stdout);
    let states: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["state"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(states.len() >= 2, "{text}");
    assert!(matches!(states[0].as_str(), "queued" | "running"), "{text}");
    assert_eq!(states.last().map(String::as_str), Some("done"), "{text}");
    assert!(text.contains("event: status"), "{text}");
    // Another tenant's events: 404.
    let other = key(&state, "bob");
    let (code, _) = registry_common::curl(&[
        "-H",
        &auth(&other),
        &format!("{}/v1/jobs/{id}/events", srv.url),
    ]);
    assert_eq!(code, 404);
}

#[test]
fn a_cancelled_running_job_stops_and_the_server_goes_on() {
    let dir = tmp("cancel");
    let state = dir.join("state");
    let k = key(&state, "alice");
    // A long job: its hooks spin until their fuel (2e9 a call) runs out.
    let srv = serve(&state, &["--fuel", "2000000000"], &[]);
    let spin = serde_json::json!({"token_ids": [[1, 2, 3]], "hooks": [
        upload("hostile.wasm", "**", serde_json::json!({"mode": "loop"})),
    ]});
    let id = submit_ok(&srv, &k, &spin);
    wait_running(&srv, &k, &id);
    let t = Instant::now();
    let (code, v) = cancel(&srv, &k, &id);
    assert_eq!(code, 200, "{v}");
    assert_eq!(status(&srv, &k, &id).1["state"], "cancelled");
    let next = submit_ok(&srv, &k, &serde_json::json!({"token_ids": [[1]]}));
    assert_eq!(wait(&srv, &k, &next)["state"], "done");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_eq!(status(&srv, &k, &id).1["state"], "cancelled");
    let (code, _) =
        registry_common::curl(&["-H", &auth(&k), &format!("{}/v1/jobs/{id}/result", srv.url)]);
    assert_eq!(code, 409, "a cancelled job has no result");
}

/// A generation job without hooks (nothing to check at hook calls) stops
/// between steps too: past its tenant's wall time it fails with reason
/// `quota` naming `wall_ms`; cancelled while it runs, it stops and the
/// next job runs; on two ranks too.
#[test]
fn a_generation_without_hooks_stops_at_its_wall_time_and_when_cancelled() {
    let dir = tmp("genhalt");
    let state = dir.join("state");
    let (k, slow) = (
        key(&state, "alice"),
        key_with(&state, "slow", &["wall_ms=300"]),
    );
    // 2048 positions: a long generation.
    let model = cli_common::models().join("llama-mesh");
    let srv = serve(&state, &["--model", s(&model)], &[]);
    let long =
        serde_json::json!({"token_ids": [[1, 2, 3]], "max_new_tokens": 2000, "ignore_eos": true});
    // The whole generation, as a yardstick: well over 300 ms.
    let whole = wait(&srv, &k, &submit_ok(&srv, &k, &long));
    assert_eq!(whole["state"], "done", "{whole}");
    let whole_ms = whole["run_ms"].as_u64().unwrap();
    assert!(
        whole_ms > 900,
        "the generation is too quick to show a stop: {whole}"
    );
    let end = wait(&srv, &slow, &submit_ok(&srv, &slow, &long));
    failed_with(&end, "quota", "wall_ms");
    assert!(end["run_ms"].as_u64().unwrap() < whole_ms * 2 / 3, "{end}");
    let id = submit_ok(&srv, &k, &long);
    wait_running(&srv, &k, &id);
    let t = Instant::now();
    let (code, v) = cancel(&srv, &k, &id);
    assert_eq!(code, 200, "{v}");
    let next = submit_ok(&srv, &k, &serde_json::json!({"token_ids": [[1]]}));
    assert_eq!(wait(&srv, &k, &next)["state"], "done");
    let waited = t.elapsed().as_millis() as u64;
    assert!(
        waited < whole_ms * 2 / 3,
        "{waited} ms (whole: {whole_ms} ms)"
    );
    assert_eq!(status(&srv, &k, &id).1["state"], "cancelled");
    // On two tensor-parallel ranks: rank 0 tells the other to stop too.
    drop(srv);
    let srv = serve(&state, &["--model", s(&model), "--tp", "2"], &[]);
    let end = wait(&srv, &slow, &submit_ok(&srv, &slow, &long));
    assert_eq!(end["error"]["reason"], "quota", "{end}");
    let next = submit_ok(
        &srv,
        &k,
        &serde_json::json!({"token_ids": [[1]], "max_new_tokens": 2}),
    );
    assert_eq!(wait(&srv, &k, &next)["state"], "done");
}

/// A job's hooks' random streams depend on its seed and the job alone:
/// the same after other tenants' jobs ran, the same as `flexmodel run
/// --seed` of it locally, other with another seed.
#[test]
fn a_jobs_random_streams_depend_on_the_job_alone() {
    let dir = tmp("random");
    let state = dir.join("state");
    let (k, other) = (key(&state, "alice"), key(&state, "bob"));
    let srv = serve(&state, &[], &[]);
    let job = |seed: u64| {
        serde_json::json!({"token_ids": [[1, 2, 3]], "seed": seed, "hooks": [
            upload("bench.wasm", "blocks.0.hook_resid_post", serde_json::json!({"mode": "random"})),
        ]})
    };
    let run = |k: &str, body: &serde_json::Value| {
        let id = submit_ok(&srv, k, body);
        assert_eq!(wait(&srv, k, &id)["state"], "done");
        result(&srv, k, &id, &dir)
    };
    let first = run(&k, &job(7));
    for _ in 0..3 {
        run(&other, &serde_json::json!({"token_ids": [[4, 5, 6, 7]]}));
    }
    let again = run(&k, &job(7));
    let reseeded = run(&k, &job(8));
    let local = dir.join("local.safetensors");
    let model = cli_common::models().join("gpt2-tiny");
    let hook = format!(
        "{}@blocks.0.hook_resid_post={{\"mode\": \"random\"}}",
        artifacts_dir().join("bench.wasm").display()
    );
    cli_common::ok(
        &Command::new(cli_common::bin())
            .args([
                "run",
                "--model",
                s(&model),
                "--token-ids",
                "1,2,3",
                "--seed",
                "7",
            ])
            .args(["--hook", &hook, "--save", s(&local)])
            .output()
            .unwrap(),
    );
    let local = cli_common::saved(&local);
    let draws: Vec<&String> = first
        .keys()
        .filter(|k| k.contains(":uniform") || k.contains(":normal"))
        .collect();
    assert_eq!(draws.len(), 2, "{:?}", first.keys());
    for name in draws {
        assert!(
            first[name].equal(&again[name]),
            "{name}: the same after others' jobs"
        );
        assert!(
            first[name].equal(&local[name]),
            "{name}: the same as `flexmodel run --seed 7`"
        );
        assert!(
            !first[name].equal(&reseeded[name]),
            "{name}: another seed, other draws"
        );
    }
}
