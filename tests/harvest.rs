//! `flexmodel harvest`: the shards hold, for every token of the data
//! exactly once, each point's activation as the token's row computes it
//! alone; killed mid-run and rerun, it continues and the union is the same;
//! under `--dp` (threads or `mpirun`) each replica writes its own shards of
//! the same tokens, listed in one manifest, and resumes where it stood; bad
//! input is a one-line error that changes nothing already written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flexmodel::models::{Model, SingleRank};
use flexmodel_tests::{Capture, max_abs, model_dir};
use tch::{Device, Kind, Tensor};

fn bin() -> PathBuf {
    // Tests run from target/<profile>/deps; the binary is in target/<profile>.
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("flexmodel")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fm-harvest-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

/// `docs` documents of random token ids (1..100) of 1..40 tokens.
fn data(dir: &Path, docs: usize, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut x = seed;
    let mut next = |m: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    let mut text = String::new();
    for _ in 0..docs {
        let n = 1 + next(40);
        let ids: Vec<String> = (0..n).map(|_| (1 + next(99)).to_string()).collect();
        text.push_str(&format!("{{\"token_ids\": [{}]}}\n", ids.join(", ")));
    }
    let p = dir.join("data.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

const POINTS: &str = "blocks.0.hook_resid_post,blocks.1.attn.hook_z";

/// The harvest command with the test's defaults, `extra` overriding them.
fn harvest(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(["harvest", "--model"])
        .arg(model_dir("gpt2-tiny"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--points", POINTS]);
    for (flag, value) in [
        ("--context", "16"),
        ("--shard-tokens", "100"),
        ("--batch-size", "4"),
    ] {
        if !extra.contains(&flag) {
            c.args([flag, value]);
        }
    }
    c.args(extra);
    c
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every shard's tensors, concatenated in shard order.
fn union(out: &Path) -> BTreeMap<String, Tensor> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["complete"], true);
    let mut parts: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
    let mut total = 0;
    for s in m["shards"].as_array().unwrap() {
        let file = out.join(s["file"].as_str().unwrap());
        for (k, v) in Tensor::read_safetensors(&file).unwrap() {
            if k == "token_ids" {
                assert_eq!(
                    v.size()[0],
                    s["tokens"].as_i64().unwrap(),
                    "listed token count"
                );
                total += v.size()[0];
            }
            parts.entry(k).or_default().push(v);
        }
    }
    assert_eq!(total, m["total_tokens"].as_i64().unwrap());
    parts
        .into_iter()
        .map(|(k, v)| (k, Tensor::cat(&v, 0)))
        .collect()
}

/// `u` reordered by (document, position): the order every layout shares
/// (replicas write their own rows of each batch, so shard order differs).
fn by_token(u: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let key = &u["doc_index"] * 1_000_000 + &u["position"];
    let order = key.argsort(0, false);
    u.iter()
        .map(|(k, t)| (k.clone(), t.index_select(0, &order)))
        .collect()
}

/// The manifest's shard files, and which replica wrote each.
fn listed(out: &Path) -> Vec<(String, u64)> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    m["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let replica = s["replica"].as_u64().unwrap();
            (s["file"].as_str().unwrap().to_string(), replica)
        })
        .collect()
}

/// Two data-parallel replicas wrote their own shards, named for them, one
/// manifest lists them all, and no progress file is left.
fn check_per_replica(out: &Path) {
    let l = listed(out);
    for r in 0..2 {
        let mine: Vec<&(String, u64)> = l.iter().filter(|(_, x)| *x == r).collect();
        assert!(mine.len() >= 2, "replica {r} wrote shards: {l:?}");
        for (k, (f, _)) in mine.iter().enumerate() {
            assert_eq!(f, &format!("shard-dp{r}-{k:05}.safetensors"));
        }
    }
    let progress: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.starts_with("progress").then_some(n)
        })
        .collect();
    assert!(progress.is_empty(), "{progress:?}");
}

