//! Padded batches (issue 11): prompts of different lengths padded left and
//! right give, at every real position, every hook point's activation and the
//! logits of the same prompt run alone, and those transformers computes on
//! the same padded batch with its `attention_mask` (and position ids from
//! it; `tests/reference/make_models.py`), on every tiny model; the same on
//! every layout; greedy generation of a padded batch equals each prompt
//! generated alone (by transformers); a padded backward equals the rows'.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use flexmodel::api::{Batch, FlexModel, GenerateOptions, Groups, Loss, Options, Padding};
use flexmodel::models::{Model, SingleRank, Weights};
use flexmodel_tests::{Capture, max_abs, model_dir};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn models() -> Vec<String> {
    let dir = model_dir("gpt2-tiny").parent().unwrap().to_path_buf();
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("padded.safetensors").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    assert!(
        v.len() >= 8,
        "padded references in {}: {v:?}",
        dir.display()
    );
    v
}

struct Reference(Weights);

impl Reference {
    fn open(model: &str) -> Reference {
        let p: PathBuf = model_dir(model).join("padded.safetensors");
        Reference(Weights::open_file(&p).unwrap())
    }
    fn get(&self, name: &str, kind: Kind) -> Option<Tensor> {
        self.0
            .names()
            .any(|n| n == name)
            .then(|| self.0.get(name, kind, Device::Cpu, "reference").unwrap())
    }
    fn batch(&self, side: &str) -> Batch {
        let ids = self.get(&format!("{side}/input_ids"), Kind::Int64).unwrap();
        let mask = self
            .get(&format!("{side}/attention_mask"), Kind::Int64)
            .unwrap();
        Batch::new(&ids, Some(&mask)).unwrap()
    }
}

fn run(model: &Model, ids: &Tensor, mask: Option<&Tensor>) -> (Tensor, BTreeMap<String, Tensor>) {
    let mut c = Capture::default();
    let logits = model
        .forward_stage(ids, None, &mut c, &SingleRank, None, mask)
        .unwrap();
    (logits, c.0)
}

/// Row `r`'s real positions `(first, len)`.
fn span(mask: &Tensor, r: i64) -> (i64, i64) {
    let row = mask.get(r);
    let len = row.sum(Kind::Int64).int64_value(&[]);
    (row.argmax(0, false).int64_value(&[]), len)
}

/// `t`'s real part for row `r`: `[len, ...]`, or, for an attention point
/// (`[batch, heads, query, key]`, `attn` true), `[heads, len, len]`.
fn real(t: &Tensor, r: i64, (first, len): (i64, i64), attn: bool) -> Tensor {
    let row = t.get(r);
    if attn {
        row.narrow(1, first, len).narrow(2, first, len)
    } else {
        row.narrow(0, first, len)
    }
}

fn is_attn(point: &str) -> bool {
    point.ends_with("hook_pattern") || point.ends_with("hook_attn_scores")
}

