//! service-bench [--model-dir artifacts/smollm2-135m-instruct] [--artifacts artifacts/wasm]
//!               [--reps 9] [--rounds 3] [--out BENCHMARKS.md]
//!
//! The hook service (issue 13), on real processes over loopback:
//! - P11: a job of 4 prompts × 128 tokens through `flexmodel serve`
//!   (submit, its event stream, the result fetched) vs the same run
//!   in-process (`FlexModel`: the same plugin registered, the forward, the
//!   plugin removed, the result saved to a file as `flexmodel run --save`);
//!   interleaved, the median of per-pair ratios. Two jobs: a `retrieve` of
//!   each prompt's last-token residual (no logits), and the logits alone
//!   (4 × 128 × vocab floats written, served and read).
//! - Throughput: 8 and 32 tenants, each submitting short-prompt jobs one
//!   after the other (closed loop), against a server batching compatible
//!   jobs together (co-tenancy batching) and one running them one at a
//!   time; rounds alternate between the two; jobs/s (median of rounds, and
//!   of per-round ratios) and the queue wait (`queued_ms`) p50/p99 over
//!   every job.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use flexmodel::api::{Batch, FlexModel, Groups, Padding, save_safetensors_with};
use flexmodel::hooks::{CpuLimit, Runtime, RuntimeConfig};
use flexmodel::service::client::Client;
use flexmodel_bench::report;
use flexmodel_bench::service::{Server, add_key, run};

