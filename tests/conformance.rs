//! One conformance suite for every guest language: each language's build
//! of every example plugin (`scale`, `retrieve`, `steer`) and of the
//! conformance guest (`tests/guests/conform*`) must do what the Rust build
//! does, bit for bit:
//! - the same model, configurations and inputs give bit-identical logits and
//!   outputs (unpadded and padded batches, slices, two architectures,
//!   greedy generation with a steering hook);
//! - the same bad configurations fail with the same `hook-error` variant;
//! - state across forwards, the host-seeded random streams, and a failure,
//!   a trap and a runaway loop after an edit (which leave the activation
//!   bit-identical, and the plugin usable again) behave alike.
//!
//! Adding a language means adding its suffix to [`LANGUAGES`] and its
//! builds to `scripts/build-guests.sh` (`<plugin>-<suffix>.wasm`).

use std::collections::BTreeMap;
use std::sync::Arc;

use flexmodel::api::{Batch, FlexError, FlexModel, Groups, Padding};
use flexmodel::hooks::{
    CallContext, CpuLimit, Hook, HookErrorKind, Plugin, RankInfo, Runtime, WasmHook,
};
use flexmodel_tests::{greedy, model_dir, runtime_with, wasm};
use tch::{Device, Kind, Tensor};

/// The languages other than Rust: the suffix of their builds.
const LANGUAGES: &[&str] = &["c", "zig", "js", "py"];

/// Languages that cannot abort (JavaScript): their `trap` mode is not
/// compared; the runaway loop (`spin`, a trap when the fuel runs out) is.
const NO_ABORT: &[&str] = &["js"];

fn rt() -> Arc<Runtime> {
    runtime_with(|c| c.seed = 7)
}

