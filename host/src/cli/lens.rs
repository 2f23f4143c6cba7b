//! The logit lens: each layer's residual stream at the last token read out
//! through the model's final norm and LM head (`Model::unembed`), as if the
//! model ended there.

use anyhow::{Result, anyhow};
use flexmodel::models::{Model, Tokenizer};
use tch::{Kind, Tensor};

/// One layer's reading.
pub struct Layer {
    pub layer: usize,
    /// The most likely next token and its probability.
    pub top: (String, f64),
    /// The target token's probability and rank (0 = top).
    pub p_target: f64,
    pub rank: i64,
}

/// The lens over `resid` (layer -> `[1, 1, d]` or `[1, d]`, in layer
/// order) for the `target` token id.
pub fn read(model: &Model, resid: &[Tensor], target: i64, tok: &Tokenizer) -> Result<Vec<Layer>> {
    resid
        .iter()
        .enumerate()
        .map(|(layer, h)| {
            let logits = model.unembed(&h.reshape([1, -1]))?;
            let p = logits.get(0).to_kind(Kind::Float).softmax(-1, Kind::Float);
            let top = p.argmax(0, false).int64_value(&[]);
            let p_target = p.double_value(&[target]);
            let rank = p.gt(p_target).sum(Kind::Int64).int64_value(&[]);
            Ok(Layer {
                layer,
                top: (tok.token(top), p.double_value(&[top])),
                p_target,
                rank,
            })
        })
        .collect()
}

/// The first token of `text` (e.g. " Paris").
pub fn token_of(tok: &Tokenizer, text: &str) -> Result<i64> {
    tok.encode(text)?
        .first()
        .copied()
        .ok_or_else(|| anyhow!("{text:?} tokenizes to nothing"))
}

pub fn print(layers: &[Layer], target: &str) {
    println!(
        "{:<6} {:<16} {:>8} {:>12} {:>6}",
        "layer",
        "top token",
        "p(top)",
        format!("p({target:?})"),
        "rank"
    );
    for l in layers {
        println!(
            "{:<6} {:<16} {:>8.3} {:>12.4} {:>6}",
            l.layer,
            format!("{:?}", l.top.0),
            l.top.1,
            l.p_target,
            l.rank
        );
    }
    match layers.iter().find(|l| l.rank == 0) {
        Some(l) => println!(
            "{target:?} is the top prediction from layer {} on",
            first_top(layers).unwrap_or(l.layer)
        ),
        None => println!("{target:?} is never the top prediction"),
    }
}

/// The layer from which the target stays the top prediction to the end.
pub fn first_top(layers: &[Layer]) -> Option<usize> {
    let mut first = None;
    for l in layers {
        match (l.rank == 0, first) {
            (true, None) => first = Some(l.layer),
            (false, _) => first = None,
            _ => {}
        }
    }
    first
}