#[test]
fn every_point_of_a_padded_batch_equals_each_prompt_alone_and_transformers() {
    for name in models() {
        let model = Model::load(&model_dir(&name), Kind::Float, Device::Cpu).unwrap();
        let reference = Reference::open(&name);
        for side in ["left", "right"] {
            let batch = reference.batch(side);
            let mask = batch.attention_mask.as_ref().unwrap();
            let (logits, acts) = run(&model, &batch.ids, Some(mask));
            let prompts = batch.prompts();
            let mut compared = 0;
            for (r, prompt) in prompts.iter().enumerate() {
                let r = r as i64;
                let sp = span(mask, r);
                let alone_ids = Tensor::from_slice(prompt).view([1, -1]);
                let (alone_logits, alone) = run(&model, &alone_ids, None);
                let whole = (0, sp.1);
                let d = max_abs(
                    &real(&logits, r, sp, false),
                    &real(&alone_logits, 0, whole, false),
                );
                assert!(d <= TOL, "{name} {side} row {r}: logits vs alone {d}");
                let want = reference
                    .get(&format!("{side}/logits"), Kind::Float)
                    .unwrap();
                let d = max_abs(&real(&logits, r, sp, false), &real(&want, r, sp, false));
                assert!(
                    d <= TOL,
                    "{name} {side} row {r}: logits vs transformers {d}"
                );
                for (point, t) in &acts {
                    let a = &alone[point];
                    if t.dim() < 2 || t.size()[0] != batch.ids.size()[0] || a.size()[0] != 1 {
                        continue;
                    }
                    let attn = is_attn(point);
                    let d = max_abs(&real(t, r, sp, attn), &real(a, 0, whole, attn));
                    assert!(d <= TOL, "{name} {side} row {r} {point}: vs alone {d}");
                    if let Some(want) = reference.get(&format!("{side}/{point}"), Kind::Float) {
                        let d = max_abs(&real(t, r, sp, false), &real(&want, r, sp, false));
                        assert!(
                            d <= TOL,
                            "{name} {side} row {r} {point}: vs transformers {d}"
                        );
                        compared += 1;
                    }
                }
            }
            assert!(
                compared > 20,
                "{name} {side}: only {compared} points compared with transformers"
            );
            assert!(
                acts.values()
                    .all(|t| t.isfinite().all().int64_value(&[]) == 1),
                "{name} {side}: no NaN or infinity anywhere, pads included"
            );
        }
    }
}

fn opts(pp: usize, dp: usize, tp: usize) -> Options {
    let mut o = Options::new(pp, dp, tp).unwrap();
    o.timeout = Duration::from_secs(30);
    o
}

#[test]
fn a_padded_batch_gives_the_same_logits_on_every_layout() {
    for (name, layouts) in [
        (
            "gpt2-tiny",
            vec![(1, 1, 2), (2, 1, 1), (1, 2, 1), (2, 1, 2), (1, 2, 2)],
        ),
        (
            "llama-mesh",
            vec![(1, 1, 2), (2, 1, 1), (1, 2, 2), (2, 1, 2)],
        ),
        ("neox-parallel", vec![(1, 1, 2), (2, 1, 2)]),
    ] {
        let reference = Reference::open(name);
        let mut one = FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap();
        for side in ["left", "right"] {
            let batch = reference.batch(side);
            let mask = batch.attention_mask.as_ref().unwrap();
            let want = one.forward(&batch, &Groups::All).unwrap().logits;
            for &(pp, dp, tp) in &layouts {
                let mut m = FlexModel::load_with(&model_dir(name), &opts(pp, dp, tp)).unwrap();
                let got = m.forward(&batch, &Groups::All).unwrap().logits;
                for r in 0..mask.size()[0] {
                    let sp = span(mask, r);
                    let d = max_abs(&real(&got, r, sp, false), &real(&want, r, sp, false));
                    assert!(d <= TOL, "{name} {side} {:?} row {r}: {d}", (pp, dp, tp));
                }
            }
        }
    }
}

#[test]
fn greedy_generation_of_a_padded_batch_equals_each_prompt_alone() {
    for (name, mesh) in [
        ("gpt2-tiny", true),
        ("llama-gqa", false),
        ("llama-mesh", true),
        ("neox-sequential", false),
        ("mistral-window", false),
    ] {
        let reference = Reference::open(name);
        let mut runs = vec![((1, 1, 1), "right"), ((1, 1, 1), "left")];
        if mesh {
            runs.extend([((2, 1, 2), "right"), ((1, 2, 1), "left")]);
        }
        for (layout, side) in runs {
            let (pp, dp, tp) = layout;
            let mut m = if layout == (1, 1, 1) {
                FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap()
            } else {
                FlexModel::load_with(&model_dir(name), &opts(pp, dp, tp)).unwrap()
            };
            let batch = reference.batch(side);
            let prompts = batch.prompts();
            let go = GenerateOptions {
                max_new_tokens: 9,
                ..GenerateOptions::default()
            };
            let out = m.generate(&batch, &Groups::All, &go, |_, _| {}).unwrap();
            for (r, p) in prompts.iter().enumerate() {
                let alone = reference
                    .get(&format!("alone/{r}/greedy"), Kind::Int64)
                    .unwrap();
                let alone: Vec<i64> = Vec::try_from(&alone).unwrap();
                assert_eq!(
                    out.new_tokens[r],
                    alone[p.len()..],
                    "{name} {side} {layout:?} row {r}: transformers' continuation alone"
                );
            }
        }
    }
}

