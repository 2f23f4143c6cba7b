//! Hostile plugins: every misbehaviour yields a clear typed error naming the
//! plugin, hook point and rank; the activation is left exactly as it was; the
//! host keeps serving (the next call of a good plugin succeeds, and the broken
//! plugin is re-instantiated on its next use).

use std::sync::Arc;

use flexmodel::hooks::{
    CallContext, CpuLimit, Hook, HookError, HookErrorKind, LoadError, NonFinitePolicy, PluginError,
    RankInfo, Runtime, WasmHook,
};
use flexmodel_tests::{runtime, runtime_with, small_fuel_runtime, wasm};
use tch::{Kind, Tensor};

const POINT: &str = "blocks.2.hook_resid_post";

fn ctx() -> CallContext {
    CallContext {
        hook_point: POINT.into(),
        rank: RankInfo {
            global_rank: 3,
            tp_rank: 1,
            tp_size: 2,
            world_size: 4,
            ..RankInfo::SINGLE
        },
        forward_index: 0,
        generation: None,
        backward: false,
    }
}

fn activation() -> Tensor {
    tch::manual_seed(11);
    Tensor::randn([2, 4, 8], (Kind::Float, tch::Device::Cpu))
}

fn bits_equal(a: &Tensor, b: &Tensor) -> bool {
    let a: Vec<f32> = Vec::try_from(a.flatten(0, -1)).unwrap();
    let b: Vec<f32> = Vec::try_from(b.flatten(0, -1)).unwrap();
    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()) && a.len() == b.len()
}

/// Run `mode` on `rt`, check the error names plugin, point and rank, that
/// the activation is unchanged, and that a good plugin still works after it
/// (and the hostile plugin fails the same way again: no state leaks).
fn expect_failure(rt: &Arc<Runtime>, config: &str) -> HookError {
    let hostile = WasmHook::new(rt.load(&wasm("hostile")).unwrap(), config).unwrap();
    let orig = activation();
    let mut t = orig.copy();
    let err = hostile
        .call(&ctx(), &mut t)
        .expect_err("hostile call must fail");
    eprintln!("{config}: {err}");
    assert_eq!(err.plugin, "hostile");
    assert_eq!(err.hook_point, POINT);
    assert_eq!(err.rank, 3);
    let text = err.to_string();
    assert!(
        text.contains("hostile") && text.contains(POINT) && text.contains("rank 3"),
        "{text}"
    );
    assert!(
        bits_equal(&t, &orig),
        "activation changed by a failed call ({config})"
    );

    // The host keeps serving: a good plugin on the same runtime works.
    let good = WasmHook::new(rt.load(&wasm("scale")).unwrap(), r#"{"factor": 2}"#).unwrap();
    good.call(&ctx(), &mut t)
        .expect("good plugin after a hostile one");
    assert!(bits_equal(&t, &(&orig * 2.0)));

    // The hostile plugin is re-instantiated if it trapped, and fails alike.
    let mut t2 = orig.copy();
    let again = hostile.call(&ctx(), &mut t2).expect_err("fails again");
    assert_eq!(
        std::mem::discriminant(&again.kind),
        std::mem::discriminant(&err.kind)
    );
    assert!(bits_equal(&t2, &orig));
    err
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "loop"}"#);
    assert_eq!(
        e.kind,
        HookErrorKind::OutOfFuel {
            budget: 200_000_000
        }
    );
}

