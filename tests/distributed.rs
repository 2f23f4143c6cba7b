//! The distributed engine on the thread backend: every parallel layout gives
//! the single-rank run's logits, retrieved activations and edited logits;
//! failures on one rank reach every rank, in time, with the same error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flexmodel::api::{FlexError, FlexModel, FnHook, Groups, Options};
use flexmodel::distributed::{CommError, Communicator, ThreadComm};
use flexmodel::hooks::{HookErrorKind, Plugin, PluginError};
use flexmodel_tests::{max_abs, model_dir, runtime, wasm};
use tch::{Device, Kind, Tensor};

/// (pp, dp, tp) of the layouts the issue names.
const LAYOUTS: [(usize, usize, usize); 6] = [
    (1, 1, 2),
    (1, 1, 4),
    (2, 1, 1),
    (1, 2, 1),
    (2, 1, 2),
    (1, 2, 2),
];

fn ids() -> Tensor {
    Tensor::from_slice(&[3i64, 17, 42, 5, 88, 9, 60, 1, 77, 23, 11, 50]).view([2, 6])
}

fn opts(pp: usize, dp: usize, tp: usize) -> Options {
    let mut o = Options::new(pp, dp, tp).unwrap();
    o.timeout = Duration::from_secs(30);
    o.check_edits = true;
    o
}

struct Plugins {
    retrieve: Arc<Plugin>,
    scale: Arc<Plugin>,
}

fn plugins() -> Plugins {
    let rt = runtime();
    Plugins {
        retrieve: rt.load(&wasm("retrieve")).unwrap(),
        scale: rt.load(&wasm("scale")).unwrap(),
    }
}

/// The same hooks on either kind of model: retrievals at replicated points
/// (residual stream, logits), split points (q, pattern, MLP hidden), a
/// last-token slice of a split point; edits at a split point (whole) and at
/// a slice of heads that spans ranks, in group "edit".
fn register(model: &str, mut reg: impl FnMut(&Arc<Plugin>, &str, &str, &[&str]), p: &Plugins) {
    let r = &p.retrieve;
    reg(r, "blocks.*.hook_resid_post", "{}", &[]);
    reg(r, "blocks.0.attn.hook_q", "{}", &[]);
    reg(r, "blocks.*.attn.hook_pattern", "{}", &[]);
    reg(r, "blocks.1.mlp.hook_post", "{}", &[]);
    reg(
        r,
        "blocks.1.attn.hook_z",
        r#"{"slice": [null, -1], "name": "last"}"#,
        &[],
    );
    reg(r, "hook_embed", "{}", &[]);
    reg(r, "logits", r#"{"name": "seen"}"#, &[]);
    if model.starts_with("gpt2") {
        reg(r, "hook_pos_embed", "{}", &[]);
    }
    reg(
        &p.scale,
        "blocks.0.mlp.hook_post",
        r#"{"factor": 2}"#,
        &["edit"],
    );
    reg(
        &p.scale,
        "blocks.1.attn.hook_v",
        r#"{"factor": -1, "slice": [null, null, [0, 2]]}"#,
        &["edit"],
    );
}

fn check_layout(
    model: &str,
    p: &Plugins,
    reference: &[(Groups, flexmodel::api::ForwardOutput)],
    layout: (usize, usize, usize),
) {
    let (pp, dp, tp) = layout;
    let what = format!("{model} pp{pp} dp{dp} tp{tp}");
    let mut dm = FlexModel::load_with(&model_dir(model), &opts(pp, dp, tp))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    register(
        model,
        |plugin, pat, cfg, groups| {
            dm.register_wasm(plugin, pat, cfg, groups).unwrap();
        },
        p,
    );
    for (groups, want) in reference {
        let got = dm
            .forward(&ids(), groups)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let d = max_abs(&got.logits, &want.logits);
        assert!(d <= 1e-5, "{what} {groups:?}: logits differ by {d}");
        let keys =
            |o: &flexmodel::api::ForwardOutput| o.outputs.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&got), keys(want), "{what}: same retrieved keys");
        for (k, w) in &want.outputs {
            let g = &got.outputs[k];
            assert_eq!(g.size(), w.size(), "{what}: shape of {k}");
            let d = max_abs(g, w);
            assert!(d <= 1e-5, "{what} {groups:?}: {k} differs by {d}");
        }
        if tp > 1 {
            let q = got
                .gathered_bytes
                .iter()
                .find(|(k, _)| {
                    k.ends_with("0.attn.hook_q")
                        || k.ends_with("0.self_attn.hook_q")
                        || k.ends_with("0.attention.hook_q")
                })
                .map(|(_, v)| *v)
                .unwrap_or(0);
            assert!(q > 0, "{what}: q was gathered: {:?}", got.gathered_bytes);
            let z = got
                .gathered_bytes
                .iter()
                .find(|(k, _)| k.ends_with("hook_z"))
                .map(|(_, v)| *v)
                .unwrap_or(0);
            // hook_z has hook_q's shape; its last-token retrieval gathers
            // 1/seq (6 tokens) of what a full gather moves, plus headers
            // (under 100 bytes per message).
            let msgs = 2 * (tp as u64 - 1) * tp as u64;
            assert!(
                z > 0 && z <= q / 6 + 100 * msgs,
                "{what}: z gathered {z} bytes, q {q}"
            );
        } else {
            assert!(
                got.gathered_bytes.values().all(|&b| b == 0),
                "{what}: nothing to gather"
            );
        }
    }
}

