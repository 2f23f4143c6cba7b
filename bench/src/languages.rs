//! The cost of a hook per guest language (`hook-bench`'s "Guest languages"
//! section): the conformance guest (`tests/guests/conform*`, the same
//! program in every language) instantiated, called empty, reading the whole
//! activation into guest memory, computing per-row L2 norms in the guest,
//! and scaling through the host bulk op; each language timed interleaved
//! with the Rust build, reported as the median of per-pair ratios.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flexmodel::hooks::instance::PluginInstance;
use flexmodel::hooks::{CallContext, Hook, Plugin, RankInfo, Runtime, WasmHook};
use tch::{Kind, Tensor};

/// Guest languages besides Rust: (build suffix, name); those built are timed.
pub const LANGUAGES: &[(&str, &str)] = &[
    ("c", "C"),
    ("zig", "Zig"),
    ("js", "JavaScript"),
    ("py", "Python"),
];

/// Targets per language: compiled languages within 1.2× of Rust on every
/// row; interpreted ones within 3× on the read and host-op rows.
fn target(lang: &str, row: &str) -> Option<f64> {
    match (lang, row) {
        ("c" | "zig", _) => Some(1.2),
        ("js" | "py", "read" | "scale") => Some(3.0),
        _ => None,
    }
}

fn ctx() -> CallContext {
    CallContext {
        hook_point: "blocks.0.hook_resid_post".into(),
        rank: RankInfo::SINGLE,
        forward_index: 0,
        generation: None,
        backward: false,
        tokens: None,
    }
}

fn once(f: &mut dyn FnMut()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// Median of per-pair ratios subject/base (interleaved), and each median,
/// with as many pairs as fit in about `budget`.
fn pairs(
    budget: Duration,
    base: &mut dyn FnMut(),
    subject: &mut dyn FnMut(),
) -> (f64, Duration, Duration) {
    base();
    subject();
    let one = once(base) + once(subject);
    let reps = (budget.as_secs_f64() / one.as_secs_f64().max(1e-9)).clamp(5.0, 2000.0) as usize;
    let (mut tb, mut ts, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let b = once(base);
        let s = once(subject);
        r.push(s.as_secs_f64() / b.as_secs_f64());
        tb.push(b);
        ts.push(s);
    }
    r.sort_by(|a, b| a.total_cmp(b));
    tb.sort();
    ts.sort();
    (r[r.len() / 2], tb[tb.len() / 2], ts[ts.len() / 2])
}

fn us(d: Duration) -> String {
    let u = d.as_secs_f64() * 1e6;
    if u >= 1000.0 {
        format!("{:.2} ms", u / 1000.0)
    } else {
        format!("{u:.1} µs")
    }
}

/// One call of the conformance guest in `mode` on `t`.
fn call(h: &WasmHook, t: &mut Tensor) {
    h.call(&ctx(), t).expect("conformance guest call");
}

/// The section's markdown; `quick` shortens every measurement.
pub fn section(artifacts: &Path, rt: &Arc<Runtime>, quick: bool) -> Result<String> {
    let load = |name: &str| -> Result<Arc<Plugin>> {
        let p = artifacts.join(format!("{name}.wasm"));
        rt.load_file(&p)
            .with_context(|| format!("loading {} (run scripts/build-guests.sh)", p.display()))
    };
    let budget = Duration::from_millis(if quick { 300 } else { 2000 });
    let rust = load("conform")?;
    let mut md = String::from(
        "### Guest languages: the same hook in each (`tests/guests/conform*`)\n\n\
         Each row times one language's build against the Rust build, interleaved (a Rust call, then \
         the other's, per pair); the ratio is the median of per-pair ratios (lower is better). \
         Activation: 4×128×768 f32 (1.5 MiB). Rows: instantiate (from the compiled component, \
         `InstancePre`); an empty call (1-element activation); read the whole activation into guest \
         memory (one `read-bytes`); per-row L2 norms computed in the guest and emitted; `scale` \
         through the host bulk op.\n\n\
         | language | row | Rust | this language | × Rust | target |\n|---|---|---|---|---|---|\n",
    );
    let big = || Tensor::randn([4, 128, 768], (Kind::Float, tch::Device::Cpu));
    for &(suffix, lang) in LANGUAGES {
        let file = artifacts.join(format!("conform-{suffix}.wasm"));
        if !file.exists() {
            md.push_str(&format!(
                "| {lang} | (not built: no `conform-{suffix}.wasm`) | | | | |\n"
            ));
            continue;
        }
        let other = load(&format!("conform-{suffix}"))?;
        let mut rows: Vec<(&str, f64, Duration, Duration)> = Vec::new();
        // Instantiation.
        let inst = |p: &Arc<Plugin>| {
            let i =
                PluginInstance::new(p, "bench".into(), 0, Default::default()).expect("instantiate");
            std::hint::black_box(i);
        };
        let (r, b, s) = pairs(budget, &mut || inst(&rust), &mut || inst(&other));
        rows.push(("instantiate", r, b, s));
        for (row, config, numel) in [
            ("empty call", r#"{"mode": "empty"}"#, 1),
            ("read", r#"{"mode": "read"}"#, 0),
            ("norm (guest compute)", r#"{"mode": "norm"}"#, 0),
            ("scale", r#"{"mode": "scale", "factor": 1.0}"#, 0),
        ] {
            let hb = WasmHook::new(rust.clone(), config)?;
            let hs = WasmHook::new(other.clone(), config)?;
            let (mut tb, mut ts) = if numel == 1 {
                (
                    Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
                    Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
                )
            } else {
                (big(), big())
            };
            let (r, b, s) = pairs(budget, &mut || call(&hb, &mut tb), &mut || {
                call(&hs, &mut ts)
            });
            rows.push((row, r, b, s));
        }
        for (row, r, b, s) in rows {
            let key = row.split(' ').next().unwrap_or(row);
            let t = target(suffix, key);
            let verdict = match t {
                Some(t) if r <= t => format!("≤ {t}× (met)"),
                Some(t) => format!("≤ {t}× (**not met**)"),
                None => "—".into(),
            };
            md.push_str(&format!(
                "| {lang} | {row} | {} | {} | {r:.2}× | {verdict} |\n",
                us(b),
                us(s)
            ));
        }
    }
    md.push('\n');
    Ok(md)
}