#[test]
fn infinite_loop_hits_the_epoch_deadline() {
    let limit = std::time::Duration::from_millis(100);
    let rt = runtime_with(|c| c.cpu = CpuLimit::Deadline(limit));
    let start = std::time::Instant::now();
    let e = expect_failure(&rt, r#"{"mode": "loop"}"#);
    assert_eq!(e.kind, HookErrorKind::DeadlineExceeded { limit });
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn memory_bomb_hits_the_memory_cap() {
    let rt = runtime_with(|c| c.max_memory_bytes = 64 << 20);
    let e = expect_failure(&rt, r#"{"mode": "memory"}"#);
    assert_eq!(
        e.kind,
        HookErrorKind::MemoryLimit {
            limit_bytes: 64 << 20
        }
    );
}

#[test]
fn deep_recursion_overflows_the_stack() {
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "recurse"}"#);
    assert_eq!(e.kind, HookErrorKind::StackOverflow);
}

#[test]
fn shadow_stack_overflow_is_a_trap() {
    // Big locals live on the guest's own stack in linear memory; overflowing
    // it shows up as an out-of-bounds access, still a typed trap.
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "recurse-shadow"}"#);
    assert!(
        matches!(&e.kind, HookErrorKind::Trap { message } if message.contains("out of bounds"))
            || e.kind == HookErrorKind::StackOverflow,
        "{e}"
    );
}

#[test]
fn opening_a_file_is_denied() {
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "file"}"#);
    assert_eq!(
        e.kind,
        HookErrorKind::CapabilityDenied {
            capability: "filesystem".into()
        }
    );
}

#[test]
fn reading_the_wall_clock_is_denied() {
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "clock"}"#);
    assert_eq!(
        e.kind,
        HookErrorKind::CapabilityDenied {
            capability: "wall clock".into()
        }
    );
}

#[test]
fn reading_the_monotonic_clock_is_denied() {
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "monotonic"}"#);
    assert_eq!(
        e.kind,
        HookErrorKind::CapabilityDenied {
            capability: "monotonic clock".into()
        }
    );
}

#[test]
fn opening_a_socket_is_denied() {
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "network"}"#);
    assert!(
        matches!(&e.kind, HookErrorKind::CapabilityDenied { capability } if capability.starts_with("network")),
        "{e}"
    );
}

#[test]
fn reading_the_environment_is_denied() {
    // SAFETY: set before any runtime of this test exists; tests of this binary
    // never read it concurrently.
    unsafe { std::env::set_var("FLEXMODEL_TEST_SECRET", "hunter2") };
    assert!(std::env::vars().count() > 1);
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "env"}"#);
    assert_eq!(
        e.kind,
        HookErrorKind::CapabilityDenied {
            capability: "environment variables".into()
        }
    );

    // Granted explicitly, exactly the granted variables are visible.
    let rt = runtime_with(|c| c.grants.env = vec![("A".into(), "xyz".into())]);
    let h = WasmHook::new(rt.load(&wasm("hostile")).unwrap(), r#"{"mode": "env"}"#).unwrap();
    let mut t = activation();
    let r = h.call(&ctx(), &mut t).unwrap();
    let seen: Vec<f32> = Vec::try_from(&r.emitted[0].tensor).unwrap();
    assert_eq!(seen, vec![1.0, 4.0]);
}

#[test]
fn panic_is_reported_with_its_message() {
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "panic"}"#);
    match e.kind {
        HookErrorKind::Panic { message } => {
            assert!(
                message.contains("hostile plugin panicked on purpose"),
                "{message}"
            )
        }
        k => panic!("expected a panic, got {k}"),
    }
}

#[test]
fn write_of_the_wrong_length_is_refused() {
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "wrong-length"}"#);
    assert!(
        matches!(&e.kind, HookErrorKind::Plugin(PluginError::InvalidArgument(m)) if m.contains("65 values")),
        "{e}"
    );
}

#[test]
fn write_out_of_range_is_refused() {
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "out-of-range"}"#);
    assert!(
        matches!(&e.kind, HookErrorKind::Plugin(PluginError::InvalidArgument(m)) if m.contains("out of bounds")),
        "{e}"
    );
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "bad-slice"}"#);
    assert!(
        matches!(&e.kind, HookErrorKind::Plugin(PluginError::InvalidArgument(m)) if m.contains("out of range")),
        "{e}"
    );
}

#[test]
fn plugin_error_after_partial_edit_is_rolled_back() {
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "error"}"#);
    assert_eq!(
        e.kind,
        HookErrorKind::Plugin(PluginError::Failed(
            "hostile plugin failed on purpose".into()
        ))
    );
}

