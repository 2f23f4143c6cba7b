//! Building blocks shared by the architectures: `nn.Linear`, `nn.LayerNorm`,
//! rotary tables, the causal mask and the attention core (explicit pattern
//! when it is hooked, fused otherwise), each computed as transformers does.

use tch::{Device, Kind, Tensor};

use super::error::ModelError;
use super::hook_site::{HookSite, fire};
use super::shard::{Shard, TpComm, reduce_bias};
use super::weights::Weights;

/// `nn.Linear`: weight `[out, in]`, optional bias.
pub(crate) struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
    /// The same in oneDNN's layout (f32 on CPU), see `onednn`.
    pub packed: Option<super::onednn::Packed>,
}

impl Linear {
    pub fn new(w: Tensor, b: Option<Tensor>) -> Linear {
        let packed = super::onednn::pack(&w, b.as_ref());
        Linear { w, b, packed }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(p) = &self.packed
            && !self.w.requires_grad()
            && let Some(y) = super::onednn::linear(x, p)
        {
            return y;
        }
        x.linear(&self.w, self.b.as_ref())
    }

    /// A row-parallel rank's part: `x @ w.T` without the bias.
    pub fn partial(&self, x: &Tensor) -> Tensor {
        if let Some(p) = &self.packed
            && !self.w.requires_grad()
            && let Some(y) = super::onednn::matmul(x, p)
        {
            return y;
        }
        x.linear::<Tensor>(&self.w, None)
    }

    /// The whole projection under tensor parallelism: column-parallel and
    /// unsharded layers run locally, a row-parallel one sums its partial
    /// products over the group and adds the bias once.
    pub fn forward_tp(&self, x: &Tensor, par: Par, tp: &dyn TpComm) -> Result<Tensor, ModelError> {
        if par == Par::Row && tp.size() > 1 {
            reduce_bias(self.partial(x), self.b.as_ref(), tp)
        } else {
            Ok(self.forward(x))
        }
    }

    /// Load `name` (`nn.Linear`, weight `[out, in]`) as `shard` holds it
    /// under `par`: whole, a slice of the output features (column), or of the
    /// input features (row; the bias stays whole).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &Weights,
        name: &str,
        i: i64,
        o: i64,
        bias: bool,
        par: Par,
        shard: &Shard,
        kind: Kind,
        device: Device,
        needed_by: &str,
    ) -> Result<Linear, ModelError> {
        let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
        let whole = |n: &str, shape: &[i64]| w.get_shaped(n, shape, kind, device, needed_by);
        let part = |n: &str, shape: &[i64], dim: usize, (s, l): (i64, i64)| {
            w.get_part(n, shape, dim, s, l, kind, device, needed_by)
        };
        let (weight, b) = match (par, shard.tp_size) {
            (_, 1) => (
                whole(&wn, &[o, i])?,
                bias.then(|| whole(&bn, &[o])).transpose()?,
            ),
            (Par::Column, _) => (
                part(&wn, &[o, i], 0, shard.part(o))?,
                bias.then(|| part(&bn, &[o], 0, shard.part(o)))
                    .transpose()?,
            ),
            (Par::Row, _) => (
                part(&wn, &[o, i], 1, shard.part(i))?,
                bias.then(|| whole(&bn, &[o])).transpose()?,
            ),
        };
        Ok(Linear::new(weight, b))
    }
}

/// How a projection is split over a tensor-parallel group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Par {
    /// Output features split; the output is split along its last dimension.
    Column,
    /// Input features split; partial outputs are summed over the group.
    Row,
}

/// `nn.LayerNorm` over the last dimension.
pub(crate) struct LayerNorm {
    pub w: Tensor,
    pub b: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let d = *x.size().last().unwrap_or(&0);
        x.layer_norm([d], Some(&self.w), Some(&self.b), self.eps, false)
    }
}

/// `rotate_half` of transformers' rotary embeddings (last dimension, rank 4).
pub(crate) fn rotate_half(x: &Tensor) -> Tensor {
    let h = x.size()[3] / 2;
    Tensor::cat(&[-x.narrow(3, h, h), x.narrow(3, 0, h)], 3)
}

