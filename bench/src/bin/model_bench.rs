//! Model-host benchmark (issue 3, P1-P3). Writes its section of BENCHMARKS.md.
//!
//! ```text
//! model-bench [--python PY] [--model-dir DIR] [--artifacts DIR] [--batch 4] [--seq 128]
//!             [--threads 2] [--reps 5] [--out BENCHMARKS.md]
//! ```
//! In one run, with the same random GPT-2-small weights, inputs and thread
//! count: `tests/reference/bench_baselines.py` times transformers (eager) and
//! nnsight in PyTorch, then this binary times FlexModel-rs:
//! - P1: forward without hooks vs transformers eager;
//! - P2: an identity WASM hook on every block output vs no hooks (and a
//!   native Rust hook, and nnsight's identity intervention as the anchor);
//! - P3: retrieving every block's residual stream (the `retrieve` plugin) vs
//!   PyTorch forward hooks doing `.detach().cpu()`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use flexmodel::api::{FlexModel, FnHook, Groups};
use flexmodel::hooks::{Runtime, RuntimeConfig};
use flexmodel::models::Model;
use flexmodel_bench::report;
use tch::{Device, Kind, Tensor};

struct Args {
    python: PathBuf,
    model_dir: PathBuf,
    artifacts: PathBuf,
    batch: i64,
    seq: i64,
    threads: i32,
    reps: usize,
    out: Option<PathBuf>,
}

