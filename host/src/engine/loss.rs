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

    /// This replica's share of the whole batch's loss (rows `start ..
    /// start + rows` of a batch of `b` rows with `mask`): its share of the
    /// real tokens for a cross-entropy, of the rows for a logit difference.
    pub(crate) fn weight(&self, mask: Option<&Tensor>, b: i64, start: i64, rows: i64) -> f64 {
        match (self, mask) {
            (Loss::CrossEntropy { .. }, Some(m)) => {
                let all = m.sum(Kind::Float).double_value(&[]);
                let mine = m.narrow(0, start, rows).sum(Kind::Float).double_value(&[]);
                if all > 0.0 { mine / all } else { 0.0 }
            }
            _ => rows as f64 / b.max(1) as f64,
        }
    }

    /// A copy that owns its targets (for another thread).
    pub(crate) fn deep_copy(&self) -> Loss {
        self.with_targets(Tensor::copy)
    }
}

/// The loss of `logits` (`[batch, seq, vocab]`); `valid`: a padded
/// batch's real positions (`[batch, seq]`): a cross-entropy averages over
/// real tokens only, a logit difference's `position` counts real tokens
/// (`-1`: each row's last).
pub(crate) fn loss_of(
    logits: &Tensor,
    loss: &Loss,
    valid: Option<&Tensor>,
) -> Result<Tensor, FlexError> {
    let size = logits.size();
    let (b, s, v) = (size[0], size[1], size[2]);
    let device = logits.device();
    let real = valid.map(|m| m.to_device(device).ne(0));
    match loss {
        Loss::CrossEntropy { targets } => {
            if targets.size() != [b, s] || targets.kind() != Kind::Int64 {
                return Err(FlexError::Input(format!(
                    "targets must be int64 [{b}, {s}], got {:?} {:?}",
                    targets.kind(),
                    targets.size()
                )));
            }
            let t = targets.to_device(device);
            let (checked, t) = match &real {
                Some(r) => (
                    t.masked_fill(&r.logical_not(), 0),
                    t.masked_fill(&r.logical_not(), -100),
                ),
                None => (t.shallow_clone(), t),
            };
            let (lo, hi) = (
                checked.min().int64_value(&[]),
                checked.max().int64_value(&[]),
            );
            if lo < 0 || hi >= v {
                return Err(FlexError::Input(format!("targets must be in 0..{v}")));
            }
            Ok(logits
                .view([-1, v])
                .to_kind(Kind::Float)
                .cross_entropy_loss::<Tensor>(&t.view([-1]), None, tch::Reduction::Mean, -100, 0.0))
        }
        Loss::LogitDiff {
            position,
            plus,
            minus,
        } => {
            let bad = || {
                FlexError::Input(format!(
                    "logit difference at position {position} between tokens {plus} and {minus} \
                     is outside [{b}, {s}, {v}]"
                ))
            };
            if *plus < 0 || *plus >= v || *minus < 0 || *minus >= v {
                return Err(bad());
            }
            let at = match &real {
                None => {
                    let p = if *position < 0 {
                        position + s
                    } else {
                        *position
                    };
                    if p < 0 || p >= s {
                        return Err(bad());
                    }
                    logits.select(1, p)
                }
                Some(r) => {
                    // Real tokens are contiguous in each row: first + k.
                    let r = r.to_kind(Kind::Int64);
                    let len = r.sum_dim_intlist(1, false, Kind::Int64);
                    let first = r.argmax(1, false);
                    let k = if *position < 0 {
                        &len + *position
                    } else {
                        len.zeros_like() + *position
                    };
                    let out = k.lt(0).logical_or(&k.ge_tensor(&len));
                    if out.any().int64_value(&[]) != 0 {
                        return Err(bad());
                    }
                    let idx = (first + k).view([b, 1, 1]).expand([b, 1, v], false);
                    logits.gather(1, &idx, false).squeeze_dim(1)
                }
            };
            let at = at.to_kind(Kind::Float);
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
