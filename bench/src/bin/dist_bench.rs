//! Distributed-engine benchmark (issue 4). Writes its section of BENCHMARKS.md.
//!
//! ```text
//! dist-bench [--model-dir artifacts/bench/gpt2-small] [--artifacts artifacts/wasm]
//!            [--batch 4] [--seq 128] [--reps 5] [--out BENCHMARKS.md]
//! ```
//! In one run, on the thread backend, with GPT-2-small dimensions (the
//! random weights `model-bench` saves):
//! - P6: the forward at TP2 with an identity WASM hook on every block output
//!   vs the same TP2 forward without hooks (one rank without hooks for scale);
//! - P7: bytes received to build the hook views when a plugin reads only the
//!   last token of a tensor-parallel (split) point vs the whole point;
//! - collectives' bandwidth (all-gather, all-reduce, send/recv between two
//!   ranks) on the thread backend and, when `mpirun` and the MPI build are
//!   there, on MPI (two processes), vs memcpy of the same size in the same run.
//!
//! `dist-bench --mpi-child` is the MPI part, launched by the parent under
//! `mpirun -np 2`; it prints one JSON line per measurement on rank 0.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flexmodel::api::{FlexModel, Groups, Options};
use flexmodel::distributed::{Communicator, ThreadComm};
use flexmodel::hooks::{Runtime, RuntimeConfig};
use flexmodel_bench::report;
use tch::{Device, Kind, Tensor};

struct Args {
    model_dir: PathBuf,
    artifacts: PathBuf,
    batch: i64,
    seq: i64,
    reps: usize,
    out: Option<PathBuf>,
    mpi_child: bool,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        model_dir: PathBuf::from("artifacts/bench/gpt2-small"),
        artifacts: PathBuf::from("artifacts/wasm"),
        batch: 4,
        seq: 128,
        reps: 5,
        out: None,
        mpi_child: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--model-dir" => a.model_dir = v()?.into(),
            "--artifacts" => a.artifacts = v()?.into(),
            "--batch" => a.batch = v()?.parse()?,
            "--seq" => a.seq = v()?.parse()?,
            "--reps" => a.reps = v()?.parse()?,
            "--out" => a.out = Some(v()?.into()),
            "--mpi-child" => a.mpi_child = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

const SIZES_MIB: [usize; 3] = [1, 16, 64];

/// Seconds per memcpy of `bytes` (median of `reps`, after a warm-up).
fn memcpy_secs(bytes: usize, reps: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut t = Vec::new();
    for r in 0..=reps {
        let s = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        if r > 0 {
            t.push(s.elapsed().as_secs_f64());
        }
    }
    median(t)
}

/// One measurement of a collective: (name, MiB, seconds per op).
type Row = (String, usize, f64);

/// Time the collectives over `c` (every rank calls this); rows on rank 0.
fn collectives(c: &dyn Communicator, reps: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for mib in SIZES_MIB {
        let n = (mib << 20) / 4;
        let t = Tensor::ones([n as i64], (Kind::Float, Device::Cpu));
        let mut timed = |name: &str, f: &dyn Fn() -> Result<()>| -> Result<()> {
            let mut v = Vec::new();
            for r in 0..=reps {
                c.barrier()?;
                let s = Instant::now();
                f()?;
                // Until every rank is done (a send completes before its receive).
                c.barrier()?;
                if r > 0 {
                    v.push(s.elapsed().as_secs_f64());
                }
            }
            rows.push((name.to_string(), mib, median(v)));
            Ok(())
        };
        timed("all-gather", &|| {
            c.all_gather(&t).map(|_| ()).map_err(Into::into)
        })?;
        timed("all-reduce", &|| {
            c.all_reduce_sum(&t).map(|_| ()).map_err(Into::into)
        })?;
        timed("send/recv", &|| {
            if c.rank() == 0 {
                c.send(&t, 1)?;
            } else {
                let _ = c.recv(0, Device::Cpu)?;
            }
            Ok(())
        })?;
    }
    Ok(if c.rank() == 0 { rows } else { Vec::new() })
}

fn thread_collectives(reps: usize) -> Result<Vec<Row>> {
    let hs: Vec<_> = ThreadComm::world(2, Duration::from_secs(60))
        .into_iter()
        .map(|c| std::thread::spawn(move || collectives(&c, reps).map_err(|e| e.to_string())))
        .collect();
    let mut rows = Vec::new();
    for h in hs {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("rank thread panicked"))?;
        rows.extend(r.map_err(|e| anyhow::anyhow!(e))?);
    }
    Ok(rows)
}

