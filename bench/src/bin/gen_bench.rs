//! Generation benchmark (issue 5). Writes its section of BENCHMARKS.md.
//!
//! ```text
//! gen-bench [--python PY] [--model-dir artifacts/bench/gpt2-small] [--artifacts artifacts/wasm]
//!           [--prompt 32] [--new 64] [--threads 2] [--reps 3] [--out BENCHMARKS.md]
//! ```
//! With the GPT-2-small-sized random weights `model-bench` saves, batch 1,
//! greedy, the same thread count, in alternation within one session:
//! FlexModel-rs's `generate` without hooks, transformers' `generate` (a
//! persistent PyTorch worker, `tests/reference/bench_worker.py`), ours with
//! the `steer` plugin on every block output. Ratios are medians of
//! per-round ratios. Our greedy tokens must equal transformers'.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use flexmodel::api::{FlexModel, GenerateOptions, Groups, Sampling};
use flexmodel::hooks::{Runtime, RuntimeConfig};
use flexmodel_bench::place::Place;
use flexmodel_bench::report;
use flexmodel_bench::worker::{self, Worker};
use tch::Tensor;

struct Args {
    python: PathBuf,
    model_dir: PathBuf,
    artifacts: PathBuf,
    prompt: i64,
    new: usize,
    threads: i32,
    reps: usize,
    out: Option<PathBuf>,
    place: Place,
}

