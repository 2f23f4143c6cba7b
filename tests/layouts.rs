//! One engine, no asymmetries: every capability of the single rank —
//! `forward_until`, forward hooks during a backward pass, generation,
//! backward, registration, groups and removal — on TP2, PP2 and TP2×PP2,
//! equal to the single-rank run (itself checked against transformers and
//! PyTorch hooks in the other suites).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flexmodel::api::{FlexModel, GenerateOptions, Groups, Loss, Options, Sampling};
use flexmodel::hooks::Plugin;
use flexmodel_tests::{max_abs, model_dir, runtime, wasm};
use tch::{Device, Kind, Tensor};

const LAYOUTS: [(usize, usize, usize); 3] = [(1, 1, 2), (2, 1, 1), (2, 1, 2)];
const MODELS: [&str; 2] = ["gpt2-tiny", "llama-mesh"];

fn ids() -> Tensor {
    Tensor::from_slice(&[3i64, 17, 42, 5, 88, 9, 60, 1, 77, 23, 11, 50]).view([2, 6])
}

fn one_rank(model: &str) -> FlexModel {
    FlexModel::load(&model_dir(model), Kind::Float, Device::Cpu).unwrap()
}

fn mesh(model: &str, (pp, dp, tp): (usize, usize, usize)) -> FlexModel {
    let mut o = Options::new(pp, dp, tp).unwrap();
    o.timeout = Duration::from_secs(30);
    FlexModel::load_with(&model_dir(model), &o).unwrap()
}

fn plugins() -> (Arc<Plugin>, Arc<Plugin>) {
    let rt = runtime();
    (
        rt.load(&wasm("retrieve")).unwrap(),
        rt.load(&wasm("scale")).unwrap(),
    )
}

fn same_tensors(what: &str, got: &BTreeMap<String, Tensor>, want: &BTreeMap<String, Tensor>) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: the same keys"
    );
    for (k, w) in want {
        assert_eq!(got[k].size(), w.size(), "{what}: shape of {k}");
        let d = max_abs(&got[k], w);
        assert!(d <= 1e-5, "{what}: {k} differs by {d}");
    }
}

/// Retrieval everywhere, an edit (×2, group "edit") in block 0's MLP, and a
/// retrieval in the last block, which a stop in block 0 must not reach.
fn hooks(fm: &mut FlexModel, retrieve: &Arc<Plugin>, scale: &Arc<Plugin>) {
    fm.register_wasm(retrieve, "blocks.*.hook_resid_post", "{}", &[])
        .unwrap();
    fm.register_wasm(retrieve, "blocks.0.attn.hook_q", "{}", &[])
        .unwrap();
    fm.register_wasm(retrieve, "blocks.1.mlp.hook_post", "{}", &[])
        .unwrap();
    fm.register_wasm(
        scale,
        "blocks.0.mlp.hook_post",
        r#"{"factor": 2}"#,
        &["edit"],
    )
    .unwrap();
}

#[test]
fn forward_until_stops_at_the_same_point_with_the_same_outputs_on_every_layout() {
    let (retrieve, scale) = plugins();
    for model in MODELS {
        let mut one = one_rank(model);
        hooks(&mut one, &retrieve, &scale);
        // A replicated point (residual stream) and a TP-split one (MLP hidden).
        for stop in ["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post"] {
            let want = one.forward_until(&ids(), &Groups::All, stop).unwrap();
            assert!(
                want.outputs.keys().all(|k| !k.contains(".1.")),
                "{model}: nothing after the stop ran"
            );
            for layout in LAYOUTS {
                let what = format!("{model} {layout:?} stop at {stop}");
                let mut fm = mesh(model, layout);
                hooks(&mut fm, &retrieve, &scale);
                let got = fm
                    .forward_until(&ids(), &Groups::All, stop)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(got.stopped_after, want.stopped_after, "{what}");
                same_tensors(&what, &got.outputs, &want.outputs);
                assert_eq!(got.producers, want.producers, "{what}: producers");
                // The model stays usable: a whole forward after a stopped one.
                let full = fm.forward(&ids(), &Groups::All).unwrap();
                let d = max_abs(
                    &full.logits,
                    &one.forward(&ids(), &Groups::All).unwrap().logits,
                );
                assert!(d <= 1e-5, "{what}: the next forward's logits differ by {d}");
            }
        }
    }
}

fn cross_entropy(model: &str) -> Loss {
    let _ = model;
    Loss::CrossEntropy {
        targets: Tensor::from_slice(&[17i64, 42, 5, 88, 9, 60, 1, 77, 23, 11, 50, 2]).view([2, 6]),
    }
}

