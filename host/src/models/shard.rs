//! What one rank holds of a model under tensor and pipeline parallelism, and
//! the tensor-parallel pieces the architectures share (Megatron-style):
//! vocab-parallel embedding and LM head, column-parallel projections (a slice
//! of the output features, no communication), row-parallel projections (a
//! slice of the input features, then an all-reduce, then the bias once).
//!
//! The models only see the [`TpComm`] trait; the distributed engine
//! implements it over a real communicator (dependencies flow models →
//! distributed).

use std::ops::Range;

use tch::{Kind, Tensor};

use super::error::ModelError;

/// The collectives a tensor-parallel forward needs, over the ranks that share
/// one layer's weights.
pub trait TpComm {
    /// This rank's index in the tensor-parallel group.
    fn rank(&self) -> i64;
    /// Number of ranks in the tensor-parallel group.
    fn size(&self) -> i64;
    /// Elementwise sum over the group; the same bits on every rank.
    fn all_reduce(&self, t: Tensor) -> Result<Tensor, ModelError>;
    /// Megatron's `f`: a replicated tensor entering column-parallel layers.
    /// The identity in the forward; in a backward pass its gradient is the
    /// sum over the group of the ranks' gradients.
    fn copy_to_parallel(&self, t: Tensor) -> Result<Tensor, ModelError> {
        Ok(t)
    }
}

/// No parallelism: one rank holds everything.
pub struct SingleRank;

impl TpComm for SingleRank {
    fn rank(&self) -> i64 {
        0
    }
    fn size(&self) -> i64 {
        1
    }
    fn all_reduce(&self, t: Tensor) -> Result<Tensor, ModelError> {
        Ok(t)
    }
}

/// The part of a model one rank loads and runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Rank in the tensor-parallel group and the group's size.
    pub tp_rank: i64,
    pub tp_size: i64,
    /// Pipeline stage: its index and the number of stages. Stage `i` runs a
    /// contiguous run of layers ([`balanced`] over the layer count); the
    /// first stage also runs the embeddings, the last the final norm and
    /// the LM head.
    pub pp_rank: i64,
    pub pp_size: i64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard::FULL
    }
}

impl Shard {
    /// Everything on one rank.
    pub const FULL: Shard = Shard {
        tp_rank: 0,
        tp_size: 1,
        pp_rank: 0,
        pp_size: 1,
    };

    pub fn is_full(&self) -> bool {
        self.tp_size == 1 && self.pp_size == 1
    }

    /// This rank's `(start, len)` of `n` features split over the TP group.
    pub fn part(&self, n: i64) -> (i64, i64) {
        balanced(n, self.tp_size, self.tp_rank)
    }

    /// The layers this pipeline stage runs, out of `n_layers`.
    pub fn layers(&self, n_layers: i64) -> Range<i64> {
        let (s, l) = balanced(n_layers, self.pp_size, self.pp_rank);
        s..s + l
    }

    pub fn first_stage(&self) -> bool {
        self.pp_rank == 0
    }

    pub fn last_stage(&self) -> bool {
        self.pp_rank == self.pp_size - 1
    }

    /// Check the shard fits a model: `what` (e.g. attention heads, `n` of
    /// them) must split evenly over the TP group; `n_layers` must cover the
    /// pipeline stages.
    pub fn check(&self, heads: &[(&str, i64)], n_layers: i64) -> Result<(), ModelError> {
        if self.tp_size < 1 || self.pp_size < 1 {
            return Err(ModelError::Input(format!(
                "invalid shard: tp {} pp {}",
                self.tp_size, self.pp_size
            )));
        }
        for (what, n) in heads {
            if n % self.tp_size != 0 {
                return Err(ModelError::Input(format!(
                    "tensor parallelism {} does not divide the model's {n} {what}",
                    self.tp_size
                )));
            }
        }
        if n_layers < self.pp_size {
            return Err(ModelError::Input(format!(
                "{} pipeline stages need at least as many layers; the model has {n_layers}",
                self.pp_size
            )));
        }
        Ok(())
    }
}

/// `(start, len)` of part `i` when `n` items are split into `parts`
/// contiguous parts whose sizes differ by at most one (earlier parts larger).
pub fn balanced(n: i64, parts: i64, i: i64) -> (i64, i64) {
    let (q, r) = (n / parts, n % parts);
    let len = q + i64::from(i < r);
    let start = i * q + i.min(r);
    (start, len)
}

/// Vocab-parallel embedding: `table` holds rows `[offset, offset + rows)` of
/// the vocabulary; ids outside give zeros here and are filled in by the rank
/// holding them (all-reduce).
pub(crate) fn embed(
    table: &Tensor,
    ids: &Tensor,
    offset: i64,
    tp: &dyn TpComm,
) -> Result<Tensor, ModelError> {
    if tp.size() == 1 {
        return Ok(Tensor::embedding(table, ids, -1, false, false));
    }
    let rows = table.size()[0];
    let outside = ids.lt(offset).logical_or(&ids.ge(offset + rows));
    let local = (ids - offset).masked_fill(&outside, 0);
    let e =
        Tensor::embedding(table, &local, -1, false, false).masked_fill(&outside.unsqueeze(-1), 0.0);
    tp.all_reduce(e)
}

/// The end of a row-parallel projection: sum the partial products over the
/// group, then add the bias once.
pub(crate) fn reduce_bias(
    partial: Tensor,
    bias: Option<&Tensor>,
    tp: &dyn TpComm,
) -> Result<Tensor, ModelError> {
    let sum = tp.all_reduce(partial)?;
    Ok(match bias {
        Some(b) => sum + b,
        None => sum,
    })
}

/// Whether a stage's input is the token ids (first stage) or the hidden
/// state received from the previous stage.
pub(crate) fn stage_input(
    shard: &Shard,
    hidden: Option<Tensor>,
    batch: i64,
    seq: i64,
    d: i64,
    kind: Kind,
) -> Result<Option<Tensor>, ModelError> {
    match (shard.first_stage(), hidden) {
        (true, None) => Ok(None),
        (true, Some(_)) => Err(ModelError::Input(
            "the first pipeline stage starts from token ids, not a hidden state".into(),
        )),
        (false, None) => Err(ModelError::Input(
            "a later pipeline stage needs the previous stage's hidden state".into(),
        )),
        (false, Some(h)) => {
            if h.size() != [batch, seq, d] || h.kind() != kind {
                return Err(ModelError::Input(format!(
                    "hidden state from the previous stage is {:?} {:?}, expected {:?} {kind:?}",
                    h.size(),
                    h.kind(),
                    [batch, seq, d]
                )));
            }
            Ok(Some(h))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_parts_cover_everything_once() {
        for n in 0..20 {
            for parts in 1..6 {
                let mut next = 0;
                for i in 0..parts {
                    let (s, l) = balanced(n, parts, i);
                    assert_eq!(s, next);
                    next = s + l;
                }
                assert_eq!(next, n);
            }
        }
        assert_eq!(balanced(101, 4, 0), (0, 26));
        assert_eq!(balanced(101, 4, 3), (76, 25));
    }
}
