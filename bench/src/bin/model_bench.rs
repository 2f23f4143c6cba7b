//! Model-host benchmark (issue 3, P1-P3; issue 10: interleaved, peak RSS).
//! Writes its section of BENCHMARKS.md.
//!
//! ```text
//! model-bench [--python PY] [--model-dir DIR] [--artifacts DIR] [--batch 4] [--seq 128]
//!   [--device cpu|cuda] [--dtype f32|bf16|f16]
//!             [--threads 2] [--reps 7] [--out BENCHMARKS.md]
//! ```
//! With the same random GPT-2-small weights, inputs and thread count, our
//! runs and PyTorch's alternate in one session: a persistent Python worker
//! (`tests/reference/bench_worker.py`, one per allocator setting) runs one
//! configuration per request, right after ours. Each ratio is the median of
//! per-pair ratios (ours / the PyTorch run next to it):
//! - P1: forward without hooks vs transformers eager;
//! - P2: an identity WASM hook on every block output vs no hooks (and a
//!   native Rust hook; PyTorch hooks and nnsight as anchors);
//! - P3: retrieving every block's residual stream (the `retrieve` plugin) vs
//!   PyTorch forward hooks doing `.detach().cpu()`.
//!
//! Peak RSS of one load and one forward, ours and transformers', each in a
//! fresh process.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use flexmodel::api::{FlexModel, FnHook, Groups};
use flexmodel::hooks::{Runtime, RuntimeConfig};
use flexmodel_bench::place::Place;
use flexmodel_bench::report;
use flexmodel_bench::worker::{self, Worker};
use tch::Tensor;

struct Args {
    python: PathBuf,
    model_dir: PathBuf,
    artifacts: PathBuf,
    batch: i64,
    seq: i64,
    threads: i32,
    reps: usize,
    out: Option<PathBuf>,
    rss_child: bool,
    place: Place,
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
        rss_child: false,
        place: Place::default(),
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
            "--rss-child" => a.rss_child = true,
            "--device" => a.place.set_device(&v()?)?,
            "--dtype" => a.place.set_dtype(&v()?)?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn python(a: &Args, tunables: bool) -> Command {
    let mut cmd = worker::command(&a.python, &a.model_dir, a.batch, a.seq, a.threads, tunables);
    a.place.on(&mut cmd);
    cmd
}

/// This process's peak resident set (`VmHWM`: per address space, so not
/// inherited from the parent as `getrusage`'s `ru_maxrss` is across fork
/// and exec).
fn peak_rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kib * 1024)
}

fn ids(a: &Args) -> Result<Tensor> {
    let ids: Vec<Vec<i64>> = serde_json::from_str(&std::fs::read_to_string(
        a.model_dir.join("bench_ids.json"),
    )?)?;
    Ok(Tensor::from_slice(&ids.concat()).view([a.batch, a.seq]))
}

/// `--rss-child`: load the model, run one forward, print the peak RSS.
fn rss_child(a: &Args) -> Result<()> {
    tch::set_num_threads(a.threads);
    let mut fm = FlexModel::load(&a.model_dir, a.place.kind, a.place.device)?;
    fm.forward(&ids(a)?, &Groups::All)?;
    let peak = peak_rss_bytes()?;
    println!("{}", serde_json::json!({ "peak_rss_bytes": peak }));
    Ok(())
}

fn last_json(out: &[u8]) -> Result<serde_json::Value> {
    let line = out
        .split(|&b| b == b'\n')
        .rfind(|l| l.starts_with(b"{"))
        .unwrap_or(b"{}");
    Ok(serde_json::from_slice(line)?)
}

