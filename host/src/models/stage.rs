//! What every architecture's stage shares: the prologue (the batch and
//! sequence of the ids, the positions already cached, the input: the
//! previous stage's hidden state or the ids to embed) and the LM head at the
//! end of the last stage (final norm, then the logits over this rank's
//! vocabulary slice).

use tch::{Device, Kind, Tensor};

use super::cache::KvCache;
use super::error::ModelError;
use super::hook_site::{HookSite, fire};
use super::layers::Params;
use super::norm::{Norm, NormPoints};
use super::pack::{Pack, pack, unpack};
use super::shard::{Shard, TpComm, stage_input};
use super::weight::Weight;

/// One step through a stage, as its components see it.
pub(crate) struct Step<'a> {
    pub hooks: &'a mut dyn HookSite,
    pub tp: &'a dyn TpComm,
    pub cache: Option<&'a mut KvCache>,
    /// Batch rows, new positions.
    pub b: i64,
    pub s: i64,
    /// True where a query may not attend: causality (and a sliding
    /// window), and padded keys of a padded batch; `[s, start + s]`, or
    /// `[b, 1, s, start + s]` when padded.
    pub mask: Tensor,
    /// Each token's position, `[1, s]` (`start..start + s`) or, in a padded
    /// batch, `[b, s]` counted over the row's real tokens (absolute
    /// positions for learned embeddings, rotary offsets).
    pub positions: Tensor,
    /// The mask holds more than square causality (cached positions,
    /// padding): the attention takes it explicitly.
    pub explicit: bool,
    /// Rotary `(cos, sin)` tables of these positions (rotary models).
    pub rope: Option<(Tensor, Tensor)>,
    /// The step's real tokens when its new positions hold padding: the
    /// position-wise layers then run on them only (see `pack.rs`).
    pub pack: Option<Pack>,
}

impl Step<'_> {
    /// `[b, s, ...]` → the stage's layout (`[tokens, ...]` when packed).
    pub fn pack(&self, x: Tensor) -> Tensor {
        pack(self.pack.as_ref(), x)
    }

    /// The stage's layout → `[b, s, ...]` (the attention core's).
    pub fn unpack(&self, x: Tensor) -> Tensor {
        unpack(self.pack.as_ref(), x)
    }
}

/// The mask and positions of a step of `s` tokens after `start` cached
/// ones. `valid`: which of the `start + s` key positions hold real tokens
/// (`[b, start + s]`, nonzero = real; `None`: all), as transformers'
/// `attention_mask`. A padded query (whose keys would all be masked under
/// left padding) may attend to itself, so no row is empty and no NaN
/// appears anywhere; real queries never attend to padding.
pub(crate) fn masks(
    valid: Option<&Tensor>,
    (b, s, start): (i64, i64, i64),
    window: Option<i64>,
    device: Device,
) -> Result<(Tensor, Tensor, bool), ModelError> {
    let causal = super::layers::causal_mask(start, s, window, device);
    let Some(valid) = valid else {
        let positions = Tensor::arange_start(start, start + s, (Kind::Int64, device)).unsqueeze(0);
        return Ok((causal, positions, start > 0));
    };
    if valid.size() != [b, start + s] {
        return Err(ModelError::Input(format!(
            "attention mask must be [{b}, {}] (batch, cached + new positions), got {:?}",
            start + s,
            valid.size()
        )));
    }
    let real = valid.to_device(device).ne(0);
    let positions = (real.to_kind(Kind::Int64).cumsum(-1, Kind::Int64) - 1)
        .clamp_min(0)
        .narrow(1, start, s);
    let q = Tensor::arange_start(start, start + s, (Kind::Int64, device)).unsqueeze(1);
    let k = Tensor::arange(start + s, (Kind::Int64, device)).unsqueeze(0);
    let own = k.eq_tensor(&q);
    let mask = causal
        .unsqueeze(0)
        .unsqueeze(0)
        .logical_or(&real.logical_not().unsqueeze(1).unsqueeze(1))
        .logical_and(&own.logical_not());
    Ok((mask, positions, true))
}

/// The start of a stage: `(batch, seq, start)` of `input_ids` after the
/// cached positions (at most `max_positions` in all), and the previous
/// stage's hidden state (`None` on the first stage, which embeds the ids).
#[allow(clippy::too_many_arguments)]
pub(crate) fn prologue(
    shard: &Shard,
    input_ids: &Tensor,
    hidden: Option<Tensor>,
    cache: &Option<&mut KvCache>,
    width: i64,
    kind: Kind,
    device: Device,
    max_positions: Option<i64>,
) -> Result<(i64, i64, i64, Option<Tensor>), ModelError> {
    let size = input_ids.size();
    let [b, s] = size[..] else {
        return Err(ModelError::Input(format!(
            "input_ids must be [batch, seq], got {size:?}"
        )));
    };
    let start = cache.as_ref().map_or(0, |c| c.len());
    if let Some(max) = max_positions
        && start + s > max
    {
        return Err(ModelError::Input(format!(
            "sequence of {} tokens exceeds the model's {max} positions",
            start + s
        )));
    }
    let hidden = stage_input(shard, hidden, b, s, width, kind)?.map(|h| h.to_device(device));
    Ok((b, s, start, hidden))
}

