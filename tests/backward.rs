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
            assert!(
                out.grad_producers[point].starts_with("retrieve@"),
                "{name}: {point}"
            );
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
            .expect("one rank")
            .parameters()
            .iter()
            .all(|(_, p)| !p.requires_grad())
    );
    let bad = Loss::CrossEntropy {
        targets: Tensor::from_slice(&[1i64, 2]).view([1, 2]),
    };
    assert!(fm.backward(&ids, &Groups::All, &bad).is_err());
}

/// Every layout's backward pass against the single-rank one (itself checked
/// against PyTorch above): the loss, the gradients backward hooks retrieve
/// (a DP replica sees the gradient of its own rows' mean loss, not rescaled)
/// and each rank's slice of every parameter gradient, after a ×0.5 gradient
/// edit at block 0's output.
#[test]
fn every_parallel_layout_gives_the_single_rank_gradients() {
    use flexmodel::api::{FlexModel, Options};
    use flexmodel::distributed::layout::local_part;
    use flexmodel::models::TpSplit;
    let rt = runtime();
    let retrieve = rt.load(&wasm("retrieve")).unwrap();
    let scale = rt.load(&wasm("scale")).unwrap();
    for name in ["gpt2-tiny", "llama-mesh", "neox-parallel"] {
        let r = reference(name, "backward.safetensors");
        let ids = reference(name, "reference.safetensors")["input_ids"].shallow_clone();
        let b = ids.size()[0];
        let loss = || Loss::CrossEntropy {
            targets: r["targets"].shallow_clone(),
        };
        let mut fm = FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap();
        fm.register_wasm_backward(&retrieve, "blocks.*.hook_resid_post", "{}", &[])
            .unwrap();
        fm.register_wasm_backward(&retrieve, "blocks.1.mlp.hook_post", "{}", &[])
            .unwrap();
        fm.register_wasm_backward(
            &scale,
            "blocks.0.hook_resid_post",
            r#"{"factor": 0.5}"#,
            &[],
        )
        .unwrap();
        let one = fm.backward(&ids, &Groups::All, &loss()).unwrap();
        for (pp, dp, tp) in [
            (1, 1, 2),
            (2, 1, 2),
            (2, 1, 1),
            (1, 2, 1),
            (1, 2, 2),
            (1, 1, 4),
        ] {
            let what = format!("{name} pp{pp} dp{dp} tp{tp}");
            let mut o = Options::new(pp, dp, tp).unwrap();
            o.check_edits = true;
            let mut dm = FlexModel::load_with(&model_dir(name), &o).unwrap();
            dm.register_wasm_backward(&retrieve, "blocks.*.hook_resid_post", "{}", &[])
                .unwrap();
            dm.register_wasm_backward(&retrieve, "blocks.1.mlp.hook_post", "{}", &[])
                .unwrap();
            dm.register_wasm_backward(
                &scale,
                "blocks.0.hook_resid_post",
                r#"{"factor": 0.5}"#,
                &[],
            )
            .unwrap();
            let each = dm.backward_each(&ids, &Groups::All, &loss()).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            for (g, res) in each.into_iter().enumerate() {
                let res = res.unwrap_or_else(|e| panic!("{what} rank {g}: {e}"));
                assert!(
                    (res.loss - one.loss).abs() <= 1e-5,
                    "{what}: loss {} vs {}",
                    res.loss,
                    one.loss
                );
                let (tp_rank, dp_rank) = (g % tp, (g / tp) % dp);
                let (start, rows) =
                    flexmodel::models::shard::balanced(b, dp as i64, dp_rank as i64);
                for (k, got) in &res.grad_outputs {
                    let full = &one.grad_outputs[k];
                    let want = full.narrow(0, start, rows) * (b as f64 / rows as f64);
                    let d = max_abs(got, &want);
                    assert!(d <= 1e-4, "{what} rank {g}: gradient {k} differs by {d}");
                    seen.insert(k.clone());
                }
                for (p, got) in &res.param_grads {
                    let full = &one.param_grads[p];
                    let want = if got.size() == full.size() {
                        full.shallow_clone()
                    } else {
                        let dim = (0..full.dim())
                            .find(|&i| got.size()[i] != full.size()[i])
                            .unwrap();
                        let groups = if p.contains("c_attn") { 3 } else { 1 };
                        let split = TpSplit {
                            dim: dim as i64,
                            groups,
                        };
                        local_part(full, split, tp_rank, tp)
                    };
                    let d = max_abs(got, &want);
                    assert!(d <= 1e-4, "{what} rank {g}: gradient of {p} differs by {d}");
                }
            }
            assert_eq!(
                seen.len(),
                one.grad_outputs.len(),
                "{what}: every retrieved gradient on some rank"
            );
        }
    }
}

#[test]
fn a_failing_backward_hook_fails_every_rank_quickly() {
    use flexmodel::api::{FlexModel, Options};
    let mut o = Options::new(2, 1, 2).unwrap();
    o.timeout = std::time::Duration::from_secs(60);
    let mut dm = FlexModel::load_with(&model_dir("gpt2-tiny"), &o).unwrap();
    let rt = runtime();
    dm.register_wasm_backward(
        &rt.load(&wasm("hostile")).unwrap(),
        "blocks.0.hook_resid_post",
        r#"{"mode": "error", "only_rank": 1}"#,
        &[],
    )
    .unwrap();
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4]).view([1, 4]);
    let loss = Loss::LogitDiff {
        position: -1,
        plus: 1,
        minus: 2,
    };
    let t0 = std::time::Instant::now();
    let each = dm.backward_each(&ids, &Groups::All, &loss).unwrap();
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "not the 60 s timeout"
    );
    for (rank, r) in each.iter().enumerate() {
        let e = r
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("rank {rank} succeeded"));
        assert!(e.to_string().contains("hostile"), "rank {rank}: {e}");
    }
}