fn parse() -> Result<Args> {
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = std::env::var("FLEXMODEL_VENV").unwrap_or(format!("{home}/.cache/flexmodel/venv"));
    let mut a = Args {
        python: PathBuf::from(format!("{venv}/bin/python")),
        model_dir: PathBuf::from("artifacts/bench/gpt2-small"),
        artifacts: PathBuf::from("artifacts/wasm"),
        prompt: 32,
        new: 64,
        threads: 2,
        reps: 3,
        out: None,
        place: Place::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--python" => a.python = v()?.into(),
            "--model-dir" => a.model_dir = v()?.into(),
            "--artifacts" => a.artifacts = v()?.into(),
            "--prompt" => a.prompt = v()?.parse()?,
            "--new" => a.new = v()?.parse()?,
            "--threads" => a.threads = v()?.parse()?,
            "--reps" => a.reps = v()?.parse()?,
            "--out" => a.out = Some(v()?.into()),
            "--device" => a.place.set_device(&v()?)?,
            "--dtype" => a.place.set_dtype(&v()?)?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

/// What the rounds measured.
struct Rounds {
    /// Per round: ours / transformers', steered / ours.
    vs_hf: Vec<f64>,
    vs_plain: Vec<f64>,
    /// Seconds per round: ours, transformers', ours steered.
    times: [Vec<f64>; 3],
    /// Whether our greedy tokens equal transformers'.
    same: bool,
}

fn main() -> Result<()> {
    let a = parse()?;
    let r = measure(&a)?;
    let md = render(&a, &r);
    print!("{md}");
    if let Some(p) = &a.out {
        let section = if a.place.device.is_cuda() || a.place.kind != tch::Kind::Float {
            format!(
                "gen-bench-{}-{}",
                a.place.device_name.replace(':', ""),
                a.place.dtype_name
            )
        } else {
            "gen-bench".to_string()
        };
        report::write_section(p, &section, &md)?;
    }
    if !r.same {
        bail!("greedy tokens differ from transformers'");
    }
    Ok(())
}

/// Rounds of: ours without hooks, transformers' `generate`, ours with `steer`.
fn measure(a: &Args) -> Result<Rounds> {
    let Args {
        python,
        model_dir,
        artifacts,
        prompt,
        new,
        threads,
        reps,
        ..
    } = a;
    let (prompt, new, threads, reps) = (*prompt, *new, *threads, *reps);
    flexmodel::tune_allocator();
    eprintln!("PyTorch worker...");
    // The worker writes the input ids; batch and sequence as model-bench's.
    let mut cmd = worker::command(python, model_dir, 4, 128, threads, false);
    a.place.on(&mut cmd);
    let mut py = Worker::start(cmd)?;
    let request = format!("generate {prompt} {new}");
    let first = py.ask(&request)?;
    let ids: Vec<i64> = serde_json::from_value(first["prompt"].clone()).context("prompt")?;
    let want: Vec<i64> = serde_json::from_value(first["tokens"].clone()).context("tokens")?;

    eprintln!("FlexModel-rs generate, alternating with transformers'...");
    tch::set_num_threads(threads);
    let mut fm = FlexModel::load(model_dir, a.place.kind, a.place.device)?;
    let rt = Runtime::new(RuntimeConfig::default())?;
    let steer = rt.load_file(artifacts.join("steer.wasm"))?;
    let d = fm.points(1, 1)[0].shape[2] as usize;
    let vector: Vec<f32> = (0..d)
        .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
        .collect();
    let cfg = serde_json::json!({"vector": vector, "alpha": 0.05}).to_string();
    fm.register_wasm(&steer, "blocks.*.hook_resid_post", &cfg, &["steer"])?;
    let t = Tensor::from_slice(&ids).unsqueeze(0);
    let opts = GenerateOptions {
        max_new_tokens: new,
        sampling: Sampling::Greedy,
        eos: Vec::new(),
        ..GenerateOptions::default()
    };
    // Per round: ours without hooks, transformers', ours with `steer`.
    let (mut vs_hf, mut vs_plain, mut times) =
        (Vec::new(), Vec::new(), [Vec::new(), Vec::new(), Vec::new()]);
    let mut tokens = None;
    for round in 0..=reps {
        let run = |fm: &mut FlexModel, g: &Groups| -> Result<(f64, Tensor)> {
            let s = Instant::now();
            let o = fm
                .generate(&t, g, &opts, |_, _| {})
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((s.elapsed().as_secs_f64(), o.tokens))
        };
        let (plain, toks) = run(&mut fm, &Groups::only(["none"]))?;
        let hf = py.ask(&request)?["secs"]
            .as_f64()
            .context("transformers' time")?;
        let (steered, _) = run(&mut fm, &Groups::only(["steer"]))?;
        tokens = Some(Vec::<i64>::try_from(toks.flatten(0, -1))?);
        if round > 0 {
            vs_hf.push(plain / hf);
            vs_plain.push(steered / plain);
            for (v, x) in times.iter_mut().zip([plain, hf, steered]) {
                v.push(x);
            }
        }
    }
    Ok(Rounds {
        vs_hf,
        vs_plain,
        times,
        same: tokens.as_deref() == Some(want.as_slice()),
    })
}

fn render(a: &Args, r: &Rounds) -> String {
    let (prompt, new, threads, reps) = (a.prompt, a.new, a.threads, a.reps);
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let [plain, py_secs, steered] = r.times.clone().map(med);
    let (r_hf, r_steer) = (med(r.vs_hf.clone()), med(r.vs_plain.clone()));
    let same = r.same;
    let tps = |s: f64| new as f64 / s;
    let mut md = format!(
        "## Generation (issue 5) — `gen-bench`, {}\n\nMachine: {}. {} (random weights), \
         batch 1, prompt {prompt} tokens, {new} new tokens, greedy with a KV cache, {threads} threads on \
         both sides; ours and transformers' alternate in one session (a persistent PyTorch worker), \
         {reps} rounds after a warm-up, ratios are medians of per-round ratios. Our greedy tokens {} \
         transformers'.\n\n| measurement | baseline | ours | ratio |\n|---|---|---|---|\n",
        a.place.label(),
        report::machine(),
        a.model_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?"),
        if same { "equal" } else { "DIFFER from" }
    );
    md.push_str(&format!(
        "| generate, no hooks, vs transformers `generate` | {:.1} tok/s | {:.1} tok/s | {:.3}× time |\n",
        tps(py_secs),
        tps(plain),
        r_hf
    ));
    md.push_str(&format!(
        "| generate with the `steer` WASM plugin on every block output vs without hooks | {:.1} tok/s | {:.1} tok/s | {:.3}× time |\n\n",
        tps(plain),
        tps(steered),
        r_steer
    ));
    md
}
