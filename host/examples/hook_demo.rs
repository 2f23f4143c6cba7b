//! End-to-end tour of the hook runtime on a real tch activation: load the
//! example plugins (Rust and Python components), run them, and show what a
//! hostile plugin gets (a typed error, the activation untouched).
//!
//! ```text
//! cargo run --release --example hook_demo -- [ARTIFACTS_DIR]
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use flexmodel::hooks::{CallContext, CpuLimit, Hook, RankInfo, Runtime, RuntimeConfig, WasmHook};
use tch::{Kind, Tensor};

fn norm(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).norm().double_value(&[])
}

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| "artifacts/wasm".into());
    let rt = Runtime::new(RuntimeConfig::default())?;
    let load = |name: &str| {
        let p = dir.join(format!("{name}.wasm"));
        rt.load_file(&p)
            .with_context(|| format!("loading {} (run scripts/build-guests.sh)", p.display()))
    };

    println!("FlexModel hook runtime demo — plugins are sandboxed WebAssembly components\n");
    println!(
        "{:<10} {:<8} {:<6} {:<14} description",
        "plugin", "version", "WIT", "sha256"
    );
    for name in ["retrieve", "scale", "ablate", "steer", "scale-py"] {
        let p = load(name)?;
        println!(
            "{:<10} {:<8} {:<6} {:<14} {}",
            p.info.name,
            p.info.version,
            p.wit_version,
            &p.hash[..12],
            p.info.description
        );
    }

    // A [batch 2, seq 6, d_model 16] "residual stream".
    tch::manual_seed(0);
    let act = Tensor::randn([2, 6, 16], (Kind::Float, tch::Device::Cpu));
    let ctx = CallContext {
        hook_point: "blocks.3.hook_resid_post".into(),
        rank: RankInfo::SINGLE,
        forward_index: 0,
        generation: None,
        backward: false,
        tokens: None,
    };
    println!(
        "\nactivation at {}: shape {:?}, norm {:.4}",
        ctx.hook_point,
        act.size(),
        norm(&act)
    );

    let retrieve = WasmHook::new(
        load("retrieve")?,
        r#"{"slice": [null, -1], "name": "last_token"}"#,
    )?;
    let mut t = act.copy();
    let r = retrieve.call(&ctx, &mut t)?;
    let e = &r.emitted[0];
    println!(
        "retrieve  last token -> output[{:?}] shape {:?}, norm {:.4} (activation unchanged: {})",
        e.key,
        e.tensor.size(),
        norm(&e.tensor),
        t.equal(&act)
    );

    for (name, cfg) in [
        ("scale", r#"{"factor": 2.0}"#),
        ("scale-py", r#"{"factor": 2.0}"#),
    ] {
        let h = WasmHook::new(load(name)?, cfg)?;
        let mut t = act.copy();
        h.call(&ctx, &mut t)?;
        println!(
            "{name:<9} x2       -> norm {:.4} (exactly 2x the input: {})",
            norm(&t),
            t.equal(&(&act * 2.0))
        );
    }

    let ablate = WasmHook::new(load("ablate")?, r#"{"neurons": [3, 7]}"#)?;
    let mut t = act.copy();
    ablate.call(&ctx, &mut t)?;
    println!(
        "ablate    neurons 3,7 -> |column 3| = {:.4}, |column 7| = {:.4}, other columns unchanged: {}",
        norm(&t.narrow(2, 3, 1)),
        norm(&t.narrow(2, 7, 1)),
        t.narrow(2, 0, 3).equal(&act.narrow(2, 0, 3))
    );

    let v: Vec<f32> = (0..16).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    let steer = WasmHook::new(
        load("steer")?,
        &serde_json::json!({"vector": v, "alpha": 5.0, "positions": [-1]}).to_string(),
    )?;
    let mut t = act.copy();
    steer.call(&ctx, &mut t)?;
    let delta = (&t - &act)
        .narrow(1, 5, 1)
        .narrow(2, 0, 1)
        .mean(Kind::Double)
        .double_value(&[]);
    println!("steer     +5·e0 at last token -> mean change of that coordinate {delta:.4}");

    // A hostile plugin: an infinite loop under a small fuel budget.
    let small = Runtime::new(RuntimeConfig {
        cpu: CpuLimit::Fuel(50_000_000),
        ..RuntimeConfig::default()
    })?;
    let hostile = WasmHook::new(
        small.load_file(dir.join("hostile.wasm"))?,
        r#"{"mode": "loop"}"#,
    )?;
    let mut t = act.copy();
    match hostile.call(&ctx, &mut t) {
        Ok(_) => println!("hostile   unexpectedly succeeded"),
        Err(e) => println!(
            "\nhostile   infinite loop -> error: {e}\n          activation unchanged after its partial edit: {}",
            t.equal(&act)
        ),
    }
    let good = WasmHook::new(
        small.load_file(dir.join("scale.wasm"))?,
        r#"{"factor": 2.0}"#,
    )?;
    good.call(&ctx, &mut t)?;
    println!("          next call of a good plugin on the same runtime: ok");
    Ok(())
}