struct Args {
    model_dir: PathBuf,
    artifacts: PathBuf,
    reps: usize,
    rounds: usize,
    out: Option<PathBuf>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        model_dir: PathBuf::from("artifacts/smollm2-135m-instruct"),
        artifacts: PathBuf::from("artifacts/wasm"),
        reps: 9,
        rounds: 3,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--model-dir" => a.model_dir = v()?.into(),
            "--artifacts" => a.artifacts = v()?.into(),
            "--reps" => a.reps = v()?.parse()?,
            "--rounds" => a.rounds = v()?.parse()?,
            "--out" => a.out = Some(v()?.into()),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Deterministic token ids: `rows` prompts of `len` tokens.
fn prompts(rows: usize, len: usize, vocab: i64, salt: usize) -> Vec<Vec<i64>> {
    (0..rows)
        .map(|r| {
            (0..len)
                .map(|j| {
                    ((r * 7919 + j * 104_729 + salt * 31) as i64 * 2_654_435_761 % vocab).abs()
                })
                .collect()
        })
        .collect()
}

const POINT: &str = "blocks.15.hook_resid_post";

/// P11 rows: (job, service ms, in-process ms, ratio).
fn p11(a: &Args, retrieve: &[u8]) -> Result<Vec<(String, f64, f64, f64)>> {
    let state = std::env::temp_dir().join(format!("fm-bench-p11-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let key = add_key(&state, "bench")?;
    let srv = Server::start(&a.model_dir, &state, &[])?;
    let client = Client::new(&srv.url, &key, None)?;
    let fetched = state.join("fetched.safetensors");
    let mut fm = FlexModel::load(&a.model_dir, tch::Kind::Float, tch::Device::Cpu)?;
    let rt = Runtime::new(RuntimeConfig {
        cpu: CpuLimit::Fuel(4_000_000_000),
        ..RuntimeConfig::default()
    })?;
    let rows = prompts(4, 128, fm.vocab_size(), 0);
    let saved = state.join("in-process.safetensors");
    let config = r#"{"slice": [null, -1]}"#;
    let b64 = base64::engine::general_purpose::STANDARD.encode(retrieve);
    let jobs = [
        (
            "retrieve last-token residual, no logits",
            serde_json::json!({"token_ids": rows, "return_logits": false, "hooks": [
                {"component": b64, "at": POINT, "config": {"slice": [null, -1]}}]}),
            true,
        ),
        ("logits only", serde_json::json!({"token_ids": rows}), false),
    ];
    let mut out = Vec::new();
    for (name, body, hooked) in jobs {
        let (mut svc, mut inp, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..=a.reps {
            // The other process' OpenMP threads spin a while after their
            // last parallel region: let them sleep before timing.
            std::thread::sleep(Duration::from_millis(500));
            let t = Instant::now();
            let ended = run(&client, &body, &fetched)?;
            let s = t.elapsed().as_secs_f64();
            if ended.bytes == 0 {
                bail!("an empty result");
            }
            std::thread::sleep(Duration::from_millis(500));
            let t = Instant::now();
            let h = if hooked {
                let plugin = rt.load(retrieve)?;
                Some(fm.register_wasm(&plugin, POINT, config, &["p11"])?)
            } else {
                None
            };
            let o = fm.forward(&Batch::pad(&rows, Padding::Right, 0)?, &Groups::All)?;
            if let Some(h) = h {
                fm.remove(h);
            }
            // What `flexmodel run --save` does with it: one file.
            let mut tensors = std::collections::BTreeMap::new();
            if hooked {
                tensors.extend(o.outputs);
            } else {
                for j in 0..rows.len() {
                    tensors.insert(format!("{j}/logits"), o.logits.narrow(0, j as i64, 1));
                }
            }
            save_safetensors_with(&saved, &tensors, &o.producers, &Default::default())?;
            let i = t.elapsed().as_secs_f64();
            eprintln!(
                "  {name} rep {rep}: service {:.1} ms (its run {} ms), in-process {:.1} ms",
                s * 1e3,
                ended.status["run_ms"],
                i * 1e3
            );
            if rep > 0 {
                svc.push(s * 1e3);
                inp.push(i * 1e3);
                ratios.push(s / i);
            }
        }
        let row = (name.to_string(), median(svc), median(inp), median(ratios));
        println!(
            "P11 {}: service {:.1} ms, in-process {:.1} ms, {:.3}×",
            row.0, row.1, row.2, row.3
        );
        out.push(row);
    }
    Ok(out)
}

/// The batch size (`batch_jobs`) of every job of the last round.
static BATCHED: std::sync::Mutex<Vec<f64>> = std::sync::Mutex::new(Vec::new());

/// One round of load: `tenants` clients, `jobs` jobs each; (jobs/s, queue
/// waits in ms).
fn load(
    srv: &Server,
    keys: &[String],
    jobs: usize,
    body: &serde_json::Value,
) -> Result<(f64, Vec<f64>)> {
    let t = Instant::now();
    let waits: Result<Vec<Vec<f64>>> = std::thread::scope(|sc| {
        let hs: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                sc.spawn(move || -> Result<Vec<f64>> {
                    let c = Client::new(&srv.url, k, None)?;
                    let save = std::env::temp_dir().join(format!(
                        "fm-bench-load-{}-{i}.safetensors",
                        std::process::id()
                    ));
                    let waits = (0..jobs)
                        .map(|_| {
                            let e = run(&c, body, &save)?;
                            let n = e.status["batch_jobs"].as_f64().unwrap_or(1.0);
                            BATCHED.lock().unwrap_or_else(|p| p.into_inner()).push(n);
                            Ok(e.status["queued_ms"].as_f64().unwrap_or(0.0))
                        })
                        .collect();
                    let _ = std::fs::remove_file(&save);
                    waits
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("a client thread panicked"))
            .collect()
    });
    let waits: Vec<f64> = waits?.into_iter().flatten().collect();
    Ok((waits.len() as f64 / t.elapsed().as_secs_f64(), waits))
}

/// Throughput rows: (tenants, batched jobs/s, alone jobs/s, ratio, p50/p99 waits batched, alone).
#[allow(clippy::type_complexity)]
fn throughput(
    a: &Args,
    retrieve: &[u8],
) -> Result<Vec<(usize, f64, f64, f64, (f64, f64), (f64, f64))>> {
    let base = std::env::temp_dir().join(format!("fm-bench-tput-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (sa, sb) = (base.join("batched"), base.join("alone"));
    let keys = |state: &PathBuf| -> Result<Vec<String>> {
        (0..32).map(|i| add_key(state, &format!("t{i}"))).collect()
    };
    let (ka, kb) = (keys(&sa)?, keys(&sb)?);
    let batched = Server::start(
        &a.model_dir,
        &sa,
        &[
            "--batch-jobs",
            "32",
            "--batch-rows",
            "64",
            "--batch-wait-ms",
            "25",
        ],
    )?;
    let alone = Server::start(&a.model_dir, &sb, &["--batch-jobs", "1"])?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(retrieve);
    let body = serde_json::json!({"token_ids": prompts(1, 8, 49152, 1), "return_logits": false,
        "hooks": [{"component": b64, "at": POINT, "config": {"slice": [null, -1]}}]});
    // Warm both (compile cache, first forward).
    load(&batched, &ka[..2], 2, &body)?;
    load(&alone, &kb[..2], 2, &body)?;
    let mut out = Vec::new();
    for (tenants, jobs) in [(8, 8), (32, 3)] {
        let (mut ra, mut rb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut wa, mut wb) = (Vec::new(), Vec::new());
        for _ in 0..a.rounds {
            BATCHED.lock().unwrap_or_else(|p| p.into_inner()).clear();
            let (x, w) = load(&batched, &ka[..tenants], jobs, &body)?;
            wa.extend(w);
            let sizes = std::mem::take(&mut *BATCHED.lock().unwrap_or_else(|p| p.into_inner()));
            eprintln!(
                "  {tenants} tenants, batching: {x:.1} jobs/s, a job's batch of {:.1} jobs on average",
                sizes.iter().sum::<f64>() / sizes.len().max(1) as f64
            );
            let (y, w) = load(&alone, &kb[..tenants], jobs, &body)?;
            wb.extend(w);
            ra.push(x);
            rb.push(y);
            ratios.push(x / y);
        }
        let row = (
            tenants,
            median(ra),
            median(rb),
            median(ratios),
            (pct(wa.clone(), 0.5), pct(wa, 0.99)),
            (pct(wb.clone(), 0.5), pct(wb, 0.99)),
        );
        println!(
            "{tenants} tenants: batched {:.1} jobs/s, one at a time {:.1} jobs/s, {:.2}×; queue wait p50/p99 {:.0}/{:.0} ms vs {:.0}/{:.0} ms",
            row.1, row.2, row.3, row.4.0, row.4.1, row.5.0, row.5.1
        );
        out.push(row);
    }
    Ok(out)
}

fn main() -> Result<()> {
    let a = args()?;
    let retrieve = std::fs::read(a.artifacts.join("retrieve.wasm"))
        .with_context(|| format!("{}: run scripts/build-guests.sh", a.artifacts.display()))?;
    // SERVICE_BENCH_ONLY=p11|throughput runs one part (nothing is written).
    let only = std::env::var("SERVICE_BENCH_ONLY").unwrap_or_default();
    if only == "throughput" {
        throughput(&a, &retrieve)?;
        return Ok(());
    }
    let p = p11(&a, &retrieve)?;
    if only == "p11" {
        return Ok(());
    }
    let t = throughput(&a, &retrieve)?;
    let mut md = format!(
        "## Hook service (issue 13) — `service-bench`\n\n{}; model `{}` (f32, CPU); `flexmodel serve` \
         on loopback, SQLite in WAL mode with `synchronous = FULL`. Medians of {} interleaved pairs \
         (P11) and of {} alternating rounds (throughput). The batching server: `--batch-jobs 32 \
         --batch-wait-ms 25`; the other: `--batch-jobs 1`. Queue wait: accepted → its batch starts \
         (through the batch window).\n\n\
         | P11: 4 × 128 tokens | service | in-process | ratio (target ≤ 1.05×) |\n|---|---|---|---|\n",
        report::machine(),
        a.model_dir.display(),
        a.reps,
        a.rounds
    );
    for (name, s, i, r) in &p {
        md += &format!("| {name} | {s:.1} ms | {i:.1} ms | {r:.3}× |\n");
    }
    md += "\n| tenants (8-token jobs, `retrieve`) | co-tenancy batching | one at a time | ratio (target ≥ 3× at 8) | queue wait p50 / p99, batching | one at a time |\n|---|---|---|---|---|---|\n";
    for (n, x, y, r, wa, wb) in &t {
        md += &format!(
            "| {n} | {x:.1} jobs/s | {y:.1} jobs/s | {r:.2}× | {:.0} / {:.0} ms | {:.0} / {:.0} ms |\n",
            wa.0, wa.1, wb.0, wb.1
        );
    }
    print!("{md}");
    if let Some(out) = &a.out {
        report::write_section(out, "service-bench", &md)?;
    }
    Ok(())
}