fn single_rank(model: &str, p: &Plugins) -> Vec<(Groups, flexmodel::api::ForwardOutput)> {
    let mut fm = FlexModel::load(&model_dir(model), Kind::Float, Device::Cpu).unwrap();
    register(
        model,
        |plugin, pat, cfg, groups| {
            fm.register_wasm(plugin, pat, cfg, groups).unwrap();
        },
        p,
    );
    let plain = fm.forward(&ids(), &Groups::except(["edit"])).unwrap();
    let edited = fm.forward(&ids(), &Groups::All).unwrap();
    assert!(
        max_abs(&plain.logits, &edited.logits) > 1e-3,
        "{model}: the edits change the logits"
    );
    vec![(Groups::except(["edit"]), plain), (Groups::All, edited)]
}

fn check_model(model: &str) {
    let p = plugins();
    let reference = single_rank(model, &p);
    for layout in LAYOUTS {
        check_layout(model, &p, &reference, layout);
    }
}

#[test]
fn gpt2_every_layout_equals_one_rank() {
    check_model("gpt2-tiny");
}

#[test]
fn llama_every_layout_equals_one_rank() {
    check_model("llama-mesh");
}

#[test]
fn neox_every_layout_equals_one_rank() {
    check_model("neox-parallel");
}

#[test]
fn qwen2_bias_and_gqa_under_tp2_pp2() {
    let p = plugins();
    let reference = single_rank("qwen2-tiny", &p);
    check_layout("qwen2-tiny", &p, &reference, (2, 1, 2));
}

