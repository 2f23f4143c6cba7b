//! Seeded fuzzing of every host function (issue 9): the `fuzz` guest calls
//! them all with arguments drawn from a seed, extreme values included. For
//! every forward call: no host panic (`HostPanic`) and nothing but typed
//! errors; a failed call leaves the activation bit-identical and the plugin
//! state unchanged (no rollback missed); a successful one reports the number
//! of host calls it made.
//!
//! CI runs a short seeded run; `scripts/fuzz.sh` runs at least a million
//! host calls: `FLEXMODEL_FUZZ_FORWARDS` x `FLEXMODEL_FUZZ_CALLS`, seeds from
//! `FLEXMODEL_FUZZ_SEED`.

use flexmodel::hooks::{CallContext, Hook, HookErrorKind, RankInfo, WasmHook};
use flexmodel_tests::{runtime_with, wasm};
use tch::{Kind, Tensor};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = Vec::try_from(t.flatten(0, -1).to_kind(Kind::Float)).unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

#[test]
fn every_host_function_under_seeded_arguments() {
    let forwards = env("FLEXMODEL_FUZZ_FORWARDS", 60);
    let calls = env("FLEXMODEL_FUZZ_CALLS", 200);
    let seed0 = env("FLEXMODEL_FUZZ_SEED", 1);
    let rt = runtime_with(|c| {
        c.cpu = flexmodel::hooks::CpuLimit::Fuel(50_000_000);
        c.max_memory_bytes = 64 << 20;
        c.call_limits.max_output_bytes_per_call = 1 << 20;
        c.call_limits.max_state_bytes = 64 << 10;
    });
    let plugin = rt.load(&wasm("fuzz")).unwrap();
    let dtypes = [Kind::Float, Kind::Half, Kind::BFloat16];
    let (mut ok, mut failed, mut host_calls) = (0u64, 0u64, 0u64);
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    for f in 0..forwards {
        let seed = seed0.wrapping_mul(1_000_003).wrapping_add(f);
        let replace = f % 5 == 4;
        let hook = WasmHook::new(
            plugin.clone(),
            &format!(r#"{{"seed": {seed}, "calls": {calls}, "replace": {replace}}}"#),
        )
        .unwrap();
        // A few forwards per registration, so state carries across calls.
        for round in 0..3u64 {
            tch::manual_seed(seed as i64);
            let shape: &[i64] = if f % 2 == 0 { &[2, 5, 16] } else { &[3, 7] };
            let orig = Tensor::randn(shape, (dtypes[(f % 3) as usize], tch::Device::Cpu));
            let mut t = orig.copy();
            let state_before = hook.state_snapshot(0);
            let ctx = CallContext {
                hook_point: "blocks.0.hook_resid_post".into(),
                rank: RankInfo::SINGLE,
                forward_index: round,
                generation: None,
                backward: false,
                tokens: None,
            };
            match hook.call(&ctx, &mut t) {
                Ok(r) => {
                    ok += 1;
                    host_calls += calls;
                    assert!(
                        r.emitted.iter().any(|e| e.key.ends_with(":calls")),
                        "seed {seed}"
                    );
                    for (_, m) in &r.logs {
                        assert!(!m.contains(['\n', '\r', '\u{1b}']), "unescaped log {m:?}");
                    }
                }
                Err(e) => {
                    failed += 1;
                    host_calls += calls;
                    assert!(
                        !matches!(e.kind, HookErrorKind::HostPanic { .. }),
                        "seed {seed} round {round}: {e}"
                    );
                    assert_eq!(
                        bits(&t),
                        bits(&orig),
                        "seed {seed} round {round}: rollback missed ({e})"
                    );
                    assert_eq!(
                        hook.state_snapshot(0),
                        state_before,
                        "seed {seed}: state changed by a failed call"
                    );
                    let k = format!("{:?}", e.kind);
                    *kinds
                        .entry(k.split(['(', ' ', '{']).next().unwrap_or("").to_string())
                        .or_default() += 1;
                }
            }
        }
    }
    println!(
        "fuzz: {} forward calls ({ok} ok, {failed} failed: {kinds:?}), about {host_calls} host calls",
        ok + failed
    );
    assert!(
        ok > 0 && failed > 0,
        "both the commit and the rollback paths must run"
    );
}
