//! Building blocks shared by the architectures: `nn.Linear`, GPT-2's
//! `Conv1D`, rotary tables, the causal mask and the attention core (explicit
//! scores and pattern when they are hooked, fused otherwise), each computed
//! as transformers does.

use tch::{Device, Kind, Tensor};

use super::error::ModelError;
use super::hook_site::{HookSite, fire};
use super::loader::Loader;
use super::norm::Norm;
use super::shard::{TpComm, reduce_bias};
use super::weight::Weight;

/// `nn.Linear`: weight `[out, in]` (held once, see `weight.rs`), optional bias.
pub(crate) struct Linear {
    pub w: Weight,
    pub b: Option<Tensor>,
}

impl Linear {
    pub fn new(w: Tensor, b: Option<Tensor>) -> Linear {
        Linear {
            w: Weight::new(w, b.as_ref(), false, false),
            b,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(p) = self.w.fast()
            && let Some(y) = super::onednn::linear(x, p)
        {
            return y;
        }
        x.linear(&self.w.plain(), self.b.as_ref())
    }

    /// A row-parallel rank's part: `x @ w.T` without the bias.
    pub fn partial(&self, x: &Tensor) -> Tensor {
        if let Some(p) = self.w.fast()
            && let Some(y) = super::onednn::matmul(x, p)
        {
            return y;
        }
        x.linear::<Tensor>(&self.w.plain(), None)
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

    /// Load `name` (`nn.Linear`, weight `[out, in]`) as the loader's shard
    /// holds it under `par`: whole, a slice of the output features
    /// (column), or of the input features (row; the bias stays whole).
    pub fn load(
        lb: &Loader,
        name: &str,
        i: i64,
        o: i64,
        bias: bool,
        par: Par,
    ) -> Result<Linear, ModelError> {
        let lb = lb.pp(name);
        let (dim, bias_split) = match par {
            Par::Column => (0, true),
            Par::Row => (1, false),
        };
        let w = lb.split("weight", &[o, i], dim, 1)?;
        let b = match (bias, bias_split) {
            (false, _) => None,
            (true, true) => Some(lb.split("bias", &[o], 0, 1)?),
            (true, false) => Some(lb.get("bias", &[o])?),
        };
        Ok(Linear::new(w, b))
    }
}

/// GPT-2's `Conv1D`: `b + x @ w` with the weight stored `[in, out]` (held
/// once, see `weight.rs`).
pub(crate) struct Conv1D {
    pub w: Weight,
    pub b: Tensor,
}

impl Conv1D {
    fn new(w: Tensor, b: Tensor) -> Conv1D {
        Conv1D {
            w: Weight::new(w, Some(&b), true, false),
            b,
        }
    }

    /// Load `name` (`[i, o]`) as the loader's shard holds it: column-parallel
    /// splits `o` (dim 1, each of `sections` sections, e.g. q | k | v),
    /// row-parallel splits `i` (dim 0; the bias stays whole).
    pub fn load(
        lb: &Loader,
        name: &str,
        i: i64,
        o: i64,
        sections: i64,
        par: Par,
    ) -> Result<Conv1D, ModelError> {
        let lb = lb.pp(name);
        Ok(match par {
            Par::Column => Conv1D::new(
                lb.split("weight", &[i, o], 1, sections)?,
                lb.split("bias", &[o], 0, sections)?,
            ),
            Par::Row => Conv1D::new(lb.split("weight", &[i, o], 0, 1)?, lb.get("bias", &[o])?),
        })
    }

    /// `b + x @ w` in one `addmm`, as Conv1D does (no separate bias pass).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(p) = self.w.fast()
            && let Some(y) = super::onednn::linear(x, p)
        {
            return y;
        }
        let w = self.w.plain();
        let mut shape = x.size();
        let inner = shape.pop().unwrap_or(0);
        shape.push(w.size()[1]);
        self.b
            .addmm(&x.reshape([-1, inner]), &w)
            .view(shape.as_slice())
    }

    /// `x @ w` without the bias (a row-parallel part, summed across ranks).
    fn partial(&self, x: &Tensor) -> Tensor {
        if let Some(p) = self.w.fast()
            && let Some(y) = super::onednn::matmul(x, p)
        {
            return y;
        }
        x.matmul(&self.w.plain())
    }

    /// The whole projection under tensor parallelism (see `Linear::forward_tp`).
    pub fn forward_tp(&self, x: &Tensor, par: Par, tp: &dyn TpComm) -> Result<Tensor, ModelError> {
        if par == Par::Row && tp.size() > 1 {
            reduce_bias(self.partial(x), Some(&self.b), tp)
        } else {
            Ok(self.forward(x))
        }
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

/// The hook points inside the attention core: the scaled, masked scores
/// before the softmax and the pattern after it (`[batch, head, query,
/// key]`).
pub(crate) struct CorePoints<'a> {
    pub scores: &'a str,
    pub pattern: &'a str,
}

/// Attention of `q`, `k`, `v` (`[batch, heads, seq, head]`, k/v already
/// repeated to the query heads). When something hooks the scores or the
/// pattern they are materialised and fired, as transformers' eager path
/// computes them (masked scores hold the dtype's minimum); otherwise a fused
/// kernel runs. `explicit`: `mask` holds more than square causality (a
/// sliding window, or queries after cached positions).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scaling: f64,
    mask: &Tensor,
    explicit: bool,
    hooks: &mut dyn HookSite,
    points: &CorePoints<'_>,
) -> Result<Tensor, ModelError> {
    if hooks.active(points.scores) || hooks.active(points.pattern) {
        let scores = q.matmul(&k.transpose(-1, -2)) * scaling;
        let scores = scores.masked_fill(mask, super::mask_value(scores.kind()));
        let scores = fire(hooks, points.scores, scores)?;
        let pattern = scores.softmax(-1, Kind::Float).to_kind(v.kind());
        let pattern = fire(hooks, points.pattern, pattern)?;
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
        self.add(format!("{name}.weight"), &l.w.plain());
        if let Some(b) = &l.b {
            self.add(format!("{name}.bias"), b);
        }
    }
    pub fn conv1d(&mut self, name: &str, l: &Conv1D) {
        self.add(format!("{name}.weight"), &l.w.plain());
        self.add(format!("{name}.bias"), &l.b);
    }
    pub fn norm(&mut self, name: &str, n: &Norm) {
        self.add(format!("{name}.weight"), n.weight());
        if let Some(b) = n.bias() {
            self.add(format!("{name}.bias"), b);
        }
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