#[test]
fn a_hook_failing_on_one_rank_fails_every_rank_with_the_same_error() {
    let rt = runtime();
    let hostile = rt.load(&wasm("hostile")).unwrap();
    let retrieve = rt.load(&wasm("retrieve")).unwrap();
    let mut dm = FlexModel::load_with(&model_dir("gpt2-tiny"), &opts(2, 1, 2)).unwrap();
    dm.register_wasm(&retrieve, "blocks.0.hook_resid_post", "{}", &[])
        .unwrap();
    // Rank 3 = stage 1, TP rank 1; the point is replicated under TP.
    dm.register_wasm(
        &hostile,
        "blocks.1.hook_resid_mid",
        r#"{"mode": "error", "only_rank": 3}"#,
        &["risky"],
    )
    .unwrap();
    let each = dm.forward_each(&ids(), &Groups::All).unwrap();
    assert_eq!(each.len(), 4);
    let mut texts = Vec::new();
    for (rank, r) in each.into_iter().enumerate() {
        match r {
            Err(FlexError::Hook { error, partial }) => {
                assert_eq!(error.plugin, "hostile");
                assert_eq!(error.hook_point, "transformer.h.1.hook_resid_mid");
                assert_eq!(error.rank, 3);
                assert!(matches!(
                    error.kind,
                    HookErrorKind::Plugin(PluginError::Failed(_))
                ));
                if rank == 0 {
                    assert!(
                        partial
                            .into_inner()
                            .unwrap()
                            .contains_key("transformer.h.0"),
                        "outputs produced before the failure reach rank 0"
                    );
                }
                texts.push(error.to_string());
            }
            other => panic!("rank {rank}: expected the hook error, got {other:?}"),
        }
    }
    assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
    // The model keeps working.
    let out = dm.forward(&ids(), &Groups::except(["risky"])).unwrap();
    assert!(out.outputs.contains_key("transformer.h.0"));
}

#[test]
fn a_native_hook_failing_on_the_first_stage_fails_the_later_stages() {
    let mut dm = FlexModel::load_with(&model_dir("llama-mesh"), &opts(2, 1, 1)).unwrap();
    dm.register(
        Arc::new(FnHook::read_only("picky", |ctx, _, _| {
            if ctx.rank.global_rank == 0 {
                Err("no".into())
            } else {
                Ok(())
            }
        })),
        "blocks.0.hook_resid_pre",
        &[],
    )
    .unwrap();
    for (rank, r) in dm
        .forward_each(&ids(), &Groups::All)
        .unwrap()
        .into_iter()
        .enumerate()
    {
        match r {
            Err(FlexError::Hook { error, .. }) => {
                assert_eq!(
                    (error.plugin.as_str(), error.rank),
                    ("picky", 0),
                    "rank {rank}"
                )
            }
            other => panic!("rank {rank}: {other:?}"),
        }
    }
}

#[test]
fn a_panicking_rank_fails_the_others_quickly() {
    let mut o = opts(1, 1, 2);
    o.timeout = Duration::from_secs(60);
    let mut dm = FlexModel::load_with(&model_dir("gpt2-tiny"), &o).unwrap();
    dm.register(
        Arc::new(FnHook::read_only("bomb", |ctx, _, _| {
            if ctx.rank.global_rank == 1 {
                panic!("rank 1 blew up");
            }
            Ok(())
        })),
        "blocks.0.attn.hook_q",
        &[],
    )
    .unwrap();
    let t0 = Instant::now();
    let each = dm.forward_each(&ids(), &Groups::All).unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "not the 60 s timeout"
    );
    for (rank, r) in each.into_iter().enumerate() {
        match r {
            Err(FlexError::Rank { rank: 1, message }) => {
                assert!(message.contains("rank 1 blew up"), "{message}")
            }
            other => panic!("rank {rank}: {other:?}"),
        }
    }
}

#[test]
fn a_stalled_rank_makes_the_others_fail_within_the_timeout() {
    let mut o = opts(1, 1, 2);
    o.timeout = Duration::from_millis(500);
    let mut dm = FlexModel::load_with(&model_dir("gpt2-tiny"), &o).unwrap();
    dm.register(
        Arc::new(FnHook::read_only("slow", |ctx, _, _| {
            if ctx.rank.global_rank == 1 {
                std::thread::sleep(Duration::from_secs(3));
            }
            Ok(())
        })),
        "blocks.0.hook_resid_post",
        &[],
    )
    .unwrap();
    let t0 = Instant::now();
    let each = dm.forward_each(&ids(), &Groups::All).unwrap();
    match &each[0] {
        Err(FlexError::Comm(CommError::Timeout { peer: 1, .. })) => {}
        other => panic!("rank 0: {other:?}"),
    }
    assert!(each[1].is_err());
    assert!(t0.elapsed() < Duration::from_secs(6));
}

