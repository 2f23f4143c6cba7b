//! Backward passes with hooks on gradients (single rank).
//!
//! The forward runs with autograd recording. At every hook point with a
//! backward hook the activation is cut: the rest of the forward continues
//! from a fresh leaf `a'` (same values). The backward then runs segment by
//! segment, from the loss down, in reverse forward order: the gradient
//! accumulated on a cut's leaf is complete once every later segment has been
//! differentiated; the backward hooks see it (and may edit it), and it is
//! propagated through the segment that produced the activation
//! (`∂(a · g)/∂·`). Parameter gradients accumulate over all segments. This
//! is what tensor hooks (`register_hook`) do in PyTorch.
//!
//! Forward hooks also run; their edits count as constants in the backward
//! pass (the gradient passes straight through an edit), since a plugin's
//! edit is not differentiable from the host.

use std::collections::{BTreeMap, HashSet};

use tch::{Kind, Tensor};

use super::site::Site;
use super::{FlexError, Groups, Registration, model_error};
use crate::hooks::{LogLevel, RankInfo};
use crate::models::{HookSite, ModelError};

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

/// What a backward pass returns.
#[derive(Debug)]
pub struct BackwardOutput {
    pub loss: f64,
    /// The forward's logits (detached).
    pub logits: Tensor,
    /// What forward hooks emitted.
    pub outputs: BTreeMap<String, Tensor>,
    /// What backward hooks emitted (gradients), by their keys.
    pub grad_outputs: BTreeMap<String, Tensor>,
    /// Gradient of every parameter (checkpoint names), after the backward
    /// hooks' edits.
    pub param_grads: BTreeMap<String, Tensor>,
    /// Who emitted each entry of `outputs`.
    pub producers: BTreeMap<String, String>,
    /// Who emitted each entry of `grad_outputs`.
    pub grad_producers: BTreeMap<String, String>,
    pub logs: Vec<(String, String, LogLevel, String)>,
}

/// The forward site of a backward pass: forward hooks (edits straight
/// through) and the cuts at backward-hooked points.
struct CutSite<'a> {
    forward: Site<'a>,
    backward_points: HashSet<String>,
    /// (point, activation as computed, leaf the forward continued from)
    cuts: Vec<(String, Tensor, Tensor)>,
}

impl HookSite for CutSite<'_> {
    fn active(&self, point: &str) -> bool {
        self.forward.hooked(point) || self.backward_points.contains(point)
    }

    fn fire(&mut self, point: &str, t: Tensor) -> Result<Tensor, ModelError> {
        let t = if self.forward.hooked(point) {
            let copy = t.detach().copy();
            let (edited, changed) = self
                .forward
                .run_hooks(point, copy)
                .map_err(|e| ModelError::Hook(Box::new(e)))?;
            if changed {
                // The edit's values, the identity's gradient.
                &t + (edited - t.detach())
            } else {
                t
            }
        } else {
            t
        };
        if !self.backward_points.contains(point) {
            return Ok(t);
        }
        let leaf = t.detach().set_requires_grad(true);
        self.cuts.push((point.to_string(), t, leaf.shallow_clone()));
        Ok(leaf)
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

pub(crate) fn run(
    model: &crate::models::Model,
    regs: &[Registration],
    groups: &Groups,
    index: u64,
    ids: &Tensor,
    loss: &Loss,
) -> Result<BackwardOutput, FlexError> {
    let backward_points: HashSet<String> = regs
        .iter()
        .filter(|r| r.backward && groups.enables(&r.groups))
        .flat_map(|r| r.points.iter().cloned())
        .collect();
    let params = model.parameters();
    for (_, p) in &params {
        let _ = p.set_requires_grad(true);
    }
    let result = (|| {
        let mut site = CutSite {
            forward: Site::new(regs, groups, index, None, RankInfo::SINGLE),
            backward_points,
            cuts: Vec::new(),
        };
        let logits = model
            .forward_with_grad(ids, &mut site)
            .map_err(|e| model_error(e, std::mem::take(&mut site.forward.outputs)))?;
        let l = loss_of(&logits, loss)?;
        let loss_value = l.double_value(&[]);
        let n_cuts = site.cuts.len();
        // Inputs: the cuts' leaves, then the parameters.
        let mut inputs: Vec<Tensor> = site.cuts.iter().map(|c| c.2.shallow_clone()).collect();
        inputs.extend(params.iter().map(|(_, p)| p.shallow_clone()));
        let mut acc: Vec<Option<Tensor>> = (0..inputs.len()).map(|_| None).collect();
        accumulate(&[&l], &inputs, &mut acc)?;
        let mut bsite = Site::with_direction(regs, groups, index, None, RankInfo::SINGLE, true);
        for j in (0..n_cuts).rev() {
            let (point, act, leaf) = &site.cuts[j];
            let g = acc[j].take().unwrap_or_else(|| leaf.zeros_like());
            let (g, _) = bsite
                .run_hooks(point, g.detach())
                .map_err(|error| FlexError::Hook {
                    error,
                    partial: std::sync::Mutex::new(std::mem::take(&mut bsite.outputs)),
                })?;
            if !act.requires_grad() {
                continue;
            }
            let surrogate = (act * g.detach()).sum(Kind::Float);
            // Earlier cuts and the parameters.
            let mut earlier: Vec<Tensor> = inputs[..j].iter().map(Tensor::shallow_clone).collect();
            earlier.extend(inputs[n_cuts..].iter().map(Tensor::shallow_clone));
            let mut part: Vec<Option<Tensor>> = (0..earlier.len()).map(|_| None).collect();
            accumulate(&[&surrogate], &earlier, &mut part)?;
            for (k, gk) in part.into_iter().enumerate() {
                let Some(gk) = gk else { continue };
                let slot = if k < j { k } else { n_cuts + (k - j) };
                acc[slot] = Some(match acc[slot].take() {
                    Some(a) => a + gk,
                    None => gk,
                });
            }
        }
        let mut param_grads = BTreeMap::new();
        for (i, (name, p)) in params.iter().enumerate() {
            let g = acc[n_cuts + i]
                .take()
                .unwrap_or_else(|| p.zeros_like())
                .detach();
            param_grads.insert(name.clone(), g);
        }
        let mut logs = std::mem::take(&mut site.forward.logs);
        logs.append(&mut bsite.logs);
        Ok(BackwardOutput {
            loss: loss_value,
            logits: logits.detach(),
            outputs: std::mem::take(&mut site.forward.outputs),
            grad_outputs: std::mem::take(&mut bsite.outputs),
            param_grads,
            producers: std::mem::take(&mut site.forward.producers),
            grad_producers: std::mem::take(&mut bsite.producers),
            logs,
        })
    })();
    for (_, p) in &params {
        let _ = p.set_requires_grad(false);
    }
    result
}