/// Each token once, and each point's row equal to its row run alone.
fn check_against_alone(u: &BTreeMap<String, Tensor>, context: i64) {
    let ids: Vec<i64> = Vec::try_from(&u["token_ids"]).unwrap();
    let docs: Vec<i64> = Vec::try_from(&u["doc_index"]).unwrap();
    let pos: Vec<i64> = Vec::try_from(&u["position"]).unwrap();
    let keys: BTreeSet<(i64, i64)> = docs.iter().copied().zip(pos.iter().copied()).collect();
    assert_eq!(keys.len(), ids.len(), "no token twice");
    let model = Model::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
    // Rows: (doc, position / context) -> token indices in order.
    let mut rows: BTreeMap<(i64, i64), Vec<usize>> = BTreeMap::new();
    for i in 0..ids.len() {
        rows.entry((docs[i], pos[i] / context)).or_default().push(i);
    }
    for ((doc, chunk), idx) in rows.iter().take(40) {
        let row_ids: Vec<i64> = idx.iter().map(|&i| ids[i]).collect();
        assert!(
            idx.windows(2).all(|w| pos[w[1]] == pos[w[0]] + 1),
            "doc {doc} chunk {chunk}: contiguous"
        );
        let mut c = Capture::default();
        let _logits = model
            .forward_stage(
                &Tensor::from_slice(&row_ids).view([1, -1]),
                None,
                &mut c,
                &SingleRank,
                None,
                None,
            )
            .unwrap();
        let at = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
        for p in ["transformer.h.0", "transformer.h.1.attn.hook_z"] {
            let got = u[p].index_select(0, &at);
            let want = c.0[p].get(0).reshape([idx.len() as i64, -1]);
            let d = max_abs(&got, &want);
            assert!(d <= 1e-4, "doc {doc} chunk {chunk} {p}: {d}");
        }
    }
}