#[test]
fn a_rank_that_exits_mid_run_makes_the_others_return_an_error() {
    let opts = opts(2, 1, 2);
    let comms = ThreadComm::world(4, Duration::from_secs(60));
    let t0 = Instant::now();
    let handles: Vec<_> = comms
        .into_iter()
        .map(|c| {
            let o = opts.clone();
            std::thread::spawn(move || {
                let rank = c.rank();
                let world: Box<dyn Communicator> = Box::new(c);
                let mut e = FlexModel::join(&model_dir("gpt2-tiny"), &o, world).unwrap();
                if rank == 1 {
                    return None; // exits: its communicators are dropped
                }
                // This process's one rank: its own reply.
                Some(e.forward_each(&ids(), &Groups::All).unwrap().remove(0))
            })
        })
        .collect();
    for (rank, h) in handles.into_iter().enumerate() {
        match h.join().unwrap() {
            None => assert_eq!(rank, 1),
            Some(Err(FlexError::Comm(_))) => {}
            Some(other) => panic!("rank {rank}: {other:?}"),
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "no rank waited for the 60 s timeout"
    );
}

#[test]
fn ranks_computing_different_edits_are_caught() {
    let mut dm = FlexModel::load_with(&model_dir("gpt2-tiny"), &opts(1, 1, 2)).unwrap();
    dm.register(
        Arc::new(FnHook::editing("rank-dependent", |ctx, t, _| {
            let _ = t.g_add_scalar_(ctx.rank.tp_rank as f64);
            Ok(())
        })),
        "blocks.0.mlp.hook_post",
        &[],
    )
    .unwrap();
    match dm.forward(&ids(), &Groups::All) {
        Err(FlexError::Hook { error, .. }) => {
            assert!(
                matches!(error.kind, HookErrorKind::Diverged { .. }),
                "{error}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn meshes_that_do_not_fit_the_model_are_refused_clearly() {
    let e = FlexModel::load_with(&model_dir("gpt2-tiny"), &opts(1, 1, 3))
        .err()
        .expect("3 does not divide 4 heads");
    assert!(
        e.to_string()
            .contains("does not divide the model's 4 attention heads"),
        "{e}"
    );
    let e = FlexModel::load_with(&model_dir("gpt2-tiny"), &opts(4, 1, 1))
        .err()
        .expect("4 stages, 2 layers");
    assert!(e.to_string().contains("pipeline stages"), "{e}");
    assert!(Options::new(0, 1, 1).is_err());
    let mut dm = FlexModel::load_with(&model_dir("gpt2-tiny"), &opts(1, 2, 1)).unwrap();
    let e = dm
        .forward(&ids().narrow(0, 0, 1), &Groups::All)
        .unwrap_err();
    assert!(e.to_string().contains("cannot be split over 2"), "{e}");
    // Still usable.
    dm.forward(&ids(), &Groups::All).unwrap();
    let mut tp = FlexModel::load_with(&model_dir("gpt2-tiny"), &opts(1, 1, 2)).unwrap();
    let e = tp
        .forward(&Tensor::from_slice(&[1i64, 101]), &Groups::All)
        .unwrap_err();
    assert!(e.to_string().contains("token ids must be in 0..101"), "{e}");
}

#[test]
fn points_are_logical_shapes() {
    let fm = FlexModel::load(&model_dir("llama-mesh"), Kind::Float, Device::Cpu).unwrap();
    let dm = FlexModel::load_with(&model_dir("llama-mesh"), &opts(2, 1, 2)).unwrap();
    assert_eq!(fm.points(3, 7), dm.points(3, 7));
}