fn mpi_child(reps: usize) -> Result<()> {
    let (_mpi, world) = flexmodel::distributed::mpi_world(Duration::from_secs(120))?;
    let local = flexmodel::distributed::local_ranks_from_env().unwrap_or(2);
    tch::set_num_threads(flexmodel::distributed::threads_per_rank(local));
    for (name, mib, secs) in collectives(world.as_ref(), reps)? {
        println!(
            "{}",
            serde_json::json!({"op": name, "mib": mib, "secs": secs})
        );
    }
    Ok(())
}

/// The MPI rows, from `mpirun -np 2 <this binary> --mpi-child`; `Err` with
/// the reason when MPI is not available.
fn mpi_collectives(reps: usize) -> Result<Vec<Row>> {
    if !flexmodel::distributed::HAS_MPI {
        bail!("this build has no MPI backend");
    }
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new("mpirun")
        .args(["--oversubscribe", "--bind-to", "none", "-np", "2"])
        .arg(exe)
        .args(["--mpi-child", "--reps", &reps.to_string()])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_plm", "isolated")
        .output()
        .context("running mpirun")?;
    if !out.status.success() {
        bail!("mpirun failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            rows.push((
                v["op"].as_str().unwrap_or("?").to_string(),
                v["mib"].as_u64().unwrap_or(0) as usize,
                v["secs"].as_f64().unwrap_or(f64::NAN),
            ));
        }
    }
    Ok(rows)
}

/// What P6 and P7 measured.
struct Measured {
    /// Medians: one rank, TP2 plain, with the identity hook, with the edit
    /// (agreement on / off).
    one: f64,
    plain: f64,
    hooked: f64,
    edit_on: f64,
    edit_off: f64,
    p6_ratio: f64,
    check_ratio: f64,
    scale_ratio: f64,
    point: &'static str,
    /// Bytes gathered at `point` (last token, whole), and over all points.
    bl: u64,
    bf: u64,
    total_last: u64,
    total_full: u64,
}

fn main() -> Result<()> {
    let a = parse()?;
    flexmodel::tune_allocator();
    if a.mpi_child {
        return mpi_child(a.reps);
    }
    let threads = tch::get_num_threads();
    let ids: Vec<Vec<i64>> = serde_json::from_str(
        &std::fs::read_to_string(a.model_dir.join("bench_ids.json"))
            .context("run model-bench first: it saves the GPT-2-small weights")?,
    )?;
    let flat: Vec<i64> = ids.concat();
    let ids = Tensor::from_slice(&flat).view([a.batch, a.seq]);
    let m = measure(&a, &ids)?;
    eprintln!("collectives...");
    let thread_rows = thread_collectives(a.reps)?;
    let mpi_rows = mpi_collectives(a.reps);
    let mut md = String::new();
    render_timings(&mut md, &a, threads, &m);
    render_collectives(&mut md, &a, &thread_rows, &mpi_rows);
    md.push('\n');
    print!("{md}");
    if let Some(path) = &a.out {
        report::write_section(path, "dist-bench", &md)?;
    }
    Ok(())
}

