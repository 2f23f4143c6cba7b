//! Backward hooks against PyTorch tensor hooks on the same transformers
//! models: the gradient retrieved at every block output, then every
//! parameter's gradient when a backward hook scales the gradient at block 0's
//! output by 0.5 (`tests/reference/make_models.py`, f32, max-abs ≤ 1e-4).

use std::collections::BTreeMap;
use std::sync::Arc;

use flexmodel::api::{FlexModel, FnHook, Groups, Loss};
use flexmodel_tests::{max_abs, model_dir, runtime, wasm};
use tch::{Device, Kind, Tensor};

fn reference(name: &str, file: &str) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(model_dir(name).join(file))
        .unwrap_or_else(|e| panic!("{name}: {e} (scripts/make-models.sh)"))
        .into_iter()
        .collect()
}

const MODELS: [&str; 9] = [
    "gpt2-tiny",
    "gpt2-odd",
    "llama-gqa",
    "llama-bias-tied",
    "llama-mesh",
    "qwen2-tiny",
    "mistral-window",
    "neox-parallel",
    "neox-sequential",
];

#[test]
fn gradients_and_edited_parameter_gradients_match_pytorch() {
    let rt = runtime();
    let retrieve = rt.load(&wasm("retrieve")).unwrap();
    let scale = rt.load(&wasm("scale")).unwrap();
    for name in MODELS {
        let r = reference(name, "backward.safetensors");
        let ids = reference(name, "reference.safetensors")["input_ids"].shallow_clone();
        let loss = Loss::CrossEntropy {
            targets: r["targets"].shallow_clone(),
        };
        let mut fm = FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap();
        // Retrieval first, so it sees the gradient before the edit (as the
        // PyTorch tensor hook records it).
        fm.register_wasm_backward(&retrieve, "blocks.*.hook_resid_post", "{}", &[])
            .unwrap();
        let out = fm.backward(&ids, &Groups::All, &loss).unwrap();
        let dl = (out.loss - r["loss"].double_value(&[0])).abs();
        assert!(dl <= 1e-5, "{name}: loss differs by {dl}");
        let mut checked = 0;
        for (k, want) in r.iter().filter(|(k, _)| k.starts_with("grad:")) {
            let point = &k["grad:".len()..];
            let got = &out.grad_outputs[point];
            let d = max_abs(got, want);
            assert!(d <= 1e-4, "{name}: gradient at {point} differs by {d}");
            checked += 1;
        }
        assert!(checked >= 2, "{name}: every block output");
        // The edit: gradient at block 0's output × 0.5, by the WASM plugin.
        fm.register_wasm_backward(
            &scale,
            "blocks.0.hook_resid_post",
            r#"{"factor": 0.5}"#,
            &["edit"],
        )
        .unwrap();
        let edited = fm.backward(&ids, &Groups::All, &loss).unwrap();
        let params: Vec<(&String, &Tensor)> =
            r.iter().filter(|(k, _)| k.starts_with("param:")).collect();
        assert_eq!(
            params.len(),
            edited.param_grads.len(),
            "{name}: every parameter"
        );
        for (k, want) in params {
            let p = &k["param:".len()..];
            let got = edited
                .param_grads
                .get(p)
                .unwrap_or_else(|| panic!("{name}: no gradient for {p}"));
            let d = max_abs(got, want);
            assert!(d <= 1e-4, "{name}: gradient of {p} differs by {d}");
        }
        // The edit changed the gradients of the layers below it only.
        let unedited = fm.backward(&ids, &Groups::except(["edit"]), &loss).unwrap();
        let emb = edited
            .param_grads
            .keys()
            .find(|k| k.contains("embed") || k.contains("wte"))
            .unwrap();
        assert!(max_abs(&edited.param_grads[emb], &unedited.param_grads[emb]) > 0.0);
    }
}

#[test]
fn a_backward_hook_knows_it_is_one_and_the_model_is_unchanged() {
    let mut fm = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4]).view([1, 4]);
    let before = fm.forward(&ids, &Groups::All).unwrap().logits;
    fm.register_backward(
        Arc::new(FnHook::read_only("check", |ctx, g, out| {
            if !ctx.backward {
                return Err("not told it is a backward hook".into());
            }
            out.push(("norm".into(), g.norm()));
            Ok(())
        })),
        "blocks.1.hook_resid_post",
        &[],
    )
    .unwrap();
    let loss = Loss::LogitDiff {
        position: -1,
        plus: 5,
        minus: 7,
    };
    let out = fm.backward(&ids, &Groups::All, &loss).unwrap();
    assert!(out.grad_outputs["transformer.h.1:norm"].double_value(&[]) > 0.0);
    // A forward afterwards: no hook runs (backward hooks only in backward),
    // the same logits, and parameters do not require grad any more.
    let after = fm.forward(&ids, &Groups::All).unwrap().logits;
    assert!(before.equal(&after));
    assert!(
        fm.model()
            .parameters()
            .iter()
            .all(|(_, p)| !p.requires_grad())
    );
    let bad = Loss::CrossEntropy {
        targets: Tensor::from_slice(&[1i64, 2]).view([1, 2]),
    };
    assert!(fm.backward(&ids, &Groups::All, &bad).is_err());
}