fn parse() -> Result<Args> {
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = std::env::var("FLEXMODEL_VENV").unwrap_or(format!("{home}/.cache/flexmodel/venv"));
    let mut a = Args {
        python: PathBuf::from(format!("{venv}/bin/python")),
        model_dir: PathBuf::from("artifacts/bench/gpt2-small"),
        artifacts: PathBuf::from("artifacts/wasm"),
        batch: 4,
        seq: 128,
        threads: 2,
        reps: 7,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--python" => a.python = v()?.into(),
            "--model-dir" => a.model_dir = v()?.into(),
            "--artifacts" => a.artifacts = v()?.into(),
            "--batch" => a.batch = v()?.parse()?,
            "--seq" => a.seq = v()?.parse()?,
            "--threads" => a.threads = v()?.parse()?,
            "--reps" => a.reps = v()?.parse()?,
            "--out" => a.out = Some(v()?.into()),
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let a = parse()?;
    let tuned = std::env::var_os("FLEXMODEL_NO_MALLOPT").is_none() && flexmodel::tune_allocator();
    std::fs::create_dir_all(&a.model_dir)?;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/bench_baselines.py");
    let baseline = |tunables: bool| -> Result<serde_json::Value> {
        eprintln!(
            "PyTorch baselines ({} threads, {} allocator)...",
            a.threads,
            if tunables { "tuned" } else { "default" }
        );
        let mut cmd = std::process::Command::new(&a.python);
        if tunables {
            // Our allocator settings, for PyTorch through glibc's tunables.
            cmd.env(
                "GLIBC_TUNABLES",
                "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824:glibc.malloc.arena_max=1",
            );
        } else {
            cmd.env_remove("GLIBC_TUNABLES");
        }
        let out = cmd
            .arg(&script)
            .args([
                a.model_dir.to_str().unwrap_or("."),
                &a.batch.to_string(),
                &a.seq.to_string(),
            ])
            .args([a.threads.to_string(), a.reps.to_string()])
            .output()
            .with_context(|| format!("running {}", a.python.display()))?;
        if !out.status.success() {
            bail!(
                "baseline script failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = out
            .stdout
            .split(|&b| b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .unwrap_or(b"{}");
        Ok(serde_json::from_slice(line)?)
    };
    // As users run PyTorch (default allocator), and with ours.
    let py = baseline(false)?;
    let py_same = if tuned { Some(baseline(true)?) } else { None };
    let get = |k: &str| py.get(k).and_then(|v| v.as_f64());
    let get_same = |k: &str| {
        py_same
            .as_ref()
            .and_then(|p| p.get(k))
            .and_then(|v| v.as_f64())
    };

    tch::set_num_threads(a.threads);
    let ids: Vec<Vec<i64>> = serde_json::from_str(&std::fs::read_to_string(
        a.model_dir.join("bench_ids.json"),
    )?)?;
    let flat: Vec<i64> = ids.concat();
    let ids = Tensor::from_slice(&flat).view([a.batch, a.seq]);
    let model = Model::load(&a.model_dir, Kind::Float, Device::Cpu)?;
    let mut fm = FlexModel::new(model);
    eprintln!("FlexModel-rs...");
    let rt = Runtime::new(RuntimeConfig::default())?;
    let bench = rt.load_file(a.artifacts.join("bench.wasm"))?;
    let retrieve = rt.load_file(a.artifacts.join("retrieve.wasm"))?;
    fm.register_wasm(
        &bench,
        "blocks.*.hook_resid_post",
        r#"{"mode": "noop"}"#,
        &["wasm-identity"],
    )?;
    fm.register(
        Arc::new(FnHook::read_only("native-identity", |_, _, _| Ok(()))),
        "blocks.*.hook_resid_post",
        &["native-identity"],
    )?;
    fm.register_wasm(&retrieve, "blocks.*.hook_resid_post", "{}", &["retrieve"])?;
    // Round-robin over the configurations so that slow drift of the machine
    // affects them alike; one warm-up round first.
    let configs = [
        Groups::only(["none"]),
        Groups::only(["wasm-identity"]),
        Groups::only(["native-identity"]),
        Groups::only(["retrieve"]),
    ];
    let mut times = vec![Vec::new(); configs.len()];
    for round in 0..=a.reps {
        for (i, g) in configs.iter().enumerate() {
            let t = Instant::now();
            fm.forward(&ids, g).map_err(|e| anyhow::anyhow!("{e}"))?;
            if round > 0 {
                times[i].push(t.elapsed().as_secs_f64());
            }
        }
    }
    let [plain, wasm_id, native_id, retr]: [f64; 4] = times
        .into_iter()
        .map(median)
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| anyhow::anyhow!("timings"))?;
    // The same retrieval, stopping after the last block (no final norm, no LM head).
    let mut until = Vec::new();
    for round in 0..=a.reps {
        let t = Instant::now();
        fm.forward_until(
            &ids,
            &Groups::only(["retrieve"]),
            "blocks.*.hook_resid_post",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        if round > 0 {
            until.push(t.elapsed().as_secs_f64());
        }
    }
    let retr_until = median(until);

    let ms = |s: f64| format!("{:.1} ms", s * 1e3);

    let mut md = String::new();
    md.push_str(&format!(
        "## Model host (issue 3) — `model-bench`\n\nMachine: {}. GPT-2-small dimensions (12 × 768, \
         vocab 50257), random weights, f32, batch {} × {} tokens, {} threads on both sides; medians of {} runs. \
         Reproduce: `scripts/bench.sh`.\n\n",
        report::machine(),
        a.batch,
        a.seq,
        a.threads,
        a.reps
    ));
    md.push_str(&format!(
        "glibc allocator: {}.\n\n",
        if tuned {
            "FlexModel-rs runs with mmap threshold 256 MiB, trim threshold 1 GiB and one arena (`flexmodel::tune_allocator()`, \
             as the `flexmodel` binary does); the PyTorch column is PyTorch as users run it (default allocator), \
             and each P1/P3 row also gives the ratio against PyTorch run with the same settings (`GLIBC_TUNABLES`)"
        } else {
            "defaults on both sides (`FLEXMODEL_NO_MALLOPT` set)"
        }
    ));
    md.push_str(
        "FlexModel-rs configurations are timed round-robin in one process; the PyTorch ones in one \
         Python process just before. On CPU, `.detach().cpu()` of a CPU tensor copies nothing, so P3's \
         baseline is essentially the plain forward.\n\n",
    );
    let same = |ours: f64, k: &str| match get_same(k) {
        Some(t) => format!(" (same allocator: {}, {:.2}×)", ms(t), ours / t),
        None => String::new(),
    };
    md.push_str(
        "| measurement | FlexModel-rs | PyTorch | ratio | target |\n|---|---|---|---|---|\n",
    );
    if let Some(hf) = get("eager") {
        md.push_str(&format!(
            "| P1 forward, no hooks (vs transformers eager){} | {} | {} | {:.2}× | ≤ 0.95× |\n",
            same(plain, "eager"),
            ms(plain),
            ms(hf),
            plain / hf
        ));
    }
    md.push_str(&format!(
        "| P2 identity WASM hook on every block output (vs our forward without hooks) | {} | {} | {:.3}× | ≤ 1.05× |\n",
        ms(wasm_id),
        ms(plain),
        wasm_id / plain
    ));
    md.push_str(&format!(
        "| P2 identity native Rust hook on every block output (vs without hooks) | {} | {} | {:.3}× | — |\n",
        ms(native_id),
        ms(plain),
        native_id / plain
    ));
    if let (Some(id), Some(hf)) = (get("identity"), get("eager")) {
        md.push_str(&format!(
            "| P2 anchor: PyTorch identity forward hooks (vs eager) | — | {} | {:.3}× | — |\n",
            ms(id),
            id / hf
        ));
    }
    match (get("nnsight"), get("eager")) {
        (Some(nn), Some(hf)) => md.push_str(&format!(
            "| P2 anchor: nnsight identity intervention on every block output (vs eager) | — | {} | {:.3}× | — |\n",
            ms(nn),
            nn / hf
        )),
        _ => md.push_str(&format!(
            "| P2 anchor: nnsight | — | not measured: {} | — | — |\n",
            py.get("nnsight_error").and_then(|v| v.as_str()).unwrap_or("nnsight not installed")
        )),
    }
    if let Some(hf) = get("detach_cpu") {
        md.push_str(&format!(
            "| P3 retrieve every block's residual stream (vs PyTorch hooks `.detach().cpu()`){} | {} | {} | {:.2}× | ≤ 0.8× |\n",
            same(retr, "detach_cpu"),
            ms(retr),
            ms(hf),
            retr / hf
        ));
        md.push_str(&format!(
            "| P3 the same with `forward_until` the last block (no final norm / LM head; logits not needed){} | {} | {} | {:.2}× | ≤ 0.8× |\n",
            same(retr_until, "detach_cpu"),
            ms(retr_until),
            ms(hf),
            retr_until / hf
        ));
    }
    md.push('\n');
    print!("{md}");
    if let Some(path) = &a.out {
        report::write_section(path, "model-bench", &md)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
