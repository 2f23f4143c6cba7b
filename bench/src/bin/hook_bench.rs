//! Hook-runtime benchmark. Writes its section of BENCHMARKS.md.
//!
//! ```text
//! hook-bench [--artifacts DIR] [--out BENCHMARKS.md] [--quick]
//! ```
//!
//! Measures, in one run on one machine:
//! - fixed per-call overhead of a WASM hook (and of a native Rust hook);
//! - moving 4 KiB … 64 MiB of activation into and out of a guest through the
//!   tensor resource (64 KiB chunks), as a ratio to a plain memcpy of the same
//!   bytes measured in the same run;
//! - instantiation time of a precompiled plugin (pooling allocator);
//! - fuel vs epoch-deadline cost on a tight loop, vs no limit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flexmodel::hooks::instance::PluginInstance;
use flexmodel::hooks::{
    Access, CallContext, CallReport, CpuLimit, Hook, HookError, RankInfo, Runtime, RuntimeConfig,
    WasmHook,
};
use flexmodel_bench::report;
use tch::{Kind, Tensor};

struct Args {
    artifacts: PathBuf,
    out: Option<PathBuf>,
    quick: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        artifacts: PathBuf::from("artifacts/wasm"),
        out: None,
        quick: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--artifacts" => a.artifacts = it.next().context("--artifacts needs a folder")?.into(),
            "--out" => a.out = Some(it.next().context("--out needs a file")?.into()),
            "--quick" => a.quick = true,
            "-h" | "--help" => {
                println!("hook-bench [--artifacts DIR] [--out BENCHMARKS.md] [--quick]");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median of `reps` timings of `f`, after `warm` untimed runs.
fn time<F: FnMut()>(warm: usize, reps: usize, mut f: F) -> Duration {
    for _ in 0..warm {
        f();
    }
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// Interleaved timing of a baseline and a subject: each rep times one run of
/// each, back to back, so both see the same machine conditions. Returns the
/// median baseline time, the median subject time and the median of the
/// per-rep ratios baseline/subject.
fn interleaved<B: FnMut(), S: FnMut()>(
    warm: usize,
    reps: usize,
    mut base: B,
    mut subject: S,
) -> (Duration, Duration, f64) {
    for _ in 0..warm {
        base();
        subject();
    }
    let mut tb = Vec::with_capacity(reps);
    let mut ts = Vec::with_capacity(reps);
    let mut ratios = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        base();
        let b = t.elapsed();
        let t = Instant::now();
        subject();
        let s = t.elapsed();
        tb.push(b);
        ts.push(s);
        ratios.push(b.as_secs_f64() / s.as_secs_f64());
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    (median(tb), median(ts), ratios[ratios.len() / 2])
}

fn ctx() -> CallContext {
    CallContext {
        hook_point: "bench".into(),
        rank: RankInfo::SINGLE,
        forward_index: 0,
        generation: None,
        backward: false,
        tokens: None,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn size_label(b: usize) -> String {
    if b >= 1 << 20 {
        format!("{} MiB", b >> 20)
    } else {
        format!("{} KiB", b >> 10)
    }
}

struct NativeNoop;
impl Hook for NativeNoop {
    fn name(&self) -> &str {
        "native-noop"
    }
    fn access(&self) -> Access {
        Access::default()
    }
    fn call(&self, _: &CallContext, _: &mut Tensor) -> Result<CallReport, HookError> {
        Ok(CallReport::default())
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    // As the `flexmodel` binary runs (replacement tensors reuse warm memory).
    let tuned = std::env::var_os("FLEXMODEL_NO_MALLOPT").is_none() && flexmodel::tune_allocator();
    tch::set_num_threads(1);
    let mut md = String::new();
    let started = chrono_like_now();
    md.push_str(&format!(
        "## Hook runtime (issue 2) — `hook-bench`\n\nMachine: {}. Run: {started}. Single host thread; \
         timings are medians; glibc allocator {}. Reproduce: `scripts/bench.sh` (or `target/release/hook-bench --out BENCHMARKS.md`).\n\n",
        report::machine(),
        if tuned { "tuned as the `flexmodel` binary runs (`flexmodel::tune_allocator()`)" } else { "defaults" }
    ));

    let rt = Runtime::new(RuntimeConfig::default())?;
    let bench = load(&args, &rt, "bench")?;
    per_call(&args, &rt, &bench, &mut md)?;
    let ratios = data_movement(&args, &bench, &mut md)?;
    instantiation(&args, &rt, &mut md)?;
    md.push_str(&flexmodel_bench::languages::section(
        &args.artifacts,
        &rt,
        args.quick,
    )?);
    cpu_limits(&args, &mut md)?;
    targets(&ratios, &mut md);
    print!("{md}");
    if let Some(out) = &args.out {
        report::write_section(out, "hook-bench", &md)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

fn load(args: &Args, rt: &Arc<Runtime>, name: &str) -> Result<Arc<flexmodel::hooks::Plugin>> {
    let p = args.artifacts.join(format!("{name}.wasm"));
    rt.load_file(&p)
        .with_context(|| format!("loading {} (run scripts/build-guests.sh)", p.display()))
}

/// The per-call overhead rows.
fn per_call(
    args: &Args,
    rt: &Arc<Runtime>,
    bench: &Arc<flexmodel::hooks::Plugin>,
    md: &mut String,
) -> Result<()> {
    let noop = WasmHook::new(bench.clone(), r#"{"mode":"noop"}"#)?;
    let mut tiny = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
    let calls = if args.quick { 2_000 } else { 20_000 };
    let per_call = |h: &dyn Hook, t: &mut Tensor| -> Duration {
        let c = ctx();
        let batch = 100;
        time(5, calls / batch, || {
            for _ in 0..batch {
                h.call(&c, t).expect("call");
            }
        }) / batch as u32
    };
    let wasm_call = per_call(&noop, &mut tiny);
    let native_call = per_call(&NativeNoop, &mut tiny);
    let scale = WasmHook::new(load(args, rt, "scale")?, r#"{"factor":1.0}"#)?;
    let mut small = Tensor::zeros([4, 128, 768], (Kind::Float, tch::Device::Cpu));
    let scale_call = per_call(&scale, &mut small);
    md.push_str("### Per-call overhead\n\n| hook | time per call |\n|---|---|\n");
    md.push_str(&format!(
        "| WASM `bench` noop (fuel limit on), 1-element activation | {:.2} µs |\n",
        us(wasm_call)
    ));
    md.push_str(&format!(
        "| native Rust `Hook` noop (same call path, no sandbox) | {:.3} µs |\n",
        us(native_call)
    ));
    md.push_str(&format!(
        "| WASM `scale` ×1.0 on a 4×128×768 f32 activation (1.5 MiB, host-side bulk op + undo journal) | {:.1} µs |\n\n",
        us(scale_call)
    ));

    Ok(())
}

/// (bytes, best ratio into, best in-place out, best replace out, best out)
type Ratios = (usize, f64, f64, f64, f64);

/// Moving activation bytes through the tensor resource.
fn data_movement(
    args: &Args,
    bench: &Arc<flexmodel::hooks::Plugin>,
    md: &mut String,
) -> Result<Vec<Ratios>> {
    let chunks = [64usize << 10, 1 << 20];
    let mk = |mode: &str, chunk: usize| {
        WasmHook::new(
            bench.clone(),
            &format!(r#"{{"mode":"{mode}","chunk":{chunk}}}"#),
        )
    };
    let readers = [mk("read-chunks", chunks[0])?, mk("read-chunks", chunks[1])?];
    let in_place = [
        mk("write-chunks", chunks[0])?,
        mk("write-chunks", chunks[1])?,
    ];
    let replace = [
        mk("replace-chunks", chunks[0])?,
        mk("replace-chunks", chunks[1])?,
    ];
    md.push_str(
        "### Moving activation bytes through the tensor resource\n\n\
         *into*: the guest reads the whole f32 activation with `read-bytes`, in chunks of 64 KiB or \
         1 MiB (a tensor smaller than a chunk is moved in one call). *out*: it overwrites the whole activation with `write-bytes` in the same chunks, \
         either in edit mode `in-place` (the host journals the overwritten bytes so a failed call can \
         be undone) or `replace` (writes build a new tensor that is swapped in on success; no journal). \
         Each cell is the median time of one whole hook call, including the commit, and the median \
         over reps of memcpy time / hook call time for the same bytes (≥ 1: faster than memcpy), \
         where each rep times a memcpy and a hook call back to back; memcpy is `copy_from_slice` \
         between two pre-faulted buffers. The memcpy column is the median over all reps.\n\n\
         | size | memcpy | into 64K | into 1M | out in-place 64K | out in-place 1M | out replace 64K | out replace 1M |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let sizes: &[usize] = if args.quick {
        &[4 << 10, 1 << 20, 16 << 20]
    } else {
        &[4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20]
    };
    let mut ratios = Vec::new();
    for &bytes in sizes {
        ratios.push(data_row(bytes, [&readers, &in_place, &replace], md));
    }
    md.push('\n');
    Ok(ratios)
}

/// One size's row: each hook timed against memcpy, interleaved.
fn data_row(bytes: usize, hooks: [&[WasmHook; 2]; 3], md: &mut String) -> Ratios {
    let [readers, in_place, replace] = hooks;
    let reps = if bytes >= 16 << 20 {
        15
    } else if bytes >= 1 << 20 {
        100
    } else {
        500
    };
    let src = vec![1u8; bytes];
    let mut dst = vec![2u8; bytes];
    let mut act = Tensor::ones([(bytes / 4) as i64], (Kind::Float, tch::Device::Cpu));
    let c = ctx();
    let mut cells = Vec::new();
    let mut memcpy_times = Vec::new();
    let (mut best_in, mut best_inplace, mut best_replace) = (0f64, 0f64, 0f64);
    for (hooks, best) in [
        (readers, &mut best_in),
        (in_place, &mut best_inplace),
        (replace, &mut best_replace),
    ] {
        for h in hooks.iter() {
            // Generous warm-up: replace mode allocates a new tensor per call,
            // which reaches the allocator's steady state only after a while.
            let (tm, t, r) = interleaved(
                reps / 2 + 3,
                reps,
                || {
                    dst.copy_from_slice(std::hint::black_box(&src));
                    std::hint::black_box(&dst);
                },
                || {
                    h.call(&c, &mut act).expect("bench call");
                },
            );
            memcpy_times.push(tm);
            *best = best.max(r);
            cells.push(format!("{:.1} µs, {:.2}×", us(t), r));
        }
    }
    let t_memcpy = median(memcpy_times);
    let best_out = best_inplace.max(best_replace);
    md.push_str(&format!(
        "| {} | {:.1} µs ({:.1} GB/s) | {} |\n",
        size_label(bytes),
        us(t_memcpy),
        gbps(bytes, t_memcpy),
        cells.join(" | ")
    ));
    (bytes, best_in, best_inplace, best_replace, best_out)
}

/// Instantiating precompiled plugins.
fn instantiation(args: &Args, rt: &Arc<Runtime>, md: &mut String) -> Result<()> {
    md.push_str("### Instantiation of a precompiled plugin (pooling allocator, `InstancePre`)\n\n| plugin | component size | instantiate |\n|---|---|---|\n");
    for name in ["scale", "retrieve", "scale-py"] {
        let p = load(args, rt, name)?;
        let size = std::fs::metadata(args.artifacts.join(format!("{name}.wasm")))?.len();
        let reps = if name.ends_with("-py") { 50 } else { 500 };
        let t = time(5, reps, || {
            let i = PluginInstance::new(&p, "bench".into(), 0, Default::default())
                .expect("instantiate");
            std::hint::black_box(i);
        });
        md.push_str(&format!(
            "| `{name}` | {:.0} KiB | {:.1} µs |\n",
            size as f64 / 1024.0,
            us(t)
        ));
    }
    md.push('\n');

    Ok(())
}

/// Fuel and epoch deadlines on tight loops.
fn cpu_limits(args: &Args, md: &mut String) -> Result<()> {
    let mut tiny = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
    let iters: u64 = if args.quick { 20_000_000 } else { 200_000_000 };
    let passes: u64 = if args.quick { 200 } else { 2_000 };
    let loops = [
        (
            format!("{iters} dependent multiply-adds"),
            format!(r#"{{"mode":"spin","iters":{iters}}}"#),
        ),
        (
            format!("{passes} passes of a byte sum over 64 KiB"),
            format!(r#"{{"mode":"sum","iters":{passes}}}"#),
        ),
    ];
    md.push_str(
        "### CPU limits on tight loops

| loop | no limit | fuel | vs no limit | epoch deadline | vs no limit |
|---|---|---|---|---|---|
",
    );
    for (what, cfg) in &loops {
        let mut t = Vec::new();
        for cpu in [
            CpuLimit::Unlimited,
            CpuLimit::Fuel(u64::MAX / 4),
            CpuLimit::Deadline(Duration::from_secs(600)),
        ] {
            let rt = Runtime::new(RuntimeConfig {
                cpu,
                ..RuntimeConfig::default()
            })?;
            let h = WasmHook::new(load(args, &rt, "bench")?, cfg)?;
            t.push(
                time(1, 5, || {
                    h.call(&ctx(), &mut tiny).expect("loop");
                })
                .as_secs_f64(),
            );
        }
        md.push_str(&format!(
            "| {what} | {:.1} ms | {:.1} ms | {:.2}× | {:.1} ms | {:.2}× |\n",
            t[0] * 1e3,
            t[1] * 1e3,
            t[1] / t[0],
            t[2] * 1e3,
            t[2] / t[0]
        ));
    }
    md.push('\n');

    Ok(())
}

fn targets(ratios: &[Ratios], md: &mut String) {
    md.push_str("### Against the targets of issue 2\n\n");
    for (bytes, ri, rip, rr, ro) in ratios.iter().filter(|r| r.0 >= 1 << 20) {
        let v = |r: f64| if r >= 0.795 { "met" } else { "NOT met" };
        md.push_str(&format!(
            "- {}: into guest {:.2}× memcpy ({}); out of guest {:.2}× with `replace`, {:.2}× `in-place` ({}) — best chunk size, target ≥ 0.8×\n",
            size_label(*bytes),
            ri,
            v(*ri),
            rr,
            rip,
            v(*ro)
        ));
    }
    md.push_str("- instantiation of the Rust plugins: target ≤ 50 µs (see the table above)\n\n");
}

/// UTC timestamp without a date-time dependency (from `date -u`).
fn chrono_like_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
