//! Hostile plugins: every misbehaviour yields a clear typed error naming the
//! plugin, hook point and rank; the activation is left exactly as it was; the
//! host keeps serving (the next call of a good plugin succeeds, and the broken
//! plugin is re-instantiated on its next use).

mod hostile_common;

use std::sync::Arc;

use flexmodel::hooks::{
    CallContext, CpuLimit, Hook, HookErrorKind, LoadError, NonFinitePolicy, PluginError, RankInfo,
    Runtime, WasmHook,
};
use flexmodel_tests::{runtime_with, small_fuel_runtime, wasm};
use hostile_common::{activation, ctx, expect_failure};

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
            assert_eq!(supported, "0.1.2");
        }
        other => panic!("expected WrongVersion, got {other:?}"),
    }
    let text = e.to_string();
    assert!(text.contains("0.0.1") && text.contains("0.1.2"), "{text}");
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
