//! The FlexModel API on real (tiny, random) Hugging Face checkpoints:
//! registration by name, alias and glob; handles; groups; retrieval into the
//! output dictionary; state across forwards; native hooks; errors; unwrap.

use std::path::PathBuf;
use std::sync::Arc;

use flexmodel::api::{FlexError, FlexModel, FnHook, Groups};
use flexmodel::hooks::{HookErrorKind, PluginError};
use flexmodel::models::{Model, NoHooks, PatternError, Weights};
use flexmodel_tests::{max_abs, runtime, wasm};
use tch::{Device, Kind, Tensor};

fn model_dir(name: &str) -> PathBuf {
    std::env::var_os("FLEXMODEL_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../artifacts/models"))
        .join(name)
}

fn load(name: &str) -> (FlexModel, Weights) {
    let m = Model::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap();
    let r = Weights::open_file(&model_dir(name).join("reference.safetensors")).unwrap();
    (FlexModel::new(m), r)
}

fn ids(r: &Weights) -> Tensor {
    r.get("input_ids", Kind::Int64, Device::Cpu, "test")
        .unwrap()
}

fn reference(r: &Weights, name: &str) -> Tensor {
    r.get(name, Kind::Float, Device::Cpu, "test").unwrap()
}

#[test]
fn retrieve_every_block_output_by_glob_over_aliases() {
    let (mut fm, r) = load("llama-gqa");
    let rt = runtime();
    let p = rt.load(&wasm("retrieve")).unwrap();
    fm.register_wasm(&p, "blocks.*.hook_resid_post", "{}", &[])
        .unwrap();
    let out = fm.forward(&ids(&r), &Groups::All).unwrap();
    let keys: Vec<&String> = out.outputs.keys().collect();
    assert_eq!(keys, vec!["model.layers.0", "model.layers.1"]);
    for (k, v) in &out.outputs {
        assert_eq!(v.device(), Device::Cpu);
        assert!(max_abs(v, &reference(&r, k)) <= 1e-4, "{k}");
    }
    assert!(max_abs(&out.logits, &reference(&r, "logits")) <= 1e-4);
}

#[test]
fn canonical_names_aliases_and_bad_patterns() {
    let (mut fm, _) = load("gpt2-tiny");
    let rt = runtime();
    let p = rt.load(&wasm("retrieve")).unwrap();
    let h = fm
        .register_wasm(&p, "blocks.1.attn.hook_pattern", "{}", &[])
        .unwrap();
    let bound = &fm.hooks()[0];
    assert_eq!(bound.0, h);
    assert_eq!(
        bound.3,
        vec!["transformer.h.1.attn.hook_pattern".to_string()]
    );
    fm.register_wasm(&p, "transformer.h.0.mlp", "{}", &[])
        .unwrap();
    assert_eq!(fm.hooks()[1].3, vec!["transformer.h.0.mlp".to_string()]);
    assert!(matches!(
        fm.register_wasm(&p, "blocks.9.hook_resid_post", "{}", &[]),
        Err(FlexError::Pattern(PatternError::NoMatch { .. }))
    ));
    assert!(matches!(
        fm.register_wasm(&p, "blocks.[", "{}", &[]),
        Err(FlexError::Pattern(PatternError::Invalid { .. }))
    ));
    assert_eq!(
        fm.hooks().len(),
        2,
        "failed registrations leave nothing behind"
    );
}

#[test]
fn handles_remove_hooks() {
    let (mut fm, r) = load("gpt2-tiny");
    let rt = runtime();
    let p = rt.load(&wasm("retrieve")).unwrap();
    let h = fm
        .register_wasm(&p, "blocks.0.hook_resid_pre", "{}", &[])
        .unwrap();
    assert_eq!(fm.forward(&ids(&r), &Groups::All).unwrap().outputs.len(), 1);
    assert!(fm.remove(h));
    assert!(!fm.remove(h));
    assert!(
        fm.forward(&ids(&r), &Groups::All)
            .unwrap()
            .outputs
            .is_empty()
    );
}