/// `(cos, sin)`, each `[1, 1, seq, 2 * len(inv_freq)]`, for positions
/// `start..start + seq`: float32 angles, then the model's dtype.
pub(crate) fn rope_tables(
    inv_freq: &Tensor,
    start: i64,
    seq: i64,
    kind: Kind,
    device: Device,
) -> (Tensor, Tensor) {
    let pos = Tensor::arange_start(start, start + seq, (Kind::Float, device)).unsqueeze(0);
    let freqs = pos.unsqueeze(-1) * inv_freq.unsqueeze(0).unsqueeze(0);
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    (
        emb.cos().to_kind(kind).unsqueeze(1),
        emb.sin().to_kind(kind).unsqueeze(1),
    )
}

/// Causal mask `[seq, start + seq]` for queries at positions
/// `start..start + seq` over keys at `0..start + seq`, true where a query may
/// NOT attend; with a sliding `window`, keys older than `window` positions
/// are masked too.
pub(crate) fn causal_mask(start: i64, seq: i64, window: Option<i64>, device: Device) -> Tensor {
    let q = Tensor::arange_start(start, start + seq, (Kind::Int64, device)).unsqueeze(1);
    let k = Tensor::arange(start + seq, (Kind::Int64, device)).unsqueeze(0);
    let mask = k.gt_tensor(&q);
    match window {
        Some(w) => mask.logical_or(&k.le_tensor(&(&q - w))),
        None => mask,
    }
}

/// Attention of `q`, `k`, `v` (`[batch, heads, seq, head]`, k/v already
/// repeated to the query heads). When something hooks one of `pattern_points`
/// (the post-softmax pattern, then e.g. the attention-dropout module, which is
/// the identity in eval) the pattern is materialised and fired at each, as
/// transformers' eager path computes it; otherwise a fused kernel runs.
/// `explicit`: `mask` holds more than square causality (a sliding window, or
/// queries after cached positions).
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scaling: f64,
    mask: &Tensor,
    explicit: bool,
    hooks: &mut dyn HookSite,
    pattern_points: &[&str],
) -> Result<Tensor, ModelError> {
    if pattern_points.iter().any(|p| hooks.active(p)) {
        let scores = q.matmul(&k.transpose(-1, -2)) * scaling;
        let scores = scores.masked_fill(mask, super::mask_value(scores.kind()));
        let mut pattern = scores.softmax(-1, Kind::Float).to_kind(v.kind());
        for p in pattern_points {
            pattern = fire(hooks, p, pattern)?;
        }
        Ok(pattern.matmul(v))
    } else if explicit {
        // Fused, with the mask inverted to SDPA's convention (true = attend).
        Ok(Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            Some(mask.logical_not()),
            0.0,
            false,
            scaling,
            false,
        ))
    } else {
        Ok(Tensor::scaled_dot_product_attention::<Tensor>(
            q, k, v, None, 0.0, true, scaling, false,
        ))
    }
}

/// Named parameters, as in the checkpoint (shallow handles to the model's
/// tensors).
#[derive(Default)]
pub(crate) struct Params(pub Vec<(String, Tensor)>);

impl Params {
    pub fn add(&mut self, name: impl Into<String>, t: &Tensor) {
        self.0.push((name.into(), t.shallow_clone()));
    }
    pub fn linear(&mut self, name: &str, l: &Linear) {
        self.add(format!("{name}.weight"), &l.w);
        if let Some(b) = &l.b {
            self.add(format!("{name}.bias"), b);
        }
    }
    pub fn layer_norm(&mut self, name: &str, l: &LayerNorm) {
        self.add(format!("{name}.weight"), &l.w);
        self.add(format!("{name}.bias"), &l.b);
    }
    /// The LM head unless it is the embedding itself (tied).
    pub fn head(&mut self, name: &str, head: Option<&Tensor>, embed: Option<&Tensor>) {
        if let Some(h) = head
            && embed.is_none_or(|e| e.data_ptr() != h.data_ptr())
        {
            self.add(name, h);
        }
    }
}