/// One rank, TP2 with the hooks of every row (agreement on, as shipped),
/// TP2 with the edit and agreement off.
fn models(a: &Args) -> Result<(FlexModel, FlexModel, FlexModel)> {
    let rt = Runtime::new(RuntimeConfig::default())?;
    let bench = rt.load_file(a.artifacts.join("bench.wasm"))?;
    let retrieve = rt.load_file(a.artifacts.join("retrieve.wasm"))?;

    // P6 (and one rank, for scale), interleaved rounds.
    eprintln!("P6: TP2 with and without an identity hook on every block output...");
    let single = FlexModel::load(&a.model_dir, Kind::Float, Device::Cpu)?;
    // As shipped: TP ranks hash and compare every edit and output.
    let opts = Options::new(1, 1, 2)?;
    let mut tp2 = FlexModel::load_with(&a.model_dir, &opts)?;
    tp2.register_wasm(
        &bench,
        "blocks.*.hook_resid_post",
        r#"{"mode": "noop"}"#,
        &["id"],
    )?;
    tp2.register_wasm(
        &retrieve,
        "blocks.*.mlp.hook_post",
        r#"{"slice": [null, -1]}"#,
        &["last"],
    )?;
    tp2.register_wasm(&retrieve, "blocks.*.mlp.hook_post", "{}", &["full"])?;
    // The cost of the always-on agreement: an editing hook (in-place scale by
    // 1.0 on every block output, so every edit is hashed and compared), with
    // the check on (as shipped) and off.
    let scale = rt.load_file(a.artifacts.join("scale.wasm"))?;
    tp2.register_wasm(
        &scale,
        "blocks.*.hook_resid_post",
        r#"{"factor": 1.0}"#,
        &["edit"],
    )?;
    let mut off = Options::new(1, 1, 2)?;
    off.check_edits = false;
    let mut tp2_off = FlexModel::load_with(&a.model_dir, &off)?;
    tp2_off.register_wasm(
        &scale,
        "blocks.*.hook_resid_post",
        r#"{"factor": 1.0}"#,
        &["edit"],
    )?;
    Ok((single, tp2, tp2_off))
}

/// P6 (and one rank, for scale) in interleaved rounds, then P7's bytes.
fn measure(a: &Args, ids: &Tensor) -> Result<Measured> {
    let (mut single, mut tp2, mut tp2_off) = models(a)?;
    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for round in 0..=a.reps {
        for (i, slot) in t.iter_mut().enumerate() {
            let s = Instant::now();
            let r = match i {
                0 => single.forward(ids, &Groups::All).map(|_| ()),
                1 => tp2.forward(ids, &Groups::only(["none"])).map(|_| ()),
                2 => tp2.forward(ids, &Groups::only(["id"])).map(|_| ()),
                3 => tp2.forward(ids, &Groups::only(["edit"])).map(|_| ()),
                _ => tp2_off.forward(ids, &Groups::only(["edit"])).map(|_| ()),
            };
            r.map_err(|e| anyhow::anyhow!("{e}"))?;
            if round > 0 {
                slot.push(s.elapsed().as_secs_f64());
            }
        }
    }
    // Ratios per round (alternated in the same round), then their median.
    let ratio = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
    let p6_ratio = ratio(&t[2], &t[1]);
    let check_ratio = ratio(&t[3], &t[4]);
    let scale_ratio = ratio(&t[1], &t[0]);
    let [one, plain, hooked, edit_on, edit_off] = t.map(median);
    drop(tp2_off);

    // P7: bytes, not time.
    eprintln!("P7: bytes gathered for a last-token read vs the whole point...");
    let last = tp2
        .forward(ids, &Groups::only(["last"]))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let full = tp2
        .forward(ids, &Groups::only(["full"]))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let point = "transformer.h.0.mlp.act";
    let (bl, bf) = (last.gathered_bytes[point], full.gathered_bytes[point]);
    let total = |o: &flexmodel::api::ForwardOutput| o.gathered_bytes.values().sum::<u64>();

    Ok(Measured {
        one,
        plain,
        hooked,
        edit_on,
        edit_off,
        p6_ratio,
        check_ratio,
        scale_ratio,
        point,
        bl,
        bf,
        total_last: total(&last),
        total_full: total(&full),
    })
}