fn plugin(rt: &Arc<Runtime>, name: &str, lang: Option<&str>) -> Arc<Plugin> {
    let file = match lang {
        Some(l) => format!("{name}-{l}"),
        None => name.to_string(),
    };
    rt.load(&wasm(&file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// What a run gives: logits and every output, or the error's variant.
type Run = Result<(Tensor, BTreeMap<String, Tensor>), String>;

/// The variant of an error, the same words whatever the language's message.
fn variant(e: &FlexError) -> String {
    match e {
        FlexError::Hook { error, .. } => match &error.kind {
            HookErrorKind::Plugin(p) => format!("plugin {:?}", std::mem::discriminant(p)),
            k => format!("{:?}", std::mem::discriminant(k)),
        },
        other => {
            // Errors of `init` arrive as text: "... plugin returned an
            // error: invalid config: <message>".
            // error: invalid config: <message>" (or the host's own check
            // of the JSON: "... rejected its configuration: invalid config:
            // not JSON ...").
            let t = other.to_string();
            let rest = t
                .split_once("plugin returned an error: ")
                .or_else(|| t.split_once("rejected its configuration: "))
                .map_or(t.as_str(), |(_, r)| r);
            rest.split(':').next().unwrap_or(rest).to_string()
        }
    }
}

#[derive(Clone, Copy)]
enum Input {
    Ids,
    /// Two prompts of different lengths, one padded batch.
    Padded(Padding),
}

fn batch(input: Input) -> Batch {
    let a = vec![5, 17, 3, 99, 42, 8, 1];
    let b = vec![64, 2, 30];
    match input {
        Input::Ids => Batch::pad(
            &[a.clone(), a.iter().rev().copied().collect()],
            Padding::Right,
            0,
        )
        .unwrap(),
        Input::Padded(side) => Batch::pad(&[a, b], side, 0).unwrap(),
    }
}

fn forward(model: &str, hooks: &[(&Arc<Plugin>, &str, &str)], input: Input) -> Run {
    let mut m = FlexModel::load(&model_dir(model), Kind::Float, Device::Cpu).unwrap();
    for (p, at, config) in hooks {
        m.register_wasm(p, at, config, &[])
            .map_err(|e| variant(&e))?;
    }
    let o = m
        .forward(&batch(input), &Groups::All)
        .map_err(|e| variant(&e))?;
    Ok((o.logits, o.outputs))
}

fn bit_equal(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.kind() == b.kind() && {
        let x: Vec<f32> = Vec::try_from(a.flatten(0, -1).to_kind(Kind::Float)).unwrap();
        let y: Vec<f32> = Vec::try_from(b.flatten(0, -1).to_kind(Kind::Float)).unwrap();
        x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits())
    }
}

fn assert_same(what: &str, want: &Run, got: &Run) {
    match (want, got) {
        (Ok((wl, wo)), Ok((gl, go))) => {
            assert!(bit_equal(wl, gl), "{what}: logits differ");
            assert_eq!(
                wo.keys().collect::<Vec<_>>(),
                go.keys().collect::<Vec<_>>(),
                "{what}: output keys"
            );
            for (k, t) in wo {
                assert!(bit_equal(t, &go[k]), "{what}: output {k} differs");
            }
        }
        (Err(w), Err(g)) => assert_eq!(w, g, "{what}: error variant"),
        (w, g) => panic!(
            "{what}: Rust gave {:?}, this build {:?}",
            w.as_ref().map(|_| "a result"),
            g.as_ref().map(|_| "a result")
        ),
    }
}

/// `n` values, each exact in f32 (multiples of 2^-16), whose squares'
/// sum is not: normalizing rounds at every step, as f32 arithmetic must.
fn steering_vector(n: usize) -> String {
    let v: Vec<String> = (0..n)
        .map(|i| format!("{}", ((i * 7919) % 65521) as f64 / 65536.0 - 0.5))
        .collect();
    format!("[{}]", v.join(", "))
}

/// (plugin, model, hook point, configuration, input) of every case.
fn cases() -> Vec<(&'static str, &'static str, &'static str, String, Input)> {
    let v64 = steering_vector(64);
    let v48 = steering_vector(48);
    let mut c = vec![
        (
            "scale",
            "gpt2-tiny",
            "blocks.0.hook_resid_post",
            r#"{"factor": 0.5}"#.to_string(),
            Input::Ids,
        ),
        (
            "scale",
            "gpt2-tiny",
            "blocks.*.hook_resid_mid",
            r#"{"factor": 3, "slice": [null, -1]}"#.into(),
            Input::Ids,
        ),
        (
            "scale",
            "gpt2-tiny",
            "blocks.1.attn.hook_z",
            r#"{"factor": -1.5, "slice": [[0, 1], [1, null, 2], 0]}"#.into(),
            Input::Ids,
        ),
        (
            "scale",
            "llama-gqa",
            "blocks.*.hook_mlp_out",
            r#"{"factor": 1.25}"#.into(),
            Input::Padded(Padding::Left),
        ),
        (
            "retrieve",
            "gpt2-tiny",
            "blocks.*.hook_resid_post",
            "{}".into(),
            Input::Ids,
        ),
        (
            "retrieve",
            "gpt2-tiny",
            "blocks.0.attn.hook_pattern",
            r#"{"slice": [null, null, -1], "name": "last"}"#.into(),
            Input::Ids,
        ),
        (
            "retrieve",
            "gpt2-tiny",
            "blocks.1.hook_resid_pre",
            r#"{"slice": [null, -1]}"#.into(),
            Input::Padded(Padding::Right),
        ),
        (
            "retrieve",
            "gpt2-tiny",
            "blocks.1.hook_resid_pre",
            r#"{"padding": "keep"}"#.into(),
            Input::Padded(Padding::Left),
        ),
        (
            "retrieve",
            "llama-gqa",
            "blocks.0.attn.hook_k",
            r#"{"name": "k"}"#.into(),
            Input::Padded(Padding::Left),
        ),
        (
            "steer",
            "gpt2-tiny",
            "blocks.1.hook_resid_pre",
            format!(r#"{{"vector": {v64}, "alpha": 2.5}}"#),
            Input::Ids,
        ),
        (
            "steer",
            "gpt2-tiny",
            "blocks.0.hook_resid_post",
            format!(r#"{{"vector": {v64}, "alpha": -3, "positions": [-1, 0], "normalize": true}}"#),
            Input::Ids,
        ),
        (
            "steer",
            "llama-gqa",
            "blocks.*.hook_resid_post",
            format!(r#"{{"vector": {v48}, "normalize": true}}"#),
            Input::Padded(Padding::Right),
        ),
    ];
    // A host call refused (a slice out of range): its error reaches the
    // host through each SDK as the same variant.
    c.push((
        "scale",
        "gpt2-tiny",
        "blocks.0.hook_resid_post",
        r#"{"factor": 2, "slice": [[0, 1], [0, 99]]}"#.into(),
        Input::Ids,
    ));
    // A steering vector of the wrong width fails at the call, alike.
    c.push((
        "steer",
        "gpt2-tiny",
        "blocks.0.hook_resid_post",
        format!(r#"{{"vector": {v48}}}"#),
        Input::Ids,
    ));
    c
}

#[test]
fn every_language_gives_bit_identical_logits_and_outputs() {
    let rt = rt();
    for (name, model, at, config, input) in cases() {
        let rust = plugin(&rt, name, None);
        let want = forward(model, &[(&rust, at, &config)], input);
        if let Ok((_, o)) = &want {
            assert!(name != "retrieve" || !o.is_empty(), "{name} emits");
        }
        for lang in LANGUAGES {
            let p = plugin(&rt, name, Some(lang));
            let got = forward(model, &[(&p, at, &config)], input);
            assert_same(
                &format!("{name}-{lang} on {model} at {at} with {config}"),
                &want,
                &got,
            );
        }
    }
}

#[test]
fn greedy_generation_with_a_steering_hook_is_the_same_in_every_language() {
    let rt = rt();
    let config = format!(
        r#"{{"vector": {}, "alpha": 4, "new_tokens_only": true}}"#,
        steering_vector(64)
    );
    let generate = |p: &Arc<Plugin>| {
        let mut m = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
        m.register_wasm(p, "blocks.1.hook_resid_post", &config, &[])
            .unwrap();
        let opts = greedy(6);
        let o = m
            .generate(
                &batch(Input::Padded(Padding::Left)),
                &Groups::All,
                &opts,
                |_, _| {},
            )
            .unwrap();
        o.new_tokens
    };
    let want = generate(&plugin(&rt, "steer", None));
    let mut bare = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
    let opts = greedy(6);
    let unsteered = bare
        .generate(
            &batch(Input::Padded(Padding::Left)),
            &Groups::All,
            &opts,
            |_, _| {},
        )
        .unwrap()
        .new_tokens;
    assert_ne!(want, unsteered, "the steering changes the continuation");
    for lang in LANGUAGES {
        assert_eq!(
            generate(&plugin(&rt, "steer", Some(lang))),
            want,
            "steer-{lang}"
        );
    }
}

#[test]
fn the_same_bad_configurations_fail_alike() {
    let rt = rt();
    let bad: &[(&str, &[&str])] = &[
        (
            "scale",
            &[
                "not json",
                "[1, 2]",
                "{}",
                r#"{"factor": "2"}"#,
                r#"{"factor": null}"#,
                r#"{"factor": 2, "extra": 1}"#,
                r#"{"factor": 1e39}"#,
                r#"{"factor": 2, "slice": 5}"#,
                r#"{"factor": 2, "slice": [[0, 1, 0]]}"#,
                r#"{"factor": 2, "slice": [[0]]}"#,
                r#"{"factor": 2, "slice": [1.5]}"#,
                r#"{"factor": 2, "slice": [true]}"#,
            ],
        ),
        (
            "retrieve",
            &[
                r#"{"padding": "trim"}"#,
                r#"{"name": 3}"#,
                r#"{"slice": [[null, null, -2]]}"#,
                r#"{"what": 1}"#,
            ],
        ),
        (
            "steer",
            &[
                "{}",
                r#"{"vector": []}"#,
                r#"{"vector": [0, 0], "normalize": true}"#,
                r#"{"vector": [1, "2"]}"#,
                r#"{"vector": [1], "alpha": 1e39}"#,
                r#"{"vector": [1], "positions": [0.5]}"#,
                r#"{"vector": [1], "normalize": 1}"#,
            ],
        ),
        (
            "conform",
            &[
                r#"{"mode": "fly"}"#,
                r#"{"factor": 2}"#,
                r#"{"mode": "empty", "factor": "x"}"#,
            ],
        ),
    ];
    for (name, configs) in bad {
        for config in *configs {
            let rust = plugin(&rt, name, None);
            let want = forward(
                "gpt2-tiny",
                &[(&rust, "blocks.0.hook_resid_post", config)],
                Input::Ids,
            );
            let Err(w) = &want else {
                panic!("{name} accepted {config}")
            };
            assert_eq!(w, "invalid config", "{name} {config}");
            for lang in LANGUAGES {
                let p = plugin(&rt, name, Some(lang));
                let got = forward(
                    "gpt2-tiny",
                    &[(&p, "blocks.0.hook_resid_post", config)],
                    Input::Ids,
                );
                assert_same(&format!("{name}-{lang} with {config}"), &want, &got);
            }
        }
    }
}

fn call_ctx(forward_index: u64) -> CallContext {
    CallContext {
        hook_point: "blocks.0.hook_resid_post".into(),
        rank: RankInfo::SINGLE,
        forward_index,
        generation: None,
        backward: false,
        tokens: None,
    }
}

fn activation() -> Tensor {
    tch::manual_seed(3);
    Tensor::randn([2, 5, 64], (Kind::Float, Device::Cpu))
}

/// A call's emitted tensors, or its error's variant.
type CallResult = Result<Vec<(String, Tensor)>, String>;

/// What `mode` of the conformance guest emits over three calls (or the
/// error of each), with the activation after each.
fn conform_calls(p: &Arc<Plugin>, mode: &str) -> Vec<(CallResult, Tensor)> {
    let h = WasmHook::new(
        p.clone(),
        &format!(r#"{{"mode": "{mode}", "factor": 1.5}}"#),
    )
    .unwrap();
    (0..3)
        .map(|k| {
            let mut t = activation();
            let r = h
                .call(&call_ctx(k), &mut t)
                .map(|r| r.emitted.into_iter().map(|e| (e.key, e.tensor)).collect())
                .map_err(|e| format!("{:?}", std::mem::discriminant(&e.kind)));
            (r, t)
        })
        .collect()
}

#[test]
fn state_random_streams_failures_and_traps_behave_alike() {
    let rt = runtime_with(|c| {
        c.seed = 7;
        // Runaway loops end quickly.
        c.cpu = CpuLimit::Fuel(200_000_000);
    });
    let rust = plugin(&rt, "conform", None);
    for mode in [
        "state", "random", "fail", "trap", "spin", "empty", "read", "norm", "scale",
    ] {
        let want = conform_calls(&rust, mode);
        match mode {
            "state" => {
                let counts: Vec<f32> = want
                    .iter()
                    .map(|(r, _)| r.as_ref().unwrap()[0].1.double_value(&[0]) as f32)
                    .collect();
                assert_eq!(counts, [1.0, 2.0, 3.0], "state survives the calls");
            }
            "fail" | "trap" | "spin" => {
                for (r, t) in &want {
                    assert!(r.is_err(), "{mode} fails");
                    assert!(
                        bit_equal(t, &activation()),
                        "{mode}: the edit before it is undone"
                    );
                }
            }
            "norm" => {
                let (r, _) = &want[0];
                let n = &r.as_ref().unwrap()[0].1;
                let reference = activation()
                    .to_kind(Kind::Double)
                    .square()
                    .sum_dim_intlist(-1, false, Kind::Double)
                    .sqrt();
                let d = (n.to_kind(Kind::Double).flatten(0, -1) - reference.flatten(0, -1))
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(d < 1e-5, "norm computed right: {d}");
            }
            _ => {}
        }
        for lang in LANGUAGES {
            if mode == "trap" && NO_ABORT.contains(lang) {
                continue;
            }
            let got = conform_calls(&plugin(&rt, "conform", Some(lang)), mode);
            for (k, ((w, wt), (g, gt))) in want.iter().zip(&got).enumerate() {
                let what = format!("conform-{lang} mode {mode}, call {k}");
                assert!(bit_equal(wt, gt), "{what}: the activation after the call");
                match (w, g) {
                    (Ok(w), Ok(g)) => {
                        assert_eq!(w.len(), g.len(), "{what}: outputs");
                        for ((wk, wv), (gk, gv)) in w.iter().zip(g) {
                            assert_eq!(wk, gk, "{what}");
                            assert!(bit_equal(wv, gv), "{what}: {wk} differs");
                        }
                    }
                    (Err(w), Err(g)) => assert_eq!(w, g, "{what}: error variant"),
                    _ => panic!(
                        "{what}: Rust {w:?}, this build {g:?}",
                        w = w.is_ok(),
                        g = g.is_ok()
                    ),
                }
            }
        }
    }
}

#[test]
fn every_build_names_the_same_hook_identity_and_access() {
    let rt = rt();
    for name in ["scale", "retrieve", "steer"] {
        let rust = plugin(&rt, name, None);
        for lang in LANGUAGES {
            let p = plugin(&rt, name, Some(lang));
            assert_eq!(p.info.name, format!("{name}-{lang}"));
            assert_eq!(p.info.version, rust.info.version, "{name}-{lang}");
            assert_eq!(p.info.edits, rust.info.edits, "{name}-{lang}");
            assert_eq!(p.info.hook_points, rust.info.hook_points, "{name}-{lang}");
        }
    }
}