#[test]
fn a_padded_backward_ignores_the_padding() {
    let name = "llama-gqa";
    let prompts = vec![vec![5i64, 9, 2, 11, 7], vec![3, 8]];
    let batch = Batch::pad(&prompts, Padding::Right, 0).unwrap();
    let mut m = FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap();
    let loss = Loss::LogitDiff {
        position: -1,
        plus: 4,
        minus: 6,
    };
    // Backward hooks learn the real tokens too.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let s2 = seen.clone();
    let h = m
        .register_backward(
            std::sync::Arc::new(flexmodel::api::FnHook::read_only(
                "spans",
                move |ctx, _, _| {
                    *s2.lock().unwrap() = ctx.tokens.clone();
                    Ok(())
                },
            )),
            "blocks.0.hook_resid_post",
            &[],
        )
        .unwrap();
    let both = m.backward(&batch, &Groups::All, &loss).unwrap();
    let t = seen
        .lock()
        .unwrap()
        .clone()
        .expect("tokens at a backward hook");
    assert_eq!(t.real.as_deref(), Some(&[(0, 5), (0, 2)][..]));
    assert!(m.remove(h));
    let mut sum = 0.0;
    let mut grads: Option<Tensor> = None;
    for p in &prompts {
        let alone = m
            .backward(&Tensor::from_slice(p), &Groups::All, &loss)
            .unwrap();
        sum += alone.loss;
        let g = alone.param_grads["model.embed_tokens.weight"].shallow_clone();
        grads = Some(match grads {
            Some(a) => a + g,
            None => g,
        });
    }
    assert!(
        (both.loss - sum / 2.0).abs() < 1e-5,
        "{} vs {}",
        both.loss,
        sum / 2.0
    );
    let g = both.param_grads["model.embed_tokens.weight"].shallow_clone();
    let d = max_abs(&g, &(grads.unwrap() / 2.0));
    assert!(d < 1e-5, "gradients: {d}");
    // Cross-entropy over real tokens only: equal to the token-weighted mean.
    let targets = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6, 7, 0, 0, 0]).view([2, 5]);
    let ce = Loss::CrossEntropy { targets };
    let both = m.backward(&batch, &Groups::All, &ce).unwrap().loss;
    let a = m
        .backward(
            &Tensor::from_slice(&prompts[0]),
            &Groups::All,
            &Loss::CrossEntropy {
                targets: Tensor::from_slice(&[1i64, 2, 3, 4, 5]).view([1, 5]),
            },
        )
        .unwrap()
        .loss;
    let b = m
        .backward(
            &Tensor::from_slice(&prompts[1]),
            &Groups::All,
            &Loss::CrossEntropy {
                targets: Tensor::from_slice(&[6i64, 7]).view([1, 2]),
            },
        )
        .unwrap()
        .loss;
    let want = (5.0 * a + 2.0 * b) / 7.0;
    assert!((both - want).abs() < 1e-5, "{both} vs {want}");
    // The same on two data-parallel replicas.
    let mut dp = FlexModel::load_with(&model_dir(name), &opts(1, 2, 1)).unwrap();
    let targets = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6, 7, 0, 0, 0]).view([2, 5]);
    let got = dp
        .backward(&batch, &Groups::All, &Loss::CrossEntropy { targets })
        .unwrap()
        .loss;
    assert!((got - want).abs() < 1e-5, "DP2: {got} vs {want}");
}