fn render_timings(md: &mut String, a: &Args, threads: i32, m: &Measured) {
    let Measured {
        one,
        plain,
        hooked,
        edit_on,
        edit_off,
        p6_ratio,
        check_ratio,
        scale_ratio,
        point,
        bl,
        bf,
        ..
    } = *m;
    let ms = |s: f64| format!("{:.1} ms", s * 1e3);
    md.push_str(&format!(
        "## Distributed engine (issue 4) — `dist-bench`\n\nMachine: {}. Thread backend (ranks are threads \
         of one process), GPT-2-small dimensions (12 × 768, vocab 50257, random weights), batch {} × {} \
         tokens; libtorch intra-op threads: {threads} for one rank, {} per rank at TP2 (the cores shared \
         out); median of {} interleaved rounds after a warm-up; ratios are medians of the per-round ratios.\n\n",
        report::machine(),
        a.batch,
        a.seq,
        (threads / 2).max(1),
        a.reps
    ));
    md.push_str("| measurement | baseline | ours | ratio | target |\n|---|---|---|---|---|\n");
    md.push_str(&format!(
        "| P6 TP2 forward, identity WASM hook on every block output vs TP2 without hooks (rank agreement on, as shipped) | {} | {} | {:.3}× | ≤ 1.15× |\n",
        ms(plain),
        ms(hooked),
        p6_ratio
    ));
    md.push_str(&format!(
        "| TP2, in-place `scale` ×1 on every block output: agreement hashes of every edit and output (xxh3, always on) vs off | {} | {} | {:.3}× | ≤ 1.05× |\n",
        ms(edit_off),
        ms(edit_on),
        check_ratio
    ));
    md.push_str(&format!(
        "| (scale) TP2 without hooks vs one rank without hooks | {} | {} | {:.3}× | — |\n",
        ms(one),
        ms(plain),
        scale_ratio
    ));
    let s = a.seq as f64;
    md.push_str(&format!(
        "| P7 bytes received for `{point}` (split over TP), plugin reads the last token vs the whole point | {bf} B | {bl} B | {:.5} (1/seq = {:.5}) | ≤ 1/seq + headers |\n",
        bl as f64 / bf as f64,
        1.0 / s
    ));
    md.push_str(&format!(
        "| P7 same, all 12 blocks | {} B | {} B | {:.5} | |\n\n",
        m.total_full,
        m.total_last,
        m.total_last as f64 / m.total_full as f64
    ));
}

fn render_collectives(md: &mut String, a: &Args, thread_rows: &[Row], mpi_rows: &Result<Vec<Row>>) {
    md.push_str(
        "Collectives between two ranks, timed from a barrier until both ranks are done (a second \
         barrier, included): bandwidth = tensor bytes / time; all-reduce moves the other rank's \
         tensor, then sums; vs memcpy of the same size in the same run:\n\n\
         | backend | op | size | time | bandwidth | vs memcpy |\n|---|---|---|---|---|---|\n",
    );
    let mut add = |backend: &str, rows: &[Row]| {
        for (op, mib, secs) in rows {
            let bytes = (*mib << 20) as f64;
            let mc = memcpy_secs(*mib << 20, a.reps);
            md.push_str(&format!(
                "| {backend} | {op} | {mib} MiB | {:.2} ms | {:.2} GB/s | {:.2}× |\n",
                secs * 1e3,
                bytes / secs / 1e9,
                (bytes / secs) / (bytes / mc)
            ));
        }
    };
    add("threads", thread_rows);
    match &mpi_rows {
        Ok(rows) => add("MPI (2 processes, Open MPI)", rows),
        Err(e) => md.push_str(&format!("| MPI | not measured: {e} | | | | |\n")),
    }
}