#[test]
fn nan_writes_follow_the_policy() {
    let orig = activation();
    // Allow (default): written, not counted.
    let rt = small_fuel_runtime();
    let h = WasmHook::new(rt.load(&wasm("hostile")).unwrap(), r#"{"mode": "nan"}"#).unwrap();
    let mut t = orig.copy();
    let r = h.call(&ctx(), &mut t).unwrap();
    assert_eq!(r.non_finite_written, 0);
    assert!(t.double_value(&[0, 0, 0]).is_nan());

    // Report: written, counted and logged.
    let rt = runtime_with(|c| c.non_finite = NonFinitePolicy::Report);
    let h = WasmHook::new(rt.load(&wasm("hostile")).unwrap(), r#"{"mode": "nan"}"#).unwrap();
    let mut t = orig.copy();
    let r = h.call(&ctx(), &mut t).unwrap();
    assert_eq!(r.non_finite_written, 2);
    assert!(r.logs.iter().any(|(_, m)| m.contains("2 non-finite")));
    assert!(t.double_value(&[0, 0, 1]).is_infinite());

    // Reject: the call fails and nothing is written.
    let rt = runtime_with(|c| c.non_finite = NonFinitePolicy::Reject);
    let e = expect_failure(&rt, r#"{"mode": "nan"}"#);
    assert_eq!(e.kind, HookErrorKind::NonFinite { count: 2 });
}

#[test]
fn oversized_output_is_capped() {
    let rt = runtime_with(|c| c.call_limits.max_output_bytes_per_call = 1 << 20);
    let e = expect_failure(&rt, r#"{"mode": "big-output", "bytes": 2097152}"#);
    assert!(
        matches!(&e.kind, HookErrorKind::Plugin(PluginError::LimitExceeded(m)) if m.contains("cap")),
        "{e}"
    );
    // Ignoring the refusal does not help: the call still fails.
    let e = expect_failure(&rt, r#"{"mode": "ignore-big-output", "bytes": 2097152}"#);
    assert!(
        matches!(
            &e.kind,
            HookErrorKind::Plugin(PluginError::LimitExceeded(_))
        ),
        "{e}"
    );
}

#[test]
fn partial_replacement_is_refused() {
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "replace-partial"}"#);
    assert!(
        matches!(&e.kind, HookErrorKind::Plugin(PluginError::InvalidArgument(m)) if m.contains("32 of 64 were left unwritten")),
        "{e}"
    );
}

#[test]
fn failed_replacement_is_discarded() {
    let e = expect_failure(&small_fuel_runtime(), r#"{"mode": "replace-then-error"}"#);
    assert!(
        matches!(&e.kind, HookErrorKind::Plugin(PluginError::Failed(_))),
        "{e}"
    );
}

#[test]
fn failed_call_leaves_state_untouched() {
    let rt = small_fuel_runtime();
    let h = WasmHook::new(
        rt.load(&wasm("hostile")).unwrap(),
        r#"{"mode": "state-then-error"}"#,
    )
    .unwrap();
    let mut t = activation();
    h.call(&ctx(), &mut t).unwrap_err();
    assert!(h.state_snapshot(3).is_empty());
}

#[test]
fn trap_during_init_is_a_registration_error() {
    let rt = small_fuel_runtime();
    let p = rt.load(&wasm("hostile")).unwrap();
    match WasmHook::new(p, r#"{"mode": "trap-in-init"}"#) {
        Err(LoadError::Init { plugin, error }) => {
            assert_eq!(plugin, "hostile");
            assert!(error.contains("init exploded"), "{error}");
        }
        other => panic!("expected init error, got {other:?}"),
    }
}

fn good_plugin_still_loads(rt: &Arc<Runtime>) {
    let h = WasmHook::new(rt.load(&wasm("scale")).unwrap(), r#"{"factor": 2}"#).unwrap();
    let mut t = activation();
    h.call(&ctx(), &mut t).unwrap();
}

#[test]
fn garbage_bytes_are_refused() {
    let rt = small_fuel_runtime();
    for bytes in [
        &b""[..],
        b"hello, I am not wasm",
        b"\0asm\xff\xff\xff\xff garbage",
    ] {
        match rt.load(bytes) {
            Err(LoadError::NotWasm(_)) => {}
            other => panic!("expected NotWasm, got {other:?}"),
        }
    }
    // Valid header, corrupt body.
    let mut b = wasm("scale");
    let n = b.len();
    b.truncate(n / 2);
    assert!(matches!(rt.load(&b), Err(LoadError::Invalid(_))));
    good_plugin_still_loads(&rt);
}

#[test]
fn core_module_is_refused() {
    let rt = small_fuel_runtime();
    let core = wat::parse_str("(module (func (export \"on-forward\")))").unwrap();
    let e = rt.load(&core).unwrap_err();
    assert!(matches!(e, LoadError::CoreModule));
    assert!(e.to_string().contains("not a component"));
    good_plugin_still_loads(&rt);
}

#[test]
fn component_of_another_world_is_refused() {
    let rt = small_fuel_runtime();
    let e = rt.load(&wasm("other-world")).unwrap_err();
    match &e {
        LoadError::WrongWorld { exports } => assert!(exports.contains("add"), "{exports}"),
        other => panic!("expected WrongWorld, got {other:?}"),
    }
    good_plugin_still_loads(&rt);
}

#[test]
fn old_wit_version_is_refused_naming_both_versions() {
    let rt = small_fuel_runtime();
    let e = rt.load(&wasm("old-version")).unwrap_err();
    match &e {
        LoadError::WrongVersion { found, supported } => {
            assert_eq!(found, "0.0.1");
            assert_eq!(supported, "0.1.1");
        }
        other => panic!("expected WrongVersion, got {other:?}"),
    }
    let text = e.to_string();
    assert!(text.contains("0.0.1") && text.contains("0.1.1"), "{text}");
    good_plugin_still_loads(&rt);
}

#[test]
fn hostile_plugin_on_one_rank_does_not_disturb_another_plugin() {
    let rt = small_fuel_runtime();
    let counter = WasmHook::new(rt.load(&wasm("bench")).unwrap(), r#"{"mode": "noop"}"#).unwrap();
    let hostile = WasmHook::new(rt.load(&wasm("hostile")).unwrap(), r#"{"mode": "loop"}"#).unwrap();
    let mut t = activation();
    for _ in 0..3 {
        counter.call(&ctx(), &mut t).unwrap();
        hostile.call(&ctx(), &mut t).unwrap_err();
    }
    assert!(counter.has_instance(3));
}

#[test]
fn instance_limit_is_a_typed_error_and_frees_up() {
    // Pool of two instances: two registrations fit, a third is refused with a
    // clear error, and dropping one makes room again.
    let rt = runtime_with(|c| c.max_instances = 2);
    let p = rt.load(&wasm("scale")).unwrap();
    let a = WasmHook::new(p.clone(), r#"{"factor": 2}"#).unwrap();
    let b = WasmHook::new(p.clone(), r#"{"factor": 2}"#).unwrap();
    match WasmHook::new(p.clone(), r#"{"factor": 2}"#) {
        Err(e @ LoadError::Instantiate { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("scale") && text.contains("could not be instantiated"),
                "{text}"
            );
            assert!(!text.contains("configuration"), "{text}");
        }
        other => panic!("expected an instance-limit error, got {other:?}"),
    }
    let mut t = activation();
    let rank0 = CallContext {
        rank: RankInfo::SINGLE,
        ..ctx()
    };
    b.call(&rank0, &mut t)
        .expect("existing instances keep working");
    // Another rank needs a new instance: refused, typed, naming plugin and rank.
    let e = b.call(&ctx(), &mut t).unwrap_err();
    assert_eq!((e.plugin.as_str(), e.rank), ("scale", 3));
    assert!(
        matches!(&e.kind, HookErrorKind::Instantiate { message } if message.contains("limit")),
        "{e}"
    );
    drop(a);
    WasmHook::new(p, r#"{"factor": 2}"#).expect("room again after dropping one");
}

// ---- Issue 9: host-side work and memory, panics, names and logs ----------

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
