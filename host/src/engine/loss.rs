//! The scalar a backward pass differentiates, and gradients of it.

use tch::{Kind, Tensor};

use super::FlexError;
use crate::models::ModelError;

/// The scalar a backward pass differentiates.
#[derive(Debug)]
pub enum Loss {
    /// Mean cross-entropy of the logits against `targets` (`[batch, seq]`
    /// token ids), as `torch.nn.functional.cross_entropy`.
    CrossEntropy { targets: Tensor },
    /// Mean over the batch of `logits[:, position, plus] -
    /// logits[:, position, minus]` (a logit difference).
    LogitDiff {
        position: i64,
        plus: i64,
        minus: i64,
    },
}

impl Loss {
    fn with_targets(&self, f: impl Fn(&Tensor) -> Tensor) -> Loss {
        match self {
            Loss::CrossEntropy { targets } => Loss::CrossEntropy {
                targets: f(targets),
            },
            Loss::LogitDiff {
                position,
                plus,
                minus,
            } => Loss::LogitDiff {
                position: *position,
                plus: *plus,
                minus: *minus,
            },
        }
    }

    /// The same loss over rows `start .. start + len` of the batch.
    pub(crate) fn rows(&self, start: i64, len: i64) -> Loss {
        self.with_targets(|t| t.narrow(0, start, len))
    }

    /// A copy that owns its targets (for another thread).
    pub(crate) fn deep_copy(&self) -> Loss {
        self.with_targets(Tensor::copy)
    }
}

pub(crate) fn loss_of(logits: &Tensor, loss: &Loss) -> Result<Tensor, FlexError> {
    let size = logits.size();
    let (b, s, v) = (size[0], size[1], size[2]);
    match loss {
        Loss::CrossEntropy { targets } => {
            if targets.size() != [b, s] || targets.kind() != Kind::Int64 {
                return Err(FlexError::Input(format!(
                    "targets must be int64 [{b}, {s}], got {:?} {:?}",
                    targets.kind(),
                    targets.size()
                )));
            }
            let t = targets.to_device(logits.device());
            let (lo, hi) = (t.min().int64_value(&[]), t.max().int64_value(&[]));
            if lo < 0 || hi >= v {
                return Err(FlexError::Input(format!("targets must be in 0..{v}")));
            }
            Ok(logits
                .view([-1, v])
                .to_kind(Kind::Float)
                .cross_entropy_for_logits(&t.view([-1])))
        }
        Loss::LogitDiff {
            position,
            plus,
            minus,
        } => {
            let p = if *position < 0 {
                position + s
            } else {
                *position
            };
            if p < 0 || p >= s || *plus < 0 || *plus >= v || *minus < 0 || *minus >= v {
                return Err(FlexError::Input(format!(
                    "logit difference at position {position} between tokens {plus} and {minus} \
                     is outside [{b}, {s}, {v}]"
                )));
            }
            let at = logits.select(1, p).to_kind(Kind::Float);
            Ok((at.select(1, *plus) - at.select(1, *minus)).mean(Kind::Float))
        }
    }
}

/// Gradients of `roots` (summed) with respect to `inputs`, added into `acc`.
pub(crate) fn accumulate(
    roots: &[&Tensor],
    inputs: &[Tensor],
    acc: &mut [Option<Tensor>],
) -> Result<(), FlexError> {
    if inputs.is_empty() {
        return Ok(());
    }
    let grads = Tensor::f_run_backward(roots, inputs, true, false)
        .map_err(|e| FlexError::Model(ModelError::Torch(e)))?;
    for (slot, g) in acc.iter_mut().zip(grads) {
        if g.defined() {
            *slot = Some(match slot.take() {
                Some(a) => a + g,
                None => g,
            });
        }
    }
    Ok(())
}