/// Peak RSS of one load and forward, ours and transformers', each in a
/// fresh process, alternately `RSS_PAIRS` times: (ours, theirs) per pair.
fn peak_rss(a: &Args) -> Result<Pairs> {
    let exe = std::env::current_exe()?;
    let get = |o: &std::process::Output, who: &str| -> Result<f64> {
        if !o.status.success() {
            bail!("{who}: {}", String::from_utf8_lossy(&o.stderr));
        }
        last_json(&o.stdout)?["peak_rss_bytes"]
            .as_f64()
            .ok_or_else(|| anyhow!("{who}: no peak RSS reported"))
    };
    let mut pairs = Pairs::default();
    for _ in 0..RSS_PAIRS {
        let ours = Command::new(&exe)
            .args([
                "--rss-child",
                "--model-dir",
                a.model_dir.to_str().unwrap_or("."),
            ])
            .args(["--batch", &a.batch.to_string(), "--seq", &a.seq.to_string()])
            .args(["--threads", &a.threads.to_string()])
            .output()?;
        let theirs = python(a, false).arg("--rss").output()?;
        pairs.push(
            get(&ours, "model-bench --rss-child")?,
            get(&theirs, "bench_worker.py --rss")?,
        );
    }
    Ok(pairs)
}

const RSS_PAIRS: usize = 5;

/// One row's samples: per-pair ratios and the two sides' times.
#[derive(Default)]
struct Pairs {
    ratios: Vec<f64>,
    ours: Vec<f64>,
    theirs: Vec<f64>,
}

impl Pairs {
    fn push(&mut self, ours: f64, theirs: f64) {
        self.ratios.push(ours / theirs);
        self.ours.push(ours);
        self.theirs.push(theirs);
    }
}