#[test]
fn groups_enable_and_disable_hooks_per_forward() {
    let (mut fm, r) = load("gpt2-tiny");
    let rt = runtime();
    let p = rt.load(&wasm("retrieve")).unwrap();
    fm.register_wasm(
        &p,
        "blocks.0.hook_resid_post",
        r#"{"name": "a"}"#,
        &["probe"],
    )
    .unwrap();
    fm.register_wasm(
        &p,
        "blocks.1.hook_resid_post",
        r#"{"name": "b"}"#,
        &["patch"],
    )
    .unwrap();
    fm.register_wasm(&p, "hook_embed", r#"{"name": "c"}"#, &[])
        .unwrap();
    let keys = |fm: &mut FlexModel, g: Groups| -> Vec<String> {
        fm.forward(&ids(&r), &g)
            .unwrap()
            .outputs
            .into_keys()
            .collect()
    };
    assert_eq!(keys(&mut fm, Groups::All).len(), 3);
    assert_eq!(
        keys(&mut fm, Groups::only(["probe"])),
        vec!["transformer.h.0:a"]
    );
    assert_eq!(keys(&mut fm, Groups::only(["probe", "patch"])).len(), 2);
    assert_eq!(
        keys(&mut fm, Groups::except(["probe"])),
        vec!["transformer.h.1:b", "transformer.wte:c"]
    );
    assert_eq!(keys(&mut fm, Groups::only(["all"])).len(), 3);
    assert!(keys(&mut fm, Groups::only(["nothing"])).is_empty());
}

#[test]
fn plugin_state_persists_across_forward_passes() {
    let (mut fm, r) = load("gpt2-tiny");
    let rt = runtime();
    let p = rt.load(&wasm("hostile")).unwrap();
    fm.register_wasm(&p, "hook_embed", r#"{"mode": "counter"}"#, &[])
        .unwrap();
    for want in 1..=3 {
        let out = fm.forward(&ids(&r), &Groups::All).unwrap();
        assert_eq!(
            out.outputs["transformer.wte:calls"].double_value(&[0]),
            want as f64
        );
        assert_eq!(out.forward_index, want - 1);
    }
}

#[test]
fn native_and_wasm_edits_agree_with_pytorch() {
    let (mut fm, r) = load("gpt2-odd");
    let point = r.metadata("edit_point").unwrap();
    let want = reference(&r, "edit_logits");
    let h = fm
        .register(
            Arc::new(FnHook::editing("double", |_, t, _| {
                let _ = t.g_mul_scalar_(2.0);
                Ok(())
            })),
            &point,
            &[],
        )
        .unwrap();
    let native = fm.forward(&ids(&r), &Groups::All).unwrap().logits;
    assert!(max_abs(&native, &want) <= 1e-4);
    fm.remove(h);
    let rt = runtime();
    fm.register_wasm(
        &rt.load(&wasm("scale")).unwrap(),
        &point,
        r#"{"factor": 2}"#,
        &[],
    )
    .unwrap();
    let wasm_logits = fm.forward(&ids(&r), &Groups::All).unwrap().logits;
    assert_eq!(max_abs(&native, &wasm_logits), 0.0, "same edit, same bits");
}

#[test]
fn a_failing_hook_fails_the_forward_with_a_named_error_and_keeps_earlier_outputs() {
    let (mut fm, r) = load("gpt2-tiny");
    let rt = runtime();
    fm.register_wasm(
        &rt.load(&wasm("retrieve")).unwrap(),
        "hook_embed",
        "{}",
        &[],
    )
    .unwrap();
    fm.register_wasm(
        &rt.load(&wasm("hostile")).unwrap(),
        "blocks.1.hook_resid_post",
        r#"{"mode": "error"}"#,
        &["risky"],
    )
    .unwrap();
    match fm.forward(&ids(&r), &Groups::All) {
        Err(FlexError::Hook { error, partial }) => {
            assert_eq!(error.plugin, "hostile");
            assert_eq!(error.hook_point, "transformer.h.1");
            assert_eq!(error.rank, 0);
            assert!(matches!(
                error.kind,
                HookErrorKind::Plugin(PluginError::Failed(_))
            ));
            assert!(
                partial
                    .into_inner()
                    .unwrap()
                    .contains_key("transformer.wte"),
                "outputs before the failure are kept"
            );
        }
        other => panic!("expected a hook error, got {other:?}"),
    }
    // The wrapper keeps working: without the failing hook's group the forward succeeds.
    let out = fm.forward(&ids(&r), &Groups::except(["risky"])).unwrap();
    assert!(out.outputs.contains_key("transformer.wte"));
}

#[test]
fn unwrap_returns_the_original_model_bit_identical() {
    let m = Model::load(&model_dir("neox-parallel"), Kind::Float, Device::Cpu).unwrap();
    let r = Weights::open_file(&model_dir("neox-parallel").join("reference.safetensors")).unwrap();
    let before = m.forward(&ids(&r), &mut NoHooks).unwrap();
    let mut fm = FlexModel::new(m);
    let rt = runtime();
    fm.register_wasm(
        &rt.load(&wasm("scale")).unwrap(),
        "blocks.*.hook_resid_post",
        r#"{"factor": 3}"#,
        &[],
    )
    .unwrap();
    let edited = fm.forward(&ids(&r), &Groups::All).unwrap().logits;
    assert!(max_abs(&edited, &before) > 1e-3);
    let m = fm.into_model().expect("one rank");
    let after = m.forward(&ids(&r), &mut NoHooks).unwrap();
    assert!(
        before.equal(&after),
        "outputs after unwrap are bit-identical"
    );
}

#[test]
fn inputs_are_checked() {
    let (mut fm, _) = load("gpt2-tiny");
    let bad = Tensor::from_slice(&[1.0f32, 2.0]);
    assert!(fm.forward(&bad, &Groups::All).is_err());
    let too_long = Tensor::zeros([1, 1000], (Kind::Int64, Device::Cpu));
    assert!(fm.forward(&too_long, &Groups::All).is_err());
    let one_dim = Tensor::from_slice(&[1i64, 2, 3]);
    assert_eq!(
        fm.forward(&one_dim, &Groups::All).unwrap().logits.size(),
        vec![1, 3, 101]
    );
}

#[test]
fn forward_on_text_uses_the_checkpoint_tokenizer() {
    let mut fm = FlexModel::load(&model_dir("demo-gpt2"), Kind::Float, Device::Cpu).unwrap();
    let text = "The residual stream carries information";
    let ids = fm.tokenizer().unwrap().encode(text).unwrap();
    let a = fm.forward_text(text, &Groups::All).unwrap().logits;
    let b = fm
        .forward(&Tensor::from_slice(&ids), &Groups::All)
        .unwrap()
        .logits;
    assert_eq!(a.size(), vec![1, ids.len() as i64, 400]);
    assert!(a.equal(&b));
    let (mut no_tok, _) = load("gpt2-tiny");
    assert!(matches!(
        no_tok.forward_text("x", &Groups::All),
        Err(FlexError::Input(_))
    ));
}

#[test]
fn forward_until_stops_after_the_point_and_keeps_what_came_before() {
    let (mut fm, r) = load("gpt2-odd");
    let rt = runtime();
    let p = rt.load(&wasm("retrieve")).unwrap();
    fm.register_wasm(&p, "blocks.*.hook_resid_post", "{}", &[])
        .unwrap();
    fm.register_wasm(&p, "ln_final.hook_normalized", "{}", &[])
        .unwrap();
    let out = fm
        .forward_until(&ids(&r), &Groups::All, "blocks.1.hook_resid_post")
        .unwrap();
    assert_eq!(out.stopped_after, "transformer.h.1");
    let keys: Vec<&String> = out.outputs.keys().collect();
    assert_eq!(
        keys,
        vec!["transformer.h.0", "transformer.h.1"],
        "nothing after the stop point ran"
    );
    for (k, v) in &out.outputs {
        assert!(max_abs(v, &reference(&r, k)) <= 1e-4, "{k}");
    }
    // A pattern stops after its last match in forward order.
    let out = fm
        .forward_until(&ids(&r), &Groups::All, "blocks.*.hook_resid_post")
        .unwrap();
    assert_eq!(out.stopped_after, "transformer.h.2");
    assert_eq!(out.outputs.len(), 3);
    assert!(
        fm.forward_until(&ids(&r), &Groups::All, "blocks.7.hook_resid_post")
            .is_err()
    );
    // The full forward still works afterwards.
    assert_eq!(fm.forward(&ids(&r), &Groups::All).unwrap().outputs.len(), 4);
}

/// An interrupt (the Python package's Ctrl-C) ends a pass on one rank at the
/// hook point where it first says so, before that point's hooks run, and
/// the next pass is whole and the same as before; on a mesh of threads an
/// interrupt that is not asked for changes nothing (a mesh's pass long
/// enough to interrupt is tested from Python, python/tests/test_passes.py).
#[test]
fn an_interrupt_ends_a_pass_and_the_model_stays_usable() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    for (tp, pp) in [(1, 1), (1, 2)] {
        let mut opts = flexmodel::api::Options::new(pp, 1, tp).unwrap();
        opts.kind = Kind::Float;
        let mut fm = FlexModel::load_with(&model_dir("llama-gqa"), &opts).unwrap();
        let r = Weights::open_file(&model_dir("llama-gqa").join("reference.safetensors")).unwrap();
        let ids = ids(&r);
        let clean = fm.forward(&ids, &Groups::All).unwrap().logits;
        let calls = Arc::new(AtomicUsize::new(0));
        let hook = {
            let calls = calls.clone();
            FnHook::read_only("count", move |_, _, _| {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        };
        fm.register(Arc::new(hook), "blocks.*.hook_resid_post", &["count"])
            .unwrap();
        let stop = Arc::new(AtomicBool::new(true));
        let s = stop.clone();
        fm.set_interrupt(Some(Arc::new(move || s.load(Ordering::SeqCst))));
        if pp == 1 {
            assert!(matches!(
                fm.forward(&ids, &Groups::All),
                Err(FlexError::Interrupted)
            ));
            assert_eq!(calls.load(Ordering::SeqCst), 0, "no hook ran");
        }
        stop.store(false, Ordering::SeqCst);
        let again = fm.forward(&ids, &Groups::All).unwrap().logits;
        assert!(again.equal(&clean), "tp {tp} pp {pp}");
    }
}
