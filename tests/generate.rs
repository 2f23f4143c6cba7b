//! Generation with a KV cache against transformers' `generate`, hooks at
//! every step (step and position in their context), seeded sampling.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flexmodel::api::{FlexModel, FnHook, GenerateOptions, Groups, Sampling};
use flexmodel_tests::{greedy, model_dir, runtime, wasm};
use tch::{Device, Kind, Tensor};

fn reference(name: &str) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(model_dir(name).join("generate.safetensors"))
        .unwrap_or_else(|e| panic!("{name}: {e} (scripts/make-models.sh)"))
        .into_iter()
        .collect()
}

#[test]
fn greedy_equals_transformers_generate_token_for_token() {
    let names = [
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
    for name in names {
        let r = reference(name);
        let (prompt, want) = (&r["prompt"], &r["greedy"]);
        let n = (want.size()[1] - prompt.size()[1]) as usize;
        let mut fm = FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap();
        let mut streamed = Vec::new();
        let out = fm
            .generate(prompt, &Groups::All, &greedy(n), |step, t| {
                streamed.push((step, t.to_vec()))
            })
            .unwrap();
        assert!(
            out.tokens.equal(want),
            "{name}: ours {:?}\ntransformers {:?}",
            Vec::<i64>::try_from(out.tokens.flatten(0, -1)).unwrap(),
            Vec::<i64>::try_from(want.flatten(0, -1)).unwrap()
        );
        assert_eq!(streamed.len(), n, "{name}: one callback per step");
        assert_eq!(streamed[0].0, 0);
    }
}

#[test]
fn hooks_fire_at_every_step_with_step_and_position() {
    let r = reference("llama-gqa");
    let prompt = &r["prompt"];
    let s = prompt.size()[1] as u64;
    let mut fm = FlexModel::load(&model_dir("llama-gqa"), Kind::Float, Device::Cpu).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    fm.register(
        Arc::new(FnHook::read_only("where", move |ctx, t, _| {
            let g = ctx.generation.expect("generation context");
            log.lock().unwrap().push((g.step, g.position, t.size()[1]));
            Ok(())
        })),
        "blocks.0.hook_resid_post",
        &[],
    )
    .unwrap();
    let rt = runtime();
    fm.register_wasm(
        &rt.load(&wasm("retrieve")).unwrap(),
        "blocks.1.hook_resid_post",
        r#"{"slice": [null, -1]}"#,
        &[],
    )
    .unwrap();
    let out = fm
        .generate(prompt, &Groups::All, &greedy(4), |_, _| {})
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(0, 0, s as i64), (1, s, 1), (2, s + 1, 1), (3, s + 2, 1)],
        "prefill, then one token per step at the next position"
    );
    for step in 0..4 {
        let t = &out.outputs[&format!("step{step}/model.layers.1")];
        assert_eq!(t.size(), vec![2, 1, 48], "per-step retrieval");
    }
}

#[test]
fn a_steering_hook_can_act_on_new_tokens_only() {
    let r = reference("gpt2-tiny");
    let prompt = &r["prompt"];
    let mut fm = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
    let plain = fm
        .generate(prompt, &Groups::All, &greedy(6), |_, _| {})
        .unwrap();
    fm.register(
        Arc::new(FnHook::editing("steer-new", |ctx, t, _| {
            if ctx.generation.is_some_and(|g| g.step > 0) {
                // A direction, not a uniform shift (LayerNorm would remove that).
                let _ = t.narrow(-1, 0, 8).g_add_scalar_(10.0);
            }
            Ok(())
        })),
        "blocks.0.hook_resid_post",
        &[],
    )
    .unwrap();
    let steered = fm
        .generate(prompt, &Groups::All, &greedy(6), |_, _| {})
        .unwrap();
    let first =
        |o: &flexmodel::api::GenerateOutput| o.new_tokens.iter().map(|v| v[0]).collect::<Vec<_>>();
    assert_eq!(
        first(&plain),
        first(&steered),
        "the prompt pass is not steered"
    );
    assert_ne!(plain.new_tokens, steered.new_tokens, "new tokens are");
}

#[test]
fn sampling_is_seeded() {
    let r = reference("neox-parallel");
    let prompt = &r["prompt"];
    let mut fm = FlexModel::load(&model_dir("neox-parallel"), Kind::Float, Device::Cpu).unwrap();
    let run = |fm: &mut FlexModel, seed| {
        let o = GenerateOptions {
            max_new_tokens: 12,
            sampling: Sampling::Sample {
                temperature: 1.5,
                top_k: Some(50),
                seed,
            },
            eos: Vec::new(),
            ..GenerateOptions::default()
        };
        fm.generate(prompt, &Groups::All, &o, |_, _| {})
            .unwrap()
            .new_tokens
    };
    let a = run(&mut fm, 7);
    assert_eq!(a, run(&mut fm, 7), "same seed, same tokens");
    assert_ne!(a, run(&mut fm, 8), "another seed, other tokens");
    let bad = GenerateOptions {
        sampling: Sampling::Sample {
            temperature: 0.0,
            top_k: None,
            seed: 0,
        },
        ..greedy(2)
    };
    assert!(fm.generate(prompt, &Groups::All, &bad, |_, _| {}).is_err());
}

