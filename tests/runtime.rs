//! The hook runtime on tch tensors: loading and validating components, the
//! compile cache, edits, slices, dtypes, state, randomness, per-rank
//! instances, limits of access.

use std::sync::Arc;

use flexmodel::hooks::{
    CallContext, CpuLimit, Hook, HookErrorKind, LoadError, PluginError, RankInfo, WasmHook,
};
use flexmodel_tests::{max_abs, runtime, runtime_with, wasm};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

fn ctx(point: &str) -> CallContext {
    CallContext {
        hook_point: point.into(),
        rank: RankInfo::SINGLE,
        forward_index: 0,
        generation: None,
        backward: false,
        tokens: None,
    }
}

fn randn(shape: &[i64]) -> Tensor {
    tch::manual_seed(7);
    Tensor::randn(shape, (Kind::Float, tch::Device::Cpu))
}

fn hook(name: &str, config: &str) -> WasmHook {
    let rt = runtime();
    let plugin = rt.load(&wasm(name)).expect("load");
    WasmHook::new(plugin, config).expect("register")
}

#[test]
fn loads_plugin_with_metadata_hash_and_version() {
    let bytes = wasm("scale");
    let rt = runtime();
    let p = rt.load(&bytes).unwrap();
    assert_eq!(p.info.name, "scale");
    assert_eq!(p.info.version, "0.1.0");
    assert!(p.info.edits);
    assert_eq!(p.wit_version, "0.1.2");
    assert_eq!(p.hash, hex::encode(Sha256::digest(&bytes)));
    // Same bytes, same plugin object (compiled once).
    let again = rt.load(&bytes).unwrap();
    assert!(Arc::ptr_eq(&p, &again));
}

