//! Hostile plugins against host-side work and memory (issue 9): every host
//! function a guest calls is charged to its fuel and its memory is capped;
//! guest input never panics the host; output names, duplicate keys and log
//! lines cannot be abused. Each attack asserts the typed error, the memory
//! or time bound, and that the activation is unchanged.

mod hostile_common;

use std::sync::Arc;

use flexmodel::hooks::{CpuLimit, Hook, HookError, HookErrorKind, PluginError, Runtime, WasmHook};
use flexmodel_tests::{runtime, runtime_with, small_fuel_runtime, wasm};
use hostile_common::{POINT, activation, bits_equal, ctx, expect_failure};
use tch::{Kind, Tensor};

/// Peak resident memory (VmHWM) growth while `f` runs, after resetting the
/// peak to the current size (`/proc/self/clear_refs`).
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, u64) {
    fn kib(field: &str) -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = kib("VmRSS:");
    let r = f();
    let after = kib("VmHWM:");
    (r, after.saturating_sub(before) * 1024)
}

/// A 4 MiB activation.
fn big_activation() -> Tensor {
    tch::manual_seed(5);
    Tensor::randn([4, 256, 1024], (Kind::Float, tch::Device::Cpu))
}

/// Run an attack `config` on a big activation: the call fails with an error
/// naming plugin, point and rank, the activation is unchanged; returns the
/// error, the peak memory growth and the time taken.
fn attack(rt: &Arc<Runtime>, config: &str) -> (HookError, u64, std::time::Duration) {
    let hostile = WasmHook::new(rt.load(&wasm("hostile")).unwrap(), config).unwrap();
    let orig = big_activation();
    let mut t = orig.copy();
    let start = std::time::Instant::now();
    let (r, peak) = peak_growth(|| hostile.call(&ctx(), &mut t));
    let took = start.elapsed();
    let err = r.expect_err("the attack must fail");
    eprintln!("{config}: {err} (peak +{} MiB, {took:?})", peak >> 20);
    assert_eq!(
        (err.plugin.as_str(), err.hook_point.as_str(), err.rank),
        ("hostile", POINT, 3)
    );
    assert!(
        bits_equal(&t, &orig),
        "activation changed by a failed attack"
    );
    (err, peak, took)
}

/// An attack that must end in `OutOfFuel` (the small budget) with the
/// host's memory growing by less than 64 MiB; returns the time it took.
fn fuel_attack(rt: &Arc<Runtime>, config: &str) -> std::time::Duration {
    let (e, peak, took) = attack(rt, config);
    assert_eq!(
        e.kind,
        HookErrorKind::OutOfFuel {
            budget: 200_000_000
        },
        "{config}"
    );
    assert!(peak < 64 << 20, "{config}: peak grew by {peak} bytes");
    took
}