#[test]
fn every_parallel_layout_generates_the_same_tokens_and_step_outputs() {
    use flexmodel::api::{FlexModel, Options};
    let rt = runtime();
    let retrieve = rt.load(&wasm("retrieve")).unwrap();
    for name in ["gpt2-tiny", "llama-mesh", "neox-parallel"] {
        let r = reference(name);
        let (prompt, want) = (&r["prompt"], &r["greedy"]);
        let n = (want.size()[1] - prompt.size()[1]) as usize;
        let mut fm = FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap();
        fm.register_wasm(&retrieve, "blocks.1.mlp.hook_post", "{}", &[])
            .unwrap();
        let one = fm
            .generate(prompt, &Groups::All, &greedy(n), |_, _| {})
            .unwrap();
        for (pp, dp, tp) in [
            (1, 1, 2),
            (1, 1, 4),
            (2, 1, 1),
            (1, 2, 1),
            (2, 1, 2),
            (1, 2, 2),
        ] {
            let what = format!("{name} pp{pp} dp{dp} tp{tp}");
            let mut o = Options::new(pp, dp, tp).unwrap();
            o.check_edits = true;
            let mut dm = FlexModel::load_with(&model_dir(name), &o).unwrap();
            dm.register_wasm(&retrieve, "blocks.1.mlp.hook_post", "{}", &[])
                .unwrap();
            let mut streamed = 0;
            let out = dm
                .generate(prompt, &Groups::All, &greedy(n), |_, _| streamed += 1)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                out.tokens.equal(want),
                "{what}: tokens differ from transformers'"
            );
            assert_eq!(streamed, n, "{what}: streamed every step");
            assert_eq!(
                out.outputs.keys().collect::<Vec<_>>(),
                one.outputs.keys().collect::<Vec<_>>(),
                "{what}"
            );
            for (k, v) in &one.outputs {
                let d = flexmodel_tests::max_abs(v, &out.outputs[k]);
                assert!(d <= 1e-5, "{what}: {k} differs by {d}");
            }
        }
    }
}

#[test]
fn the_steer_plugin_can_steer_new_tokens_only() {
    let r = reference("gpt2-tiny");
    let prompt = &r["prompt"];
    let rt = runtime();
    let steer = rt.load(&wasm("steer")).unwrap();
    let vector: Vec<f32> = (0..64).map(|i| if i < 8 { 10.0 } else { 0.0 }).collect();
    let mut fm = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
    let plain = fm
        .generate(prompt, &Groups::All, &greedy(6), |_, _| {})
        .unwrap();
    let cfg = serde_json::json!({"vector": vector, "new_tokens_only": true}).to_string();
    fm.register_wasm(&steer, "blocks.0.hook_resid_post", &cfg, &[])
        .unwrap();
    let steered = fm
        .generate(prompt, &Groups::All, &greedy(6), |_, _| {})
        .unwrap();
    let first =
        |o: &flexmodel::api::GenerateOutput| o.new_tokens.iter().map(|v| v[0]).collect::<Vec<_>>();
    assert_eq!(
        first(&plain),
        first(&steered),
        "the prompt pass is not steered"
    );
    assert_ne!(plain.new_tokens, steered.new_tokens, "new tokens are");
    // In a plain forward (no generation) it does nothing either.
    let a = fm.forward(prompt, &Groups::All).unwrap().logits;
    let b = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu)
        .unwrap()
        .forward(prompt, &Groups::All)
        .unwrap()
        .logits;
    assert!(a.equal(&b));
}

#[test]
fn the_models_eos_tokens_come_from_its_generation_config() {
    let fm = flexmodel::api::FlexModel::load(
        &flexmodel_tests::model_dir("gpt2-tiny"),
        tch::Kind::Float,
        tch::Device::Cpu,
    )
    .unwrap();
    assert_eq!(fm.eos_tokens(), [0]);
    let dir = std::env::temp_dir().join(format!("fm-eos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"eos_token_id": [2, 7]}"#).unwrap();
    assert_eq!(
        flexmodel::models::eos_tokens(&dir),
        [2, 7],
        "config.json, a list"
    );
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": 5}"#).unwrap();
    assert_eq!(
        flexmodel::models::eos_tokens(&dir),
        [5],
        "generation_config.json first"
    );
    std::fs::remove_dir_all(&dir).ok();
}