#[test]
fn shards_hold_every_real_token_once_as_its_row_alone() {
    let dir = tmp("once");
    let d = data(&dir, 40, 1);
    let out = dir.join("out");
    let s = ok(&harvest(&d, &out, &[]).output().unwrap());
    assert!(s.contains("harvested"), "{s}");
    let u = union(&out);
    assert_eq!(u["transformer.h.0"].size()[1], 64, "[tokens, width]");
    check_against_alone(&u, 16);
    // Padded on the left, and on two data-parallel replicas (each writing
    // its own shards; with pipeline stages, a replica's first rank gathers
    // its stages' points): the same tokens and activations.
    let want = by_token(&u);
    let layouts = [
        &["--padding", "left"][..],
        &["--dp", "2"][..],
        &["--dp", "2", "--pp", "2"][..],
        &["--dp", "2", "--tp", "2"][..],
    ];
    for extra in layouts {
        let o2 = dir.join(format!("out{}", extra.join("")));
        ok(&harvest(&d, &o2, extra).output().unwrap());
        let v = by_token(&union(&o2));
        for (k, t) in &want {
            assert!(max_abs(t, &v[k]) <= 1e-4, "{extra:?} {k}");
        }
        if extra[0] == "--dp" {
            check_per_replica(&o2);
        }
    }
    // A rerun of a complete harvest changes nothing.
    let before = std::fs::read(out.join("manifest.json")).unwrap();
    ok(&harvest(&d, &out, &[]).output().unwrap());
    assert_eq!(before, std::fs::read(out.join("manifest.json")).unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn killed_mid_run_it_resumes_and_the_union_is_every_token_once() {
    killed_and_resumed("kill", &[]);
}

/// Each of two replicas lists its shards in its own progress file while
/// it runs; killed at any moment, every replica resumes where it stood.
#[test]
fn killed_mid_run_on_two_replicas_each_resumes_where_it_stood() {
    killed_and_resumed("kill-dp", &["--dp", "2"]);
}

fn killed_and_resumed(name: &str, extra: &[&str]) {
    let dir = tmp(name);
    let d = data(&dir, 600, 2);
    let full = dir.join("full");
    ok(&harvest(&d, &full, &[]).output().unwrap());
    let want = by_token(&union(&full));
    let out = dir.join("out");
    let mut killed = 0;
    for round in 0..4 {
        let mut child = harvest(&d, &out, extra).spawn().unwrap();
        // Kill it once a few more shards are listed than before (in the
        // manifest, or in the replicas' progress files).
        let t0 = Instant::now();
        let listed = |out: &Path| {
            ["manifest.json", "progress-dp0.json", "progress-dp1.json"]
                .iter()
                .map(|f| {
                    std::fs::read_to_string(out.join(f))
                        .map(|s| s.matches("shard-").count())
                        .unwrap_or(0)
                })
                .max()
                .unwrap_or(0)
        };
        let start = listed(&out);
        while listed(&out) < start + 3 + round && t0.elapsed() < Duration::from_secs(60) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
    }
    assert!(killed > 0, "the harvest was killed mid-run at least once");
    ok(&harvest(&d, &out, extra).output().unwrap());
    let got = by_token(&union(&out));
    for k in ["token_ids", "doc_index", "position"] {
        assert!(got[k].equal(&want[k]), "{k}: every token once");
    }
    if !extra.is_empty() {
        check_per_replica(&out);
    }
    for k in ["transformer.h.0", "transformer.h.1.attn.hook_z"] {
        assert!(max_abs(&got[k], &want[k]) <= 1e-4, "{k}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Every file in `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn fails(c: &mut Command, what: &str) -> String {
    let o = c.output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(e.trim().lines().count(), 1, "{what}: one line: {e}");
    e
}

#[test]
fn bad_input_is_one_line_and_changes_nothing_written() {
    let dir = tmp("bad");
    let d = data(&dir, 30, 3);
    let out = dir.join("out");
    ok(&harvest(&d, &out, &["--shard-tokens", "50"])
        .output()
        .unwrap());
    let before = snapshot(&out);
    let e = fails(
        Command::new(bin())
            .args(["harvest", "--model"])
            .arg(model_dir("gpt2-tiny"))
            .arg("--data")
            .arg(&d)
            .arg("--out")
            .arg(dir.join("x"))
            .args(["--points", "blocks.9.nothing"]),
        "unknown point",
    );
    assert!(e.contains("blocks.9.nothing"), "{e}");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let e = fails(&mut harvest(&empty, &dir.join("y"), &[]), "empty data");
    assert!(e.contains("no documents"), "{e}");
    // Other arguments against an existing harvest: refused.
    let e = fails(
        &mut harvest(&d, &out, &["--context", "8"]),
        "foreign manifest",
    );
    assert!(e.contains("something else"), "{e}");
    // A non-empty folder that is not a harvest.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let e = fails(&mut harvest(&d, &other, &[]), "foreign folder");
    assert!(e.contains("not empty"), "{e}");
    assert_eq!(
        std::fs::read_to_string(other.join("notes.txt")).unwrap(),
        "mine"
    );
    // A corrupt shard: refused on resume, nothing touched.
    let shard = out.join("shard-00001.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&shard, &bytes).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    m["complete"] = false.into();
    std::fs::write(out.join("manifest.json"), m.to_string()).unwrap();
    let corrupted = snapshot(&out);
    let e = fails(
        &mut harvest(&d, &out, &["--shard-tokens", "50"]),
        "corrupt shard",
    );
    assert!(e.contains("shard-00001") && e.contains("SHA-256"), "{e}");
    assert_eq!(snapshot(&out), corrupted, "nothing changed");
    assert_ne!(before, corrupted);
    // A harvest under way on one replica, resumed on two (whose rows of
    // each batch differ): refused.
    let e = fails(
        &mut harvest(&d, &out, &["--shard-tokens", "50", "--dp", "2"]),
        "other replicas",
    );
    assert!(e.contains("--dp 1"), "{e}");
    assert_eq!(snapshot(&out), corrupted, "nothing changed");
    std::fs::remove_dir_all(&dir).ok();
}

/// Under `mpirun` (two data-parallel replicas, one process each): the same
/// shards as one rank, one manifest; rerun after a kill, every rank resumes
/// at the same row.
#[test]
fn mpirun_dp2_harvests_the_same_and_resumes() {
    let dir = tmp("mpi");
    let d = data(&dir, 200, 4);
    let one = dir.join("one");
    ok(&harvest(&d, &one, &[]).output().unwrap());
    let want = union(&one);
    let out = dir.join("mpi");
    let mpi = |out: &Path| {
        let h = harvest(&d, out, &["--dp", "2"]);
        let mut c = Command::new("mpirun");
        c.args(["--oversubscribe", "--bind-to", "none", "-np", "2"])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_plm", "isolated")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
            .arg(h.get_program())
            .args(h.get_args());
        c
    };
    // Each process wrote its replica's shards.
    ok(&mpi(&out).output().unwrap());
    check_per_replica(&out);
    // A first run cut short, the replicas not as far as each other: replica
    // 0 keeps its first two shards, replica 1 its first one.
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let kept: Vec<serde_json::Value> = m["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            let f = s["file"].as_str().unwrap();
            ["shard-dp0-00000", "shard-dp0-00001", "shard-dp1-00000"]
                .iter()
                .any(|k| f.starts_with(k))
        })
        .cloned()
        .collect();
    assert_eq!(kept.len(), 3);
    m["shards"] = serde_json::Value::Array(kept);
    m["complete"] = false.into();
    std::fs::write(out.join("manifest.json"), m.to_string()).unwrap();
    let s = ok(&mpi(&out).output().unwrap());
    assert_eq!(s.matches("harvested").count(), 1, "rank 0 reports: {s}");
    check_per_replica(&out);
    let got = by_token(&union(&out));
    let want = by_token(&want);
    for k in ["token_ids", "doc_index", "position"] {
        assert!(got[k].equal(&want[k]), "{k}");
    }
    for k in ["transformer.h.0", "transformer.h.1.attn.hook_z"] {
        assert!(max_abs(&got[k], &want[k]) <= 1e-4, "{k}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
