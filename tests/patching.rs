//! Activation patching across runs with the `patch` plugin: a clean run is
//! recorded, then a corrupted run is patched position by position (the
//! patching table), checked against the same patch done by a native hook
//! and against what patching must do (all positions: the clean logits;
//! position p: earlier positions untouched).

use std::sync::Arc;

use flexmodel::api::{FlexModel, FnHook, Groups};
use flexmodel_tests::{max_abs, model_dir, runtime, wasm};
use tch::{Device, Kind, Tensor};

fn clean() -> Tensor {
    Tensor::from_slice(&[3i64, 17, 42, 5, 88, 9]).view([1, 6])
}

/// The clean prompt with position 2 changed.
fn corrupted() -> Tensor {
    Tensor::from_slice(&[3i64, 17, 61, 5, 88, 9]).view([1, 6])
}

fn model(name: &str) -> FlexModel {
    FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap()
}

#[test]
fn sweep_gives_the_patching_table_a_native_patch_gives() {
    // The residual stream entering block 0: only the corrupted position
    // differs there, so only patching it restores anything.
    let point = "blocks.0.hook_resid_pre";
    for name in ["gpt2-tiny", "llama-gqa", "neox-parallel"] {
        // Clean activation at the point, and the clean / corrupted logits.
        let mut fm = model(name);
        let rt = runtime();
        fm.register_wasm(&rt.load(&wasm("retrieve")).unwrap(), point, "{}", &["read"])
            .unwrap();
        let out = fm.forward(&clean(), &Groups::All).unwrap();
        let clean_act = out.outputs.values().next().unwrap().shallow_clone();
        let clean_logits = out.logits;
        let bad_logits = fm
            .forward(&corrupted(), &Groups::except(["read"]))
            .unwrap()
            .logits;
        // The plugin: record, then one corrupted run per position.
        let mut pm = model(name);
        pm.register_wasm(&rt.load(&wasm("patch")).unwrap(), point, "{}", &[])
            .unwrap();
        pm.forward(&clean(), &Groups::All).unwrap();
        let mut table = Vec::new();
        for p in 0..6 {
            let o = pm.forward(&corrupted(), &Groups::All).unwrap();
            let key = o
                .outputs
                .keys()
                .find(|k| k.ends_with("patched_position"))
                .unwrap()
                .clone();
            assert_eq!(o.outputs[&key].double_value(&[0]), p as f64);
            // The same patch by a native hook.
            let mut nm = model(name);
            let src = std::sync::Mutex::new(clean_act.shallow_clone());
            nm.register(
                Arc::new(FnHook::editing("native-patch", move |_, t, _| {
                    let src = src.lock().map_err(|e| e.to_string())?;
                    t.narrow(1, p, 1).copy_(&src.narrow(1, p, 1));
                    Ok(())
                })),
                point,
                &[],
            )
            .unwrap();
            let want = nm.forward(&corrupted(), &Groups::All).unwrap().logits;
            assert_eq!(max_abs(&o.logits, &want), 0.0, "{name} position {p}");
            // Patching position p leaves the logits before p as corrupted.
            if p > 0 {
                let before = |t: &Tensor| t.narrow(1, 0, p);
                assert_eq!(
                    max_abs(&before(&o.logits), &before(&bad_logits)),
                    0.0,
                    "{name} p {p}"
                );
            }
            // The table: how much of the clean last-position logits it restores.
            let last = |t: &Tensor| t.select(1, -1);
            let restored = 1.0
                - max_abs(&last(&o.logits), &last(&clean_logits))
                    / max_abs(&last(&bad_logits), &last(&clean_logits));
            table.push(restored);
        }
        // Only the corrupted position carries the difference.
        assert!(table[2] > 0.999, "{name}: {table:?}");
        for (p, r) in table.iter().enumerate() {
            if p != 2 {
                assert!(
                    r.abs() < 1e-6,
                    "{name}: position {p} restores nothing: {table:?}"
                );
            }
        }
        let err = pm.forward(&corrupted(), &Groups::All).unwrap_err();
        assert!(err.to_string().contains("sweep is done"), "{err}");
    }
}

#[test]
fn patching_every_position_restores_the_clean_logits() {
    let mut fm = model("gpt2-tiny");
    let rt = runtime();
    fm.register_wasm(
        &rt.load(&wasm("patch")).unwrap(),
        "blocks.1.hook_resid_pre",
        r#"{"positions": [0, 1, 2, 3, 4, -1]}"#,
        &[],
    )
    .unwrap();
    let clean_logits = fm.forward(&clean(), &Groups::All).unwrap().logits;
    let patched = fm.forward(&corrupted(), &Groups::All).unwrap().logits;
    assert_eq!(max_abs(&patched, &clean_logits), 0.0);
    let wrong = fm
        .forward(&corrupted().narrow(1, 0, 5), &Groups::All)
        .unwrap_err();
    assert!(wrong.to_string().contains("equal shape"), "{wrong}");
    assert!(
        fm.register_wasm(
            &rt.load(&wasm("patch")).unwrap(),
            "hook_embed",
            r#"{"positions": "all"}"#,
            &[]
        )
        .is_err()
    );
}
