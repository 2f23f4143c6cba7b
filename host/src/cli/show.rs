//! Printing predictions and saving results.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use flexmodel::models::Tokenizer;
use tch::{Kind, Tensor};

pub fn top_k(logits: &Tensor, k: i64, tok: Option<&Tokenizer>) -> Vec<(String, f64)> {
    let last = logits
        .select(0, 0)
        .select(0, -1)
        .to_kind(Kind::Float)
        .softmax(-1, Kind::Float);
    let (p, i) = last.topk(k.min(last.size()[0]), -1, true, true);
    (0..p.size()[0])
        .map(|j| {
            let id = i.int64_value(&[j]);
            let text = tok.map(|t| t.token(id)).unwrap_or_else(|| format!("#{id}"));
            (text, p.double_value(&[j]))
        })
        .collect()
}

pub fn show(preds: &[(String, f64)]) -> String {
    preds
        .iter()
        .map(|(t, p)| format!("{t:?} {:.3}", p))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Save `tensors` as safetensors, recording in the file's metadata which
/// plugin emitted each output (`flexmodel.producer.<key>`).
pub fn save(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    producers: &BTreeMap<String, String>,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    flexmodel::api::save_safetensors_with(path, tensors, producers, extra)
        .with_context(|| format!("writing {}", path.display()))
}