/// The retrieve plugin on a padded batch: only real tokens by default
/// (`[tokens, D]`, the prompts one after the other; a slice per prompt),
/// the padded tensor when asked; hooks see the token dimension and the
/// real spans (WIT 0.1.2); the same on TP2 and DP2.
#[test]
fn retrieve_drops_padding_unless_asked_and_hooks_see_the_real_tokens() {
    use flexmodel::api::FnHook;
    use std::sync::{Arc, Mutex};
    let name = "gpt2-tiny";
    let rt = flexmodel_tests::runtime();
    let retrieve = rt.load(&flexmodel_tests::wasm("retrieve")).unwrap();
    let prompts = vec![vec![5i64, 9, 2, 11, 7], vec![3, 8], vec![4, 4, 1]];
    let point = "transformer.h.0";
    let one = FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap();
    let mut alone = Vec::new();
    for p in &prompts {
        let mut c = Capture::default();
        let m = one.model().unwrap();
        let _logits = m
            .forward_stage(
                &Tensor::from_slice(p).view([1, -1]),
                None,
                &mut c,
                &SingleRank,
                None,
                None,
            )
            .unwrap();
        alone.push(c.0[point].get(0));
    }
    let all_tokens = Tensor::cat(&alone, 0);
    let last: Vec<Tensor> = alone.iter().map(|t| t.get(-1).unsqueeze(0)).collect();
    let last = Tensor::cat(&last, 0);
    for side in [Padding::Right, Padding::Left] {
        let batch = Batch::pad(&prompts, side, 0).unwrap();
        for layout in [(1, 1, 1), (1, 1, 2), (1, 3, 1)] {
            let (pp, dp, tp) = layout;
            let mut m = if layout == (1, 1, 1) {
                FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap()
            } else {
                FlexModel::load_with(&model_dir(name), &opts(pp, dp, tp)).unwrap()
            };
            m.register_wasm(&retrieve, "blocks.0.hook_resid_post", "{}", &[])
                .unwrap();
            m.register_wasm(
                &retrieve,
                "blocks.0.hook_resid_post",
                r#"{"slice": [null, -1], "name": "last"}"#,
                &[],
            )
            .unwrap();
            m.register_wasm(
                &retrieve,
                "blocks.0.hook_resid_post",
                r#"{"padding": "keep", "name": "padded"}"#,
                &[],
            )
            .unwrap();
            let out = m.forward(&batch, &Groups::All).unwrap();
            let what = format!("{side:?} {layout:?}");
            let got = &out.outputs[point];
            assert_eq!(got.size(), all_tokens.size(), "{what}: [tokens, D]");
            assert!(max_abs(got, &all_tokens) <= TOL, "{what}: real tokens");
            let got = &out.outputs[&format!("{point}:last")];
            assert!(
                max_abs(got, &last) <= TOL,
                "{what}: each prompt's last token"
            );
            let padded = &out.outputs[&format!("{point}:padded")];
            assert_eq!(
                padded.size()[..2],
                batch.ids.size()[..],
                "{what}: kept padded"
            );
        }
        // A native hook sees the token dimension and the spans.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let mut m = FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap();
        m.register(
            Arc::new(FnHook::read_only("spans", move |ctx, _, _| {
                s2.lock().unwrap().push(ctx.tokens.clone());
                Ok(())
            })),
            "blocks.0.attn.hook_pattern",
            &[],
        )
        .unwrap();
        m.forward(&batch, &Groups::All).unwrap();
        let t = seen.lock().unwrap()[0].clone().unwrap();
        assert_eq!(t.dim, 2, "attention: queries on dim 2");
        let want: Vec<(u32, u32)> = match side {
            Padding::Right => vec![(0, 5), (0, 2), (0, 3)],
            Padding::Left => vec![(0, 5), (3, 2), (2, 3)],
        };
        assert_eq!(t.real.as_deref(), Some(&want[..]), "{side:?}");
    }
}

