//! The TransformerLens aliases mean what TransformerLens 3.x means: every
//! alias of GPT-2 and a LLaMA-family model (grouped-query attention), both
//! with random norm weights and biases, compared with the activations of
//! TransformerLens' own `HookedTransformer` (built offline from a manual
//! config with TL's weight converters, its logits equal to transformers';
//! tests/reference/tl_aliases.py). Two-sided: every TransformerLens hook is
//! one of our aliases, and every alias (but `logits`, ours) is a
//! TransformerLens hook with the same shape and values.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flexmodel::api::{FlexModel, FnHook, Groups};
use flexmodel_tests::{max_abs, model_dir};
use tch::{Device, Kind, Tensor};

fn tl_reference(name: &str) -> BTreeMap<String, Tensor> {
    let path = model_dir(name).join("tl.safetensors");
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/make-models.sh)", path.display()))
        .into_iter()
        .collect()
}

/// Our activation at every aliased point, keyed by alias.
fn ours(name: &str, ids: &Tensor) -> BTreeMap<String, Tensor> {
    let mut fm = FlexModel::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap();
    let seen: Arc<Mutex<BTreeMap<String, Tensor>>> = Arc::default();
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in fm.points(1, 1) {
        let all: Vec<String> = p.all_aliases().map(String::from).collect();
        if !all.is_empty() {
            aliases.insert(p.name.clone(), all);
        }
    }
    let sink = seen.clone();
    let hook = FnHook::read_only("capture", move |ctx, t, _| {
        sink.lock()
            .unwrap()
            .insert(ctx.hook_point.clone(), t.copy());
        Ok(())
    });
    let hook = Arc::new(hook);
    for name in aliases.keys() {
        fm.register(hook.clone(), name, &[]).unwrap();
    }
    fm.forward(ids, &Groups::All).unwrap();
    let seen = seen.lock().unwrap();
    let mut out = BTreeMap::new();
    for (point, names) in aliases {
        let t = seen
            .get(&point)
            .unwrap_or_else(|| panic!("{point} did not fire"));
        for a in names {
            out.insert(a, t.shallow_clone());
        }
    }
    out
}

fn check(name: &str) {
    let tl = tl_reference(name);
    let ids = tl["input_ids"].shallow_clone();
    let got = ours(name, &ids);
    let theirs: Vec<&String> = tl.keys().filter(|k| *k != "input_ids").collect();
    let mine: Vec<&String> = got.keys().filter(|k| *k != "logits").collect();
    assert_eq!(
        mine, theirs,
        "{name}: our aliases vs TransformerLens' hooks"
    );
    for (alias, want) in tl.iter().filter(|(k, _)| *k != "input_ids") {
        let have = &got[alias];
        assert_eq!(have.size(), want.size(), "{name}: shape of {alias}");
        let (have, want) = if alias.ends_with("hook_attn_scores") {
            // TransformerLens masks with -inf, transformers (and we) with the
            // dtype's minimum: compare where TL attends, and check we mask
            // exactly where it does.
            let masked = want.isinf();
            assert!(
                have.masked_select(&masked).max().double_value(&[]) <= -1e30,
                "{name}: {alias} masks where TransformerLens does"
            );
            (
                have.masked_fill(&masked, 0.0),
                want.masked_fill(&masked, 0.0),
            )
        } else {
            (have.shallow_clone(), want.shallow_clone())
        };
        let d = max_abs(&have, &want);
        assert!(
            d <= 1e-4,
            "{name}: {alias} differs from TransformerLens by {d}"
        );
    }
    assert!(got["logits"].equal(&got["unembed.hook_out"]));
}

#[test]
fn gpt2_aliases_match_transformer_lens() {
    check("gpt2-tl");
}

#[test]
fn llama_aliases_match_transformer_lens() {
    check("llama-tl");
}