#[test]
fn rewriting_the_activation_forever_runs_out_of_fuel_with_the_journal_bounded() {
    // Before: the undo journal grew by the activation on every fill (4 GB in
    // 7 s) and the fuel limit never saw the host's work.
    let took = fuel_attack(&small_fuel_runtime(), r#"{"mode": "journal-bomb"}"#);
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
}

#[test]
fn removing_distinct_absent_keys_holds_no_memory() {
    fuel_attack(&small_fuel_runtime(), r#"{"mode": "remove-bomb"}"#);
}

#[test]
fn repeated_whole_activation_emits_stop_at_the_call_cap() {
    // It ignores the refusals and loops on: the host work still costs fuel.
    let rt = runtime_with(|c| {
        c.cpu = CpuLimit::Fuel(200_000_000);
        c.call_limits.max_output_bytes_per_call = 16 << 20;
    });
    fuel_attack(&rt, r#"{"mode": "emit-bomb"}"#);
}

#[test]
fn huge_log_messages_are_charged_in_full() {
    fuel_attack(&small_fuel_runtime(), r#"{"mode": "log-bomb"}"#);
}

#[test]
fn zero_byte_emits_are_not_free() {
    // Before: 20 000 zero-byte emits cost nothing and took 44-60 s to rename.
    let start = std::time::Instant::now();
    let e = expect_failure(
        &small_fuel_runtime(),
        r#"{"mode": "zero-emits", "bytes": 20000}"#,
    );
    assert!(
        matches!(&e.kind, HookErrorKind::Plugin(PluginError::LimitExceeded(m)) if m.contains("outputs in one call")),
        "{e}"
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn forty_thousand_state_keys_stay_fast() {
    // Before: `state.set` walked the whole map (40 000 keys: 8 s, and every
    // later call stayed slow).
    let rt = runtime();
    let h = WasmHook::new(
        rt.load(&wasm("hostile")).unwrap(),
        r#"{"mode": "state-many", "bytes": 40000}"#,
    )
    .unwrap();
    for round in 0..2 {
        let mut t = activation();
        let start = std::time::Instant::now();
        let r = h.call(&ctx(), &mut t).expect("state-many");
        let took = start.elapsed();
        let keys: Vec<f32> = Vec::try_from(r.emitted[0].tensor.flatten(0, -1)).unwrap();
        assert_eq!(keys, vec![40000.0]);
        assert!(
            took < std::time::Duration::from_secs(4),
            "round {round}: {took:?}"
        );
    }
    assert_eq!(h.state_snapshot(3).len(), 40000);
}

#[test]
fn a_state_key_count_over_the_cap_is_refused() {
    let rt = runtime_with(|c| c.call_limits.max_state_keys = 100);
    let e = expect_failure(&rt, r#"{"mode": "state-many", "bytes": 101}"#);
    assert!(
        matches!(&e.kind, HookErrorKind::Plugin(PluginError::LimitExceeded(m)) if m.contains("keys")),
        "{e}"
    );
}

#[test]
fn a_shape_over_i64_max_is_refused_not_a_panic() {
    // Before: [u64::MAX, 0] passed the element count check and reached a
    // panicking tch reshape, skipping the rollback.
    expect_invalid_argument("shape-bomb", "exceeds");
    expect_invalid_argument("shape-bomb-bytes", "exceeds");
}

#[test]
fn a_panic_in_a_host_function_is_caught_named_and_rolled_back() {
    let rt = runtime_with(|c| c.call_limits.fault_injection = true);
    let e = expect_failure(&rt, r#"{"mode": "fault"}"#);
    assert!(
        matches!(&e.kind, HookErrorKind::HostPanic { message } if message.contains("fault injected")),
        "{e}"
    );
}

/// `expect_failure` of `mode`, with an `invalid-argument` error saying `needle`.
fn expect_invalid_argument(mode: &str, needle: &str) {
    let e = expect_failure(&small_fuel_runtime(), &format!(r#"{{"mode": "{mode}"}}"#));
    assert!(
        matches!(&e.kind, HookErrorKind::Plugin(PluginError::InvalidArgument(m)) if m.contains(needle)),
        "{mode}: {e}"
    );
}

#[test]
fn output_names_with_dot_segments_are_refused() {
    expect_invalid_argument("dotdot", "..");
}

#[test]
fn an_output_key_emitted_twice_is_refused_not_renamed() {
    expect_invalid_argument("same-key", "already emitted");
}

#[test]
fn log_lines_cannot_forge_other_lines_or_escape_the_terminal() {
    let h = WasmHook::new(
        small_fuel_runtime().load(&wasm("hostile")).unwrap(),
        r#"{"mode": "log-forge"}"#,
    )
    .unwrap();
    let mut t = activation();
    let r = h.call(&ctx(), &mut t).unwrap();
    let msg = &r.logs[0].1;
    assert!(!msg.contains(['\n', '\r', '\u{1b}']), "{msg:?}");
    assert!(msg.contains("\\n") && msg.contains("\\u{1b}"), "{msg:?}");
}