#[test]
fn precompiled_artifact_is_cached_on_disk_by_content_hash() {
    let dir = std::env::temp_dir().join(format!("flexmodel-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bytes = wasm("steer");
    let hash = hex::encode(Sha256::digest(&bytes));
    {
        let rt = runtime_with(|c| c.cache_dir = Some(dir.clone()));
        rt.load(&bytes).unwrap();
    }
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with(&hash) && f.ends_with(".cwasm")),
        "{files:?}"
    );
    // A fresh runtime (same engine configuration) loads from the cache and works.
    let rt = runtime_with(|c| c.cache_dir = Some(dir.clone()));
    let p = rt.load(&bytes).unwrap();
    let h = WasmHook::new(p, r#"{"vector":[1,2],"alpha":1}"#).unwrap();
    let mut t = Tensor::zeros([1, 1, 2], (Kind::Float, tch::Device::Cpu));
    h.call(&ctx("x"), &mut t).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap(),
        vec![1.0, 2.0]
    );
    // A tampered artifact is not trusted: it is recompiled, not deserialised.
    let art = dir.join(files.iter().find(|f| f.ends_with(".cwasm")).unwrap());
    std::fs::write(&art, b"not a precompiled module").unwrap();
    let rt = runtime_with(|c| c.cache_dir = Some(dir.clone()));
    assert!(rt.load(&bytes).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scale_edits_in_place_exactly() {
    let h = hook("scale", r#"{"factor": 2.0}"#);
    let orig = randn(&[2, 5, 8]);
    let mut t = orig.copy();
    let r = h.call(&ctx("blocks.0.hook_resid_post"), &mut t).unwrap();
    assert!(r.edited);
    assert_eq!(max_abs(&t, &(&orig * 2.0)), 0.0);
}

#[test]
fn scale_on_a_slice_only_touches_the_slice() {
    let h = hook("scale", r#"{"factor": -1.0, "slice": [null, -1]}"#);
    let orig = randn(&[2, 5, 8]);
    let mut t = orig.copy();
    h.call(&ctx("p"), &mut t).unwrap();
    let expect = orig.copy();
    let _ = expect.narrow(1, 4, 1).g_mul_scalar_(-1.0);
    assert_eq!(max_abs(&t, &expect), 0.0);
}

#[test]
fn edits_reach_non_contiguous_views() {
    let h = hook("scale", r#"{"factor": 3.0, "slice": [0]}"#);
    let base = randn(&[4, 6]);
    let orig = base.copy();
    // A transposed view: element [i, j] of the view is base[j, i].
    let mut view = base.transpose(0, 1);
    assert!(!view.is_contiguous());
    h.call(&ctx("p"), &mut view).unwrap();
    let expect = orig.copy();
    let _ = expect.narrow(1, 0, 1).g_mul_scalar_(3.0);
    assert_eq!(max_abs(&base, &expect), 0.0);
}

#[test]
fn half_precision_activations_are_supported() {
    for kind in [Kind::Half, Kind::BFloat16] {
        let h = hook("scale", r#"{"factor": 2.0}"#);
        let orig = randn(&[3, 4]).to_kind(kind);
        let mut t = orig.copy();
        h.call(&ctx("p"), &mut t).unwrap();
        assert_eq!(t.kind(), kind);
        // ×2 is exact in any binary float format.
        assert_eq!(max_abs(&t, &(&orig * 2.0)), 0.0, "{kind:?}");
    }
}

#[test]
fn retrieve_emits_a_slice_without_editing() {
    let h = hook("retrieve", r#"{"slice": [null, -1]}"#);
    assert!(!h.access().edits());
    assert!(
        h.access().reads.is_some(),
        "retrieve declares the slice it reads"
    );
    let orig = randn(&[2, 5, 8]);
    let mut t = orig.copy();
    let r = h.call(&ctx("blocks.3.hook_resid_post"), &mut t).unwrap();
    assert!(!r.edited);
    assert_eq!(max_abs(&t, &orig), 0.0);
    assert_eq!(r.emitted.len(), 1);
    assert_eq!(r.emitted[0].key, "blocks.3.hook_resid_post");
    let got = &r.emitted[0].tensor;
    assert_eq!(got.size(), vec![2, 1, 8]);
    assert_eq!(max_abs(got, &orig.narrow(1, 4, 1)), 0.0);
    // The emitted tensor owns its storage: later edits of the activation don't leak in.
    let _ = t.fill_(0.0);
    assert_eq!(max_abs(got, &orig.narrow(1, 4, 1)), 0.0);
}

#[test]
fn retrieve_whole_activation_with_a_name() {
    let h = hook("retrieve", r#"{"name": "full"}"#);
    let orig = randn(&[3, 7]);
    let mut t = orig.copy();
    let r = h.call(&ctx("p"), &mut t).unwrap();
    assert_eq!(r.emitted[0].key, "p:full");
    assert_eq!(max_abs(&r.emitted[0].tensor, &orig), 0.0);
}

#[test]
fn ablate_neurons_at_positions() {
    let h = hook("ablate", r#"{"neurons": [1, 6], "positions": [0, -1]}"#);
    let orig = randn(&[2, 4, 8]);
    let mut t = orig.copy();
    h.call(&ctx("p"), &mut t).unwrap();
    let expect = orig.copy();
    for p in [0i64, 3] {
        for n in [1i64, 6] {
            let _ = expect.narrow(1, p, 1).narrow(2, n, 1).fill_(0.0);
        }
    }
    assert_eq!(max_abs(&t, &expect), 0.0);
}

#[test]
fn ablate_heads_in_flat_and_split_layouts() {
    // [batch, pos, n_heads * d_head] with 4 heads of 3.
    let h = hook("ablate", r#"{"heads": [2], "num_heads": 4}"#);
    let orig = randn(&[2, 3, 12]);
    let mut t = orig.copy();
    h.call(&ctx("p"), &mut t).unwrap();
    let expect = orig.copy();
    let _ = expect.narrow(2, 6, 3).fill_(0.0);
    assert_eq!(max_abs(&t, &expect), 0.0);

    // [batch, pos, head, d_head] (TransformerLens hook_z layout).
    let h = hook("ablate", r#"{"heads": [0, -1]}"#);
    let orig = randn(&[2, 3, 4, 5]);
    let mut t = orig.copy();
    h.call(&ctx("p"), &mut t).unwrap();
    let expect = orig.copy();
    let _ = expect.narrow(2, 0, 1).fill_(0.0);
    let _ = expect.narrow(2, 3, 1).fill_(0.0);
    assert_eq!(max_abs(&t, &expect), 0.0);
}

#[test]
fn steer_adds_scaled_vector() {
    let h = hook(
        "steer",
        r#"{"vector": [1, -2, 0.5, 4], "alpha": 0.5, "positions": [-1]}"#,
    );
    let orig = randn(&[2, 3, 4]);
    let mut t = orig.copy();
    h.call(&ctx("p"), &mut t).unwrap();
    let v = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 4.0]) * 0.5;
    let expect = orig.copy();
    let _ = expect.narrow(1, 2, 1).g_add_(&v);
    assert!(max_abs(&t, &expect) < 1e-6);
}

#[test]
fn bad_configs_are_refused_at_registration() {
    let rt = runtime();
    for (name, cfg) in [
        ("scale", r#"{"factor": "x"}"#),
        ("scale", r#"{"factr": 2}"#),
        ("scale", "not json"),
        ("ablate", r#"{}"#),
        ("steer", r#"{"vector": []}"#),
        ("scale-py", r#"{"factor": "x"}"#),
    ] {
        let p = rt.load(&wasm(name)).unwrap();
        match WasmHook::new(p, cfg) {
            Err(LoadError::Init { plugin, error }) => {
                assert_eq!(plugin, name);
                assert!(error.contains("invalid config"), "{error}");
            }
            other => panic!("{name} {cfg}: expected an init error, got {other:?}"),
        }
    }
}

#[test]
fn steer_vector_of_wrong_length_is_a_typed_error_and_changes_nothing() {
    let h = hook("steer", r#"{"vector": [1, 2, 3]}"#);
    let orig = randn(&[1, 2, 4]);
    let mut t = orig.copy();
    let e = h.call(&ctx("blocks.0.hook_resid_pre"), &mut t).unwrap_err();
    assert_eq!(e.plugin, "steer");
    assert_eq!(e.hook_point, "blocks.0.hook_resid_pre");
    assert!(
        matches!(
            e.kind,
            HookErrorKind::Plugin(PluginError::InvalidArgument(_))
        ),
        "{e}"
    );
    assert_eq!(max_abs(&t, &orig), 0.0);
}

#[test]
fn python_plugin_matches_rust_plugin() {
    let rt = runtime();
    let py = rt.load(&wasm("scale-py")).unwrap();
    assert_eq!(py.info.name, "scale-py");
    assert_eq!(py.wit_version, "0.1.2");
    let rs = WasmHook::new(
        rt.load(&wasm("scale")).unwrap(),
        r#"{"factor": 1.5, "slice": [null, [1, 3]]}"#,
    )
    .unwrap();
    let py_host = WasmHook::new(py.clone(), r#"{"factor": 1.5, "slice": [null, [1, 3]]}"#).unwrap();
    let py_guest = WasmHook::new(py, r#"{"factor": 1.5, "via_guest": true}"#).unwrap();
    let orig = randn(&[2, 4, 6]);
    let (mut a, mut b) = (orig.copy(), orig.copy());
    rs.call(&ctx("p"), &mut a).unwrap();
    py_host.call(&ctx("p"), &mut b).unwrap();
    assert_eq!(max_abs(&a, &b), 0.0);
    // Values moved into Python and back as bytes, multiplied there (f32 ×1.5 in
    // Python's double then rounded: equal to f32 multiplication for these).
    let mut c = orig.copy();
    let r = py_guest.call(&ctx("p"), &mut c).unwrap();
    assert!(max_abs(&c, &(&orig * 1.5)) < 1e-6);
    assert!(
        r.logs
            .iter()
            .any(|(_, m)| m.contains("scaled 48 values in Python")),
        "{:?}",
        r.logs
    );
}

#[test]
fn state_persists_across_calls_and_is_per_rank() {
    let h = hook("hostile", r#"{"mode": "counter"}"#);
    let mut t = randn(&[2, 2]);
    for want in 1..=3 {
        let r = h.call(&ctx("p"), &mut t).unwrap();
        assert_eq!(r.emitted[0].key, "p:calls");
        assert_eq!(r.emitted[0].tensor.double_value(&[0]), want as f64);
    }
    // Another rank has its own instance and its own state.
    let rank1 = CallContext {
        rank: RankInfo {
            global_rank: 1,
            tp_rank: 1,
            tp_size: 2,
            world_size: 2,
            ..RankInfo::SINGLE
        },
        ..ctx("p")
    };
    let r = h.call(&rank1, &mut t).unwrap();
    assert_eq!(r.emitted[0].tensor.double_value(&[0]), 1.0);
    assert_eq!(
        h.state_snapshot(0).get("calls").map(|v| v.as_slice()),
        Some(&b"3"[..])
    );
}

#[test]
fn state_survives_a_trap_and_the_failed_call_writes_nothing() {
    let h = hook("hostile", r#"{"mode": "counter", "panic_at": 3}"#);
    let mut t = randn(&[2, 2]);
    h.call(&ctx("p"), &mut t).unwrap();
    h.call(&ctx("p"), &mut t).unwrap();
    let e = h.call(&ctx("p"), &mut t).unwrap_err();
    assert!(
        matches!(e.kind, HookErrorKind::Panic { ref message } if message.contains("counter reached 3")),
        "{e}"
    );
    assert!(!h.has_instance(0), "a trapped instance is dropped");
    // Re-instantiated; the failed call's state write (3) was discarded.
    assert_eq!(
        h.state_snapshot(0).get("calls").map(|v| v.as_slice()),
        Some(&b"2"[..])
    );
    let r = h.call(&ctx("p"), &mut t).unwrap_err();
    // The counter reaches 3 again (it continues from the committed 2).
    assert!(matches!(r.kind, HookErrorKind::Panic { .. }));
}

#[test]
fn random_stream_is_host_seeded_and_identical_across_ranks() {
    let rt = runtime_with(|c| c.seed = 42);
    let p = rt.load(&wasm("bench")).unwrap();
    let a = WasmHook::new(p.clone(), r#"{"mode": "random"}"#).unwrap();
    let b = WasmHook::new(p, r#"{"mode": "random"}"#).unwrap();
    let mut t = randn(&[1]);
    let draw = |h: &WasmHook, rank: u32, fwd: u64| -> Vec<f32> {
        let c = CallContext {
            hook_point: "p".into(),
            rank: RankInfo {
                global_rank: rank,
                ..RankInfo::SINGLE
            },
            forward_index: fwd,
            generation: None,
            backward: false,
            tokens: None,
        };
        let r = h.call(&c, &mut t.shallow_clone()).unwrap();
        r.emitted
            .iter()
            .flat_map(|e| Vec::<f32>::try_from(e.tensor.flatten(0, -1)).unwrap())
            .collect()
    };
    let x = draw(&a, 0, 5);
    assert_eq!(
        x,
        draw(&a, 1, 5),
        "same call on another rank draws the same numbers"
    );
    assert_eq!(x, draw(&b, 3, 5), "same registration config, same stream");
    assert_ne!(x, draw(&a, 0, 6), "next forward pass draws new numbers");
    assert!(x[..4].iter().all(|&u| (0.0..1.0).contains(&u)));
    let _ = &mut t;
}

#[test]
fn read_only_access_refuses_writes() {
    let h = hook("bench", r#"{"mode": "try-write"}"#);
    let orig = randn(&[4]);
    let mut t = orig.copy();
    let e = h.call(&ctx("p"), &mut t).unwrap_err();
    assert!(
        matches!(e.kind, HookErrorKind::Plugin(PluginError::InvalidArgument(ref m)) if m.contains("read-only")),
        "{e}"
    );
    assert_eq!(max_abs(&t, &orig), 0.0);
}

#[test]
fn logs_are_returned_with_the_call() {
    let h = hook("bench", r#"{"mode": "log"}"#);
    let mut t = randn(&[4]);
    let c = CallContext {
        forward_index: 9,
        ..ctx("blocks.1.hook_mlp_out")
    };
    let r = h.call(&c, &mut t).unwrap();
    assert_eq!(r.logs.len(), 1);
    assert_eq!(r.logs[0].1, "hello from blocks.1.hook_mlp_out at forward 9");
}

#[test]
fn unsupported_dtype_is_a_typed_error() {
    let h = hook("scale", r#"{"factor": 2}"#);
    let mut t = Tensor::from_slice(&[1i64, 2, 3]);
    let e = h.call(&ctx("p"), &mut t).unwrap_err();
    assert!(matches!(e.kind, HookErrorKind::BadActivation { .. }), "{e}");
}

#[test]
fn deadline_mode_uses_epochs() {
    let rt = runtime_with(|c| c.cpu = CpuLimit::Deadline(std::time::Duration::from_millis(500)));
    let h = WasmHook::new(rt.load(&wasm("scale")).unwrap(), r#"{"factor": 2}"#).unwrap();
    let orig = randn(&[8]);
    let mut t = orig.copy();
    h.call(&ctx("p"), &mut t).unwrap();
    assert_eq!(max_abs(&t, &(&orig * 2.0)), 0.0);
}

#[test]
fn replace_mode_reads_the_original_and_swaps_in_the_result() {
    let h = hook("hostile", r#"{"mode": "replace-negate"}"#);
    assert_eq!(h.access().mode, flexmodel::hooks::EditMode::Replace);
    let orig = randn(&[3, 5, 4]);
    let mut t = orig.copy();
    let before = t.shallow_clone();
    let r = h.call(&ctx("p"), &mut t).unwrap();
    assert!(r.edited);
    assert_eq!(max_abs(&t, &(-&orig)), 0.0);
    assert_eq!(t.size(), orig.size());
    // The result is a new tensor; the original storage was never written.
    assert_eq!(max_abs(&before, &orig), 0.0);
}

#[test]
fn replace_mode_in_half_precision_and_chunked_writes() {
    let h = hook("bench", r#"{"mode": "replace-chunks", "chunk": 4096}"#);
    let mut t = randn(&[3, 1000]).to_kind(Kind::BFloat16);
    h.call(&ctx("p"), &mut t).unwrap();
    assert_eq!(t.kind(), Kind::BFloat16);
    // Every element is the bf16 with bytes 07 07.
    let want = f32::from_bits(0x0707_0000);
    let got: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap();
    assert!(got.iter().all(|&x| x == want));
}

#[test]
fn a_plugin_built_against_wit_0_1_1_runs_unchanged_with_its_generation_interface() {
    let rt = runtime();
    let p = rt.load(&wasm("v011")).unwrap();
    assert_eq!(p.wit_version, "0.1.1");
    let hook = flexmodel::hooks::WasmHook::new(p, "{}").unwrap();
    let mut t = tch::Tensor::from_slice(&[1.0f32, -2.0, 3.5]);
    use flexmodel::hooks::Hook;
    let mut c = ctx("blocks.0.hook_resid_post");
    c.generation = Some(flexmodel::hooks::GenStep {
        step: 3,
        position: 9,
    });
    let r = hook.call(&c, &mut t).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![2.0, -4.0, 7.0]);
    let step = &r.emitted[0];
    assert_eq!(step.key, "blocks.0.hook_resid_post:step");
    assert_eq!(Vec::<f32>::try_from(&step.tensor).unwrap(), vec![3.0]);
}

#[test]
fn a_plugin_built_against_wit_0_1_0_runs_unchanged() {
    let rt = runtime();
    let p = rt.load(&wasm("v010")).unwrap();
    assert_eq!(p.wit_version, "0.1.0");
    let hook = flexmodel::hooks::WasmHook::new(p, "{}").unwrap();
    let mut t = tch::Tensor::from_slice(&[1.0f32, -2.0, 3.5]);
    use flexmodel::hooks::Hook;
    let r = hook.call(&ctx("blocks.0.hook_resid_post"), &mut t).unwrap();
    assert!(r.edited);
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![2.0, -4.0, 7.0]);
}