/// Every hook point of a padded batch on TP2, TP2×PP2 and DP2 equals one
/// rank at the real positions (the hooks see the logical activation).
#[test]
fn every_point_of_a_padded_batch_is_the_same_on_every_layout() {
    use flexmodel::api::FnHook;
    use std::sync::Arc;
    let all = || {
        Arc::new(FnHook::read_only("all", |_, t, out| {
            out.push((String::new(), t.shallow_clone()));
            Ok(())
        }))
    };
    for name in ["gpt2-tiny", "llama-mesh"] {
        let reference = Reference::open(name);
        let batch = reference.batch("left");
        let mask = batch.attention_mask.as_ref().unwrap();
        let mut one = FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap();
        let points: Vec<String> = one.points(1, 1).into_iter().map(|p| p.name).collect();
        for p in &points {
            one.register(all(), p, &[]).unwrap();
        }
        let want = one.forward(&batch, &Groups::All).unwrap().outputs;
        assert_eq!(want.len(), points.len());
        for (pp, dp, tp) in [(1, 1, 2), (2, 1, 2), (1, 2, 1)] {
            let mut m = FlexModel::load_with(&model_dir(name), &opts(pp, dp, tp)).unwrap();
            for p in &points {
                m.register(all(), p, &[]).unwrap();
            }
            let got = m.forward(&batch, &Groups::All).unwrap().outputs;
            for (point, w) in &want {
                let g = &got[point];
                if w.dim() < 2 || w.size()[0] != batch.ids.size()[0] {
                    assert!(max_abs(g, w) <= TOL, "{name} {point} {:?}", (pp, dp, tp));
                    continue;
                }
                for r in 0..mask.size()[0] {
                    let sp = span(mask, r);
                    let attn = is_attn(point);
                    let d = max_abs(&real(g, r, sp, attn), &real(w, r, sp, attn));
                    assert!(d <= TOL, "{name} {point} {:?} row {r}: {d}", (pp, dp, tp));
                }
            }
        }
    }
}

/// Masks and emits a caller controls: padding between real tokens and an
/// empty row are refused with one line; `emit-real` past the per-call
/// output cap is refused (charged before anything is copied).
#[test]
fn bad_masks_are_refused_and_emit_real_is_capped() {
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([2, 3]);
    let holes = Tensor::from_slice(&[1i64, 0, 1, 1, 1, 1]).view([2, 3]);
    let e = Batch::new(&ids, Some(&holes)).unwrap_err().to_string();
    assert!(
        e.contains("row 0") && e.contains("between real tokens"),
        "{e}"
    );
    let empty = Tensor::from_slice(&[1i64, 1, 1, 0, 0, 0]).view([2, 3]);
    let e = Batch::new(&ids, Some(&empty)).unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("no real token"), "{e}");
    let wrong = Tensor::from_slice(&[1i64, 1]).view([1, 2]);
    assert!(Batch::new(&ids, Some(&wrong)).is_err());

    let rt = flexmodel_tests::runtime_with(|c| c.call_limits.max_output_bytes_per_call = 8192);
    let retrieve = rt.load(&flexmodel_tests::wasm("retrieve")).unwrap();
    let mut m = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
    m.register_wasm(&retrieve, "blocks.0.hook_resid_post", "{}", &[])
        .unwrap();
    // 50 real tokens x 64 f32 = 12800 bytes, over the cap.
    let batch = Batch::pad(&[vec![5; 30], vec![3; 20]], Padding::Right, 0).unwrap();
    match m.forward(&batch, &Groups::All) {
        Err(flexmodel::api::FlexError::Hook { error, .. }) => {
            assert!(error.to_string().contains("cap"), "{error}")
        }
        other => panic!("expected the per-call cap: {other:?}"),
    }
    // The last real token of each row fits.
    let mut m = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
    m.register_wasm(
        &retrieve,
        "blocks.0.hook_resid_post",
        r#"{"slice": [null, -1]}"#,
        &[],
    )
    .unwrap();
    let out = m.forward(&batch, &Groups::All).unwrap();
    assert_eq!(out.outputs["transformer.h.0"].size(), [2, 64]);
}