/// Where the LM head fires its points.
pub(crate) struct HeadPoints<'a> {
    pub norm: NormPoints<'a>,
    /// The final norm's output (TransformerLens' `unembed.hook_in`).
    pub normed: &'a str,
    /// The logits (`unembed.hook_out`).
    pub logits: &'a str,
}

/// The final norm and the LM head (this rank's rows of the vocabulary).
pub(crate) struct Head {
    pub norm: Norm,
    pub weight: Weight,
}

impl Head {
    /// `tied`: the weight is the embedding table (kept plain for the lookup).
    pub fn new(norm: Norm, weight: Tensor, tied: bool) -> Head {
        Head {
            norm,
            weight: Weight::new(weight, None, false, tied),
        }
    }

    /// The head's parameters: the final norm's, and the LM head's unless it
    /// is `embed`, listed already; a later stage's tied head is listed as
    /// the embedding's parameter `embed_name`.
    pub fn parameters(
        &self,
        p: &mut Params,
        norm_name: &str,
        embed_name: &str,
        tied: bool,
        embed: Option<&Tensor>,
    ) {
        p.norm(norm_name, &self.norm);
        if tied && embed.is_none() {
            p.add(embed_name, &self.weight.plain());
        } else {
            p.head("lm_head.weight", Some(&self.weight.plain()), embed);
        }
    }

    /// This rank's columns of the logits (all of them on one rank). The
    /// logits point is split along the vocabulary; whoever needs whole
    /// logits gathers them (the engine, at TP rank 0 only).
    pub fn forward(
        &self,
        x: &Tensor,
        hooks: &mut dyn HookSite,
        tp: &dyn TpComm,
        points: &HeadPoints<'_>,
    ) -> Result<Tensor, ModelError> {
        let x = self.norm.forward(x, hooks, &points.norm)?;
        let x = fire(hooks, points.normed, x)?;
        let x = tp.copy_to_parallel(x)?;
        let logits = match self
            .weight
            .fast()
            .and_then(|p| super::onednn::linear(&x, p))
        {
            Some(l) => l,
            None => x.matmul(&self.weight.plain().tr()),
        };
        fire(hooks, points.logits, logits)
    }
}

/// The end of a stage after its blocks: the step recorded in the cache, then
/// the LM head on the last stage (elsewhere `x` goes on to the next stage),
/// back in the padded layout.
pub(crate) fn finish(
    x: Tensor,
    st: Step<'_>,
    head: Option<&Head>,
    points: &HeadPoints<'_>,
) -> Result<Tensor, ModelError> {
    if let Some(c) = st.cache {
        c.advance(st.s);
    }
    let out = match head {
        Some(h) => h.forward(&x, st.hooks, st.tp, points)?,
        None => x,
    };
    Ok(unpack(st.pack.as_ref(), out))
}

/// The points of a pre-norm block (GPT-2, LLaMA): residual in, first norm,
/// attention, residual between, second norm, MLP, residual out.
pub(crate) struct PreNormPoints<'a> {
    pub resid_pre: &'a str,
    pub ln1: NormPoints<'a>,
    pub ln1_out: &'a str,
    pub attn: &'a str,
    pub resid_mid: &'a str,
    pub ln2: NormPoints<'a>,
    pub ln2_out: &'a str,
    pub mlp: &'a str,
    pub resid_post: &'a str,
}

/// `x + attn(ln1(x))`, then `+ mlp(ln2(·))`, firing `p`'s points.
pub(crate) fn pre_norm_block(
    x: Tensor,
    st: &mut Step<'_>,
    p: &PreNormPoints<'_>,
    norms: (&Norm, &Norm),
    attn: impl FnOnce(Tensor, &mut Step<'_>) -> Result<Tensor, ModelError>,
    mlp: impl FnOnce(Tensor, &mut Step<'_>) -> Result<Tensor, ModelError>,
) -> Result<Tensor, ModelError> {
    let resid_pre = fire(st.hooks, p.resid_pre, x)?;
    let h = norms.0.forward(&resid_pre, st.hooks, &p.ln1)?;
    let h = fire(st.hooks, p.ln1_out, h)?;
    let a = attn(h, st)?;
    let a = fire(st.hooks, p.attn, a)?;
    let resid_mid = fire(st.hooks, p.resid_mid, resid_pre + a)?;
    let h = norms.1.forward(&resid_mid, st.hooks, &p.ln2)?;
    let h = fire(st.hooks, p.ln2_out, h)?;
    let m = mlp(h, st)?;
    let m = fire(st.hooks, p.mlp, m)?;
    fire(st.hooks, p.resid_post, resid_mid + m)
}
