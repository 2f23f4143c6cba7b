//! The `probe` plugin trains a linear probe by SGD from inside the hook, its
//! parameters in plugin state: on a synthetic task whose label is planted in
//! the residual stream, its accuracy on held-out forwards rises far above
//! chance.

use std::sync::{Arc, Mutex};

use flexmodel::api::{FlexModel, FnHook, Groups};
use flexmodel_tests::{model_dir, runtime, wasm};
use tch::{Device, Kind, Tensor};

const TRAIN: usize = 150;
const EVAL: usize = 40;
const BATCH: usize = 4;

/// Label of row `r` in forward `f` (a fixed pseudo-random sequence).
fn label(f: usize, r: usize) -> u32 {
    let x = (f * 7919 + r * 104729 + 13).wrapping_mul(2654435761) >> 7;
    (x % 2) as u32
}

#[test]
fn a_probe_trained_in_the_hook_learns_a_planted_signal() {
    let mut fm = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
    tch::manual_seed(5);
    let v = Tensor::randn([64], (Kind::Float, Device::Cpu));
    let v = &v / v.norm();
    let direction = Mutex::new(v);
    // Plant the label: +/- 2 v on every position's embedding.
    fm.register(
        Arc::new(FnHook::editing("plant", move |ctx, t, _| {
            let v = direction.lock().map_err(|e| e.to_string())?;
            let f = ctx.forward_index as usize;
            for r in 0..BATCH {
                let sign = if label(f, r) == 1 { 2.0 } else { -2.0 };
                let _ = t.get(r as i64).g_add_(&(&*v * sign));
            }
            Ok(())
        })),
        "hook_embed",
        &[],
    )
    .unwrap();
    let labels: Vec<Vec<u32>> = (0..TRAIN)
        .map(|f| (0..BATCH).map(|r| label(f, r)).collect())
        .collect();
    let cfg = serde_json::json!({
        "classes": 2, "labels": labels, "train_forwards": TRAIN, "lr": 0.1, "position": -1
    });
    let rt = runtime();
    fm.register_wasm(
        &rt.load(&wasm("probe")).unwrap(),
        "blocks.1.hook_resid_post",
        &cfg.to_string(),
        &[],
    )
    .unwrap();
    let g = Tensor::randint(
        101,
        [(TRAIN + EVAL) as i64, BATCH as i64, 6],
        (Kind::Int64, Device::Cpu),
    );
    let mut losses = Vec::new();
    let (mut right, mut total) = (0, 0);
    for f in 0..TRAIN + EVAL {
        let out = fm.forward(&g.get(f as i64), &Groups::All).unwrap();
        let key = |s: &str| format!("transformer.h.1:{s}");
        if f < TRAIN {
            losses.push(out.outputs[&key("loss")].double_value(&[0]));
            assert!(out.outputs.contains_key(&key("predictions")));
        } else {
            assert!(
                !out.outputs.contains_key(&key("loss")),
                "no training after TRAIN forwards"
            );
            let p = Vec::<f32>::try_from(&out.outputs[&key("predictions")]).unwrap();
            for (r, pr) in p.iter().enumerate() {
                right += usize::from(*pr as u32 == label(f, r));
                total += 1;
            }
        }
    }
    let acc = right as f64 / total as f64;
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (early, late) = (mean(&losses[..10]), mean(&losses[TRAIN - 10..]));
    eprintln!("probe: loss {early:.3} -> {late:.3}, held-out accuracy {acc:.3}");
    assert!(late < 0.5 * early, "loss falls: {early:.3} -> {late:.3}");
    assert!(acc >= 0.9, "held-out accuracy {acc:.3} (chance 0.5)");
}