fn main() -> Result<()> {
    let a = parse()?;
    let tuned = std::env::var_os("FLEXMODEL_NO_MALLOPT").is_none() && flexmodel::tune_allocator();
    if a.rss_child {
        return rss_child(&a);
    }
    std::fs::create_dir_all(&a.model_dir)?;
    eprintln!("PyTorch workers ({} threads)...", a.threads);
    let mut py = Worker::start(python(&a, false))?;
    let mut py_same = if tuned {
        Some(Worker::start(python(&a, true))?)
    } else {
        None
    };
    tch::set_num_threads(a.threads);
    let ids = ids(&a)?;
    let mut fm = FlexModel::load(&a.model_dir, a.place.kind, a.place.device)?;
    let rt = Runtime::new(RuntimeConfig::default())?;
    let bench = rt.load_file(a.artifacts.join("bench.wasm"))?;
    let retrieve = rt.load_file(a.artifacts.join("retrieve.wasm"))?;
    let blocks = "blocks.*.hook_resid_post";
    fm.register_wasm(&bench, blocks, r#"{"mode": "noop"}"#, &["wasm-identity"])?;
    let native = Arc::new(FnHook::read_only("native-identity", |_, _, _| Ok(())));
    fm.register(native, blocks, &["native-identity"])?;
    fm.register_wasm(&retrieve, blocks, "{}", &["retrieve"])?;
    let r = measure(&a, &mut fm, &ids, &mut py, py_same.as_mut())?;
    drop(py);
    drop(py_same);
    eprintln!("peak RSS...");
    // Host memory is not what a GPU run is about (and each fresh process
    // would load the model again): on CUDA, no RSS row.
    let rss = if a.place.device.is_cuda() {
        Pairs::default()
    } else {
        peak_rss(&a)?
    };
    let md = render(&a, tuned, &r, &rss);
    print!("{md}");
    if let Some(path) = &a.out {
        report::write_section(path, &section(&a.model_dir, &a.place), &md)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Everything measured, by row.
#[derive(Default)]
struct Measured {
    p1: Pairs,
    p1_same: Pairs,
    p2_wasm: Pairs,
    p2_native: Pairs,
    p3: Pairs,
    p3_same: Pairs,
    p3_until: Pairs,
    anchor_hooks: Pairs,
    anchor_nnsight: Pairs,
    nnsight_error: Option<String>,
}

fn secs(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Rounds (one warm-up first) of: each of our configurations, each right
/// before the PyTorch run it is compared with.
fn measure(
    a: &Args,
    fm: &mut FlexModel,
    ids: &Tensor,
    py: &mut Worker,
    mut py_same: Option<&mut Worker>,
) -> Result<Measured> {
    let mut m = Measured::default();
    let fwd = |fm: &mut FlexModel, g: &Groups| {
        secs(|| {
            fm.forward(ids, g).map_err(|e| anyhow!("{e}"))?;
            a.place.sync();
            Ok(())
        })
    };
    let pyrun = |w: &mut Worker, c: &str| w.run(c)?.map_err(|e| anyhow!("{c}: {e}"));
    for round in 0..=a.reps {
        let keep = round > 0;
        let plain = fwd(fm, &Groups::only(["none"]))?;
        let eager = pyrun(py, "eager")?;
        let eager_same = match py_same.as_deref_mut() {
            Some(w) => Some(pyrun(w, "eager")?),
            None => None,
        };
        let wasm = fwd(fm, &Groups::only(["wasm-identity"]))?;
        let native = fwd(fm, &Groups::only(["native-identity"]))?;
        let retr = fwd(fm, &Groups::only(["retrieve"]))?;
        let detach = pyrun(py, "detach_cpu")?;
        let detach_same = match py_same.as_deref_mut() {
            Some(w) => Some(pyrun(w, "detach_cpu")?),
            None => None,
        };
        let until = secs(|| {
            fm.forward_until(ids, &Groups::only(["retrieve"]), "blocks.*.hook_resid_post")
                .map_err(|e| anyhow!("{e}"))?;
            a.place.sync();
            Ok(())
        })?;
        let hooks = pyrun(py, "identity")?;
        let nnsight = py.run("nnsight")?;
        if !keep {
            continue;
        }
        m.p1.push(plain, eager);
        m.p2_wasm.push(wasm, plain);
        m.p2_native.push(native, plain);
        m.p3.push(retr, detach);
        m.p3_until.push(until, detach);
        m.anchor_hooks.push(hooks, eager);
        if let (Some(e), Some(d)) = (eager_same, detach_same) {
            m.p1_same.push(plain, e);
            m.p3_same.push(retr, d);
        }
        match nnsight {
            Ok(s) => m.anchor_nnsight.push(s, eager),
            Err(e) => m.nnsight_error = Some(e),
        }
    }
    Ok(m)
}

fn row(md: &mut String, what: &str, p: &Pairs, same: Option<&Pairs>, target: &str) {
    let ms = |v: &[f64]| format!("{:.1} ms", median(v.to_vec()) * 1e3);
    let same = match same {
        Some(s) if !s.ratios.is_empty() => format!(
            " (PyTorch with the same allocator: {}, {:.2}×)",
            ms(&s.theirs),
            median(s.ratios.clone())
        ),
        _ => String::new(),
    };
    md.push_str(&format!(
        "| {what}{same} | {} | {} | {:.3}× | {target} |\n",
        ms(&p.ours),
        ms(&p.theirs),
        median(p.ratios.clone())
    ));
}

/// The table's header and timing rows.
fn rows(md: &mut String, m: &Measured) {
    md.push_str(
        "| measurement | FlexModel-rs | baseline | ratio | target |\n|---|---|---|---|---|\n",
    );
    row(
        md,
        "P1 forward, no hooks (vs transformers eager)",
        &m.p1,
        Some(&m.p1_same),
        "≤ 0.95×",
    );
    row(
        md,
        "P2 identity WASM hook on every block output (vs our forward without hooks)",
        &m.p2_wasm,
        None,
        "≤ 1.05×",
    );
    row(
        md,
        "P2 identity native Rust hook on every block output (vs without hooks)",
        &m.p2_native,
        None,
        "—",
    );
    row(
        md,
        "P2 anchor: PyTorch identity forward hooks (vs eager; both PyTorch)",
        &m.anchor_hooks,
        None,
        "—",
    );
    match &m.nnsight_error {
        Some(e) if m.anchor_nnsight.ratios.is_empty() => md.push_str(&format!(
            "| P2 anchor: nnsight | — | not measured: {e} | — | — |\n"
        )),
        _ => row(
            md,
            "P2 anchor: nnsight identity intervention on every block output (vs eager; both PyTorch)",
            &m.anchor_nnsight,
            None,
            "—",
        ),
    }
    row(
        md,
        "P3 retrieve every block's residual stream (vs PyTorch hooks `.detach().cpu()`)",
        &m.p3,
        Some(&m.p3_same),
        "≤ 0.8×",
    );
    row(
        md,
        "P3 the same with `forward_until` the last block (no final norm / LM head)",
        &m.p3_until,
        None,
        "≤ 0.8×",
    );
}

/// The model's shape from its `config.json`: "LLaMA 30 × 576, vocab 49152".
fn describe_model(dir: &std::path::Path) -> String {
    let c: serde_json::Value = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let n = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| c[*k].as_u64())
            .map_or("?".to_string(), |v| v.to_string())
    };
    let kind = match c["model_type"].as_str() {
        Some("gpt2") => "GPT-2".to_string(),
        Some("llama") => "LLaMA".to_string(),
        Some(other) => other.to_string(),
        None => "model".to_string(),
    };
    format!(
        "{kind} {} × {}, vocab {}",
        n(&["n_layer", "num_hidden_layers"]),
        n(&["n_embd", "hidden_size"]),
        n(&["vocab_size"])
    )
}

/// The BENCHMARKS.md section of a run on `dir`: `model-bench` for the
/// default GPT-2-small folder, `model-bench-NAME` for another.
fn section(dir: &std::path::Path, place: &Place) -> String {
    let base = match dir.file_name().and_then(|n| n.to_str()) {
        Some("gpt2-small") | None => "model-bench".to_string(),
        Some(name) => format!("model-bench-{name}"),
    };
    if place.device.is_cuda() || place.kind != tch::Kind::Float {
        format!(
            "{base}-{}-{}",
            place.device_name.replace(':', ""),
            place.dtype_name
        )
    } else {
        base
    }
}

/// ", GPU: NVIDIA H200" on CUDA (from `nvidia-smi`, when there is one).
fn gpu_name(place: &Place) -> String {
    if !place.device.is_cuda() {
        return String::new();
    }
    let name = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "a CUDA GPU".into());
    format!("; GPU: {name}")
}

fn render(a: &Args, tuned: bool, m: &Measured, rss: &Pairs) -> String {
    let mut md = format!(
        "## Model host (issue 3) — `model-bench` on `{}`{}\n\nMachine: {}{}. {}, random weights, \
         {}, batch {} × {} tokens, {} threads on both sides. Our runs \
         and PyTorch's alternate in one session (a persistent PyTorch worker runs each configuration \
         right after ours); each ratio is the median of {} per-pair ratios, times are medians. \
         Reproduce: `scripts/bench.sh`.\n\n",
        a.model_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?"),
        if a.place.device.is_cuda() {
            format!(", {}", a.place.label())
        } else {
            String::new()
        },
        report::machine(),
        gpu_name(&a.place),
        describe_model(&a.model_dir),
        a.place.label(),
        a.batch,
        a.seq,
        a.threads,
        a.reps
    );
    md.push_str(if tuned {
        "glibc allocator: FlexModel-rs runs with mmap threshold 256 MiB, trim threshold 1 GiB and one \
         arena (`flexmodel::tune_allocator()`, as the `flexmodel` binary does); the PyTorch column is \
         PyTorch as users run it (default allocator); P1 and P3 also give the ratio against a second \
         worker run with the same settings (`GLIBC_TUNABLES`). On CPU, `.detach().cpu()` copies \
         nothing, so P3's baseline is essentially the plain forward.\n\n"
    } else {
        "glibc allocator: defaults on both sides (`FLEXMODEL_NO_MALLOPT` set).\n\n"
    });
    rows(&mut md, m);
    if rss.ratios.is_empty() {
        md.push('\n');
        return md;
    }
    let mib = |v: &[f64]| format!("{:.0} MiB", median(v.to_vec()) / (1u64 << 20) as f64);
    md.push_str(&format!(
        "| peak RSS (VmHWM) of one load + forward, {RSS_PAIRS} fresh processes each, alternating (vs transformers eager, default allocator) | {} | {} | {:.2}× | ≤ 1.05× |\n\n",
        mib(&rss.ours),
        mib(&rss.theirs),
        median(rss.ratios.clone())
    ));
    md
}
