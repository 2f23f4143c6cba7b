//! The forward of a backward pass: where it is cut into segments. At every
//! point with a backward hook and at every tensor-parallel collective the
//! activation is cut: the rest of the forward continues from a fresh leaf
//! (same values), recorded on the [`Tape`] with the rule its gradient
//! follows. Megatron's rules: a row-parallel all-reduce passes the gradient
//! through (identity), a replicated tensor entering column-parallel layers
//! (`copy_to_parallel`) gets the sum of the ranks' gradients, the gathered
//! logits give each rank its vocabulary slice. The cuts are recorded in
//! forward order, the same on every TP rank, so the backward collectives
//! line up.
//!
//! Forward hooks run here as in any forward, through the TP group's logical
//! view; their edits count as constants in the backward pass (the gradient
//! passes straight through an edit), since a plugin's edit is not
//! differentiable from the host.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use tch::Tensor;

use super::site::Site;
use super::tp_site::{Agreement, run_and_write_back};
use crate::distributed::{Communicator, layout};
use crate::models::{HookSite, ModelError, TpComm, TpSplit};

pub(crate) enum Rule {
    /// All-reduce output: the gradient passes through.
    Identity,
    /// Replicated input of column-parallel layers: sum over the group.
    SumGrad,
    /// Gathered logits: this rank's vocabulary slice.
    Slice,
    /// A hook point with backward hooks.
    Hook(String),
}

pub(crate) struct Cut {
    /// The activation as computed (with its autograd history).
    pub orig: Tensor,
    /// The leaf the forward continued from.
    pub leaf: Tensor,
    pub rule: Rule,
}

#[derive(Default)]
pub(crate) struct Tape(pub RefCell<Vec<Cut>>);

impl Tape {
    pub fn cut(&self, orig: Tensor, leaf: Tensor, rule: Rule) -> Tensor {
        let out = leaf.shallow_clone();
        self.0.borrow_mut().push(Cut { orig, leaf, rule });
        out
    }
}

fn comm_err(e: crate::distributed::CommError) -> ModelError {
    ModelError::Comm(Box::new(e))
}

/// The models' TP group during the forward of a backward pass.
pub(crate) struct GradTp<'a> {
    pub comm: &'a dyn Communicator,
    pub tape: &'a Tape,
}

impl TpComm for GradTp<'_> {
    fn rank(&self) -> i64 {
        self.comm.rank() as i64
    }
    fn size(&self) -> i64 {
        self.comm.size() as i64
    }
    fn all_reduce(&self, t: Tensor) -> Result<Tensor, ModelError> {
        if self.comm.size() == 1 {
            return Ok(t);
        }
        let sum = self.comm.all_reduce_sum(&t.detach()).map_err(comm_err)?;
        Ok(self
            .tape
            .cut(t, sum.set_requires_grad(true), Rule::Identity))
    }
    fn copy_to_parallel(&self, t: Tensor) -> Result<Tensor, ModelError> {
        if self.comm.size() == 1 {
            return Ok(t);
        }
        let leaf = t.detach().set_requires_grad(true);
        Ok(self.tape.cut(t, leaf, Rule::SumGrad))
    }
}

/// The hook site of the forward of a backward pass: forward hooks (edits
/// straight through) and the cuts at backward-hooked points.
pub(crate) struct GradSite<'a, 'c> {
    pub forward: Site<'a>,
    pub backward_points: HashSet<String>,
    pub tape: &'c Tape,
    pub tp: &'c dyn Communicator,
    pub splits: &'c HashMap<String, Option<TpSplit>>,
    pub check_edits: bool,
    pub global_rank: u32,
}

impl GradSite<'_, '_> {
    /// The forward hooks at `point` on a detached copy of `t`; an edit's
    /// values with the identity's gradient.
    fn forward_hooks(&mut self, point: &str, t: Tensor) -> Result<Tensor, ModelError> {
        let local = t.detach();
        let split = if self.tp.size() > 1 {
            self.splits.get(point).copied().flatten()
        } else {
            None
        };
        let logical = match split {
            Some(s) => layout::gather(self.tp, &local, s).map_err(comm_err)?.0,
            None => local.copy(),
        };
        let agreement = Agreement {
            tp: self.tp,
            global_rank: self.global_rank,
            check: self.check_edits,
            stage: 0,
        };
        let (new_local, edited) = run_and_write_back(
            &mut self.forward,
            &agreement,
            point,
            split,
            (local, logical),
            None,
        )?;
        Ok(if edited {
            &t + (new_local - t.detach())
        } else {
            t
        })
    }
}

impl HookSite for GradSite<'_, '_> {
    fn active(&self, point: &str) -> bool {
        self.forward.interrupted()
            || self.forward.hooked(point)
            || self.backward_points.contains(point)
    }

    fn fire(&mut self, point: &str, t: Tensor) -> Result<Tensor, ModelError> {
        if self.forward.interrupted() {
            return Err(ModelError::Interrupted);
        }
        let t = if self.forward.hooked(point) {
            self.forward_hooks(point, t)?
        } else {
            t
        };
        if !self.backward_points.contains(point) {
            return Ok(t);
        }
        let leaf = t.detach().set_requires_grad(true);
        Ok(self.tape.cut(t, leaf, Rule::Hook(point.to_string())))
    }
}