#[test]
fn forward_hooks_run_during_a_backward_pass_on_every_layout_as_on_one_rank() {
    let (retrieve, scale) = plugins();
    for model in MODELS {
        let mut one = one_rank(model);
        hooks(&mut one, &retrieve, &scale);
        one.register_wasm_backward(&retrieve, "blocks.*.hook_resid_post", "{}", &[])
            .unwrap();
        let want = one
            .backward(&ids(), &Groups::All, &cross_entropy(model))
            .unwrap();
        // The forward edit reaches the loss: without it the loss differs.
        let plain = one
            .backward(&ids(), &Groups::except(["edit"]), &cross_entropy(model))
            .unwrap();
        assert!(
            (plain.loss - want.loss).abs() > 1e-6,
            "{model}: the edit matters"
        );
        assert!(!want.outputs.is_empty() && !want.grad_outputs.is_empty());
        for layout in LAYOUTS {
            let what = format!("{model} {layout:?} backward");
            let mut fm = mesh(model, layout);
            hooks(&mut fm, &retrieve, &scale);
            fm.register_wasm_backward(&retrieve, "blocks.*.hook_resid_post", "{}", &[])
                .unwrap();
            let got = fm
                .backward(&ids(), &Groups::All, &cross_entropy(model))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                (got.loss - want.loss).abs() <= 1e-5,
                "{what}: loss {} vs {}",
                got.loss,
                want.loss
            );
            let d = max_abs(&got.logits, &want.logits);
            assert!(d <= 1e-5, "{what}: logits differ by {d}");
            same_tensors(
                &format!("{what} forward outputs"),
                &got.outputs,
                &want.outputs,
            );
            same_tensors(
                &format!("{what} gradients"),
                &got.grad_outputs,
                &want.grad_outputs,
            );
            assert_eq!(got.producers, want.producers, "{what}");
            assert_eq!(got.grad_producers, want.grad_producers, "{what}");
            // Parameters held whole on global rank 0 have its whole gradient.
            let mut compared = 0;
            for (name, g) in &got.param_grads {
                let w = &want.param_grads[name];
                if g.size() == w.size() {
                    let d = max_abs(g, w);
                    assert!(d <= 1e-4, "{what}: gradient of {name} differs by {d}");
                    compared += 1;
                }
            }
            assert!(compared > 0, "{what}: some parameter gradient compared");
        }
    }
}

#[test]
fn generation_registration_groups_and_removal_behave_alike_on_every_layout() {
    let (retrieve, scale) = plugins();
    let prompt = Tensor::from_slice(&[3i64, 17, 42, 5]);
    let greedy = GenerateOptions {
        max_new_tokens: 4,
        sampling: Sampling::Greedy,
        eos: Vec::new(),
        ..GenerateOptions::default()
    };
    for model in MODELS {
        let mut one = one_rank(model);
        hooks(&mut one, &retrieve, &scale);
        let gen_want = one
            .generate(&prompt, &Groups::All, &greedy, |_, _| {})
            .unwrap();
        let plain_want = one.forward(&ids(), &Groups::except(["edit"])).unwrap();
        let listing = |fm: &FlexModel| {
            fm.hooks()
                .into_iter()
                .map(|(_, name, pattern, points, groups)| (name, pattern, points, groups))
                .collect::<Vec<_>>()
        };
        for layout in LAYOUTS {
            let what = format!("{model} {layout:?}");
            let mut fm = mesh(model, layout);
            hooks(&mut fm, &retrieve, &scale);
            assert_eq!(
                listing(&fm),
                listing(&one),
                "{what}: the same registrations"
            );
            let got = fm
                .generate(&prompt, &Groups::All, &greedy, |_, _| {})
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                got.tokens.equal(&gen_want.tokens),
                "{what}: generated tokens"
            );
            same_tensors(
                &format!("{what} generation"),
                &got.outputs,
                &gen_want.outputs,
            );
            let plain = fm.forward(&ids(), &Groups::except(["edit"])).unwrap();
            let d = max_abs(&plain.logits, &plain_want.logits);
            assert!(d <= 1e-5, "{what}: a group left out: logits differ by {d}");
            same_tensors(
                &format!("{what} groups"),
                &plain.outputs,
                &plain_want.outputs,
            );
            // Removing the edit is the same as leaving its group out.
            let edit = fm
                .hooks()
                .into_iter()
                .find(|h| h.4.contains(&"edit".to_string()))
                .unwrap()
                .0;
            assert!(fm.remove(edit));
            assert!(!fm.remove(edit), "{what}: removed once");
            let removed = fm.forward(&ids(), &Groups::All).unwrap();
            let d = max_abs(&removed.logits, &plain_want.logits);
            assert!(d <= 1e-5, "{what}: after removal logits differ by {d}");
        }
    }
}

#[test]
fn a_single_rank_is_the_mesh_of_one_and_reports_no_gathering() {
    let (retrieve, scale) = plugins();
    let mut one = one_rank("gpt2-tiny");
    assert_eq!(one.options().mesh.world(), 1);
    assert!(one.is_root() && one.model().is_some());
    hooks(&mut one, &retrieve, &scale);
    let out = one.forward(&ids(), &Groups::All).unwrap();
    assert!(out.gathered_bytes.is_empty(), "{:?}", out.gathered_bytes);
    // The same through `load_with` and a 1×1×1 mesh.
    let mut same =
        FlexModel::load_with(&model_dir("gpt2-tiny"), &Options::new(1, 1, 1).unwrap()).unwrap();
    hooks(&mut same, &retrieve, &scale);
    let again = same.forward(&ids(), &Groups::All).unwrap();
    assert!(out.logits.equal(&again.logits));
    same_tensors("1x1x1", &again.outputs, &out.outputs);
}

#[test]
fn hook_points_inside_attention_fire_on_contiguous_tensors() {
    use flexmodel::api::FnHook;
    for model in MODELS {
        for layout in [(1, 1, 1), (1, 1, 2)] {
            let mut fm = mesh(model, layout);
            let strided = Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen = strided.clone();
            let hook = Arc::new(FnHook::read_only("contiguity", move |ctx, t, _| {
                if !t.is_contiguous() {
                    seen.lock().unwrap().push(ctx.hook_point.clone());
                }
                Ok(())
            }));
            fm.register(hook, "blocks.*.attn.*", &[]).unwrap();
            fm.forward(&ids(), &Groups::All).unwrap();
            let strided = strided.lock().unwrap();
            assert!(
                strided.is_empty(),
                "{model} {layout:?}: strided views at {strided:?}"
            );
        }
    }
}
