//! Backward passes with hooks on gradients, on any mesh.
//!
//! The forward runs with autograd recording, cut into segments ([`tape`]):
//! at every hook point with a backward hook and at every TP collective. The
//! backward then runs segment by segment, from the loss down, in reverse
//! forward order: the gradient accumulated on a cut's leaf is complete once
//! every later segment has been differentiated; the backward hooks see it
//! (and may edit it), and it is propagated through the segment that
//! produced the activation (`∂(a · g)/∂·`). Parameter gradients accumulate
//! over all segments. This is what tensor hooks (`register_hook`) do in
//! PyTorch. Forward hooks run too (their edits pass the gradient straight
//! through).
//!
//! Pipeline stages pass the gradient of their input back to the previous
//! stage. Data-parallel replicas differentiate the loss of their own rows
//! (what their hooks see: not rescaled, FlexModel's convention); parameter
//! gradients are combined over replicas weighted by their rows, so they
//! equal the gradient of the loss over the whole batch.
//!
//! [`tape`]: super::tape

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use tch::{Kind, Tensor};

use super::batch::Batch;
use super::loss::{Loss, accumulate, loss_of};
use super::report::{RankReport, gather_merged};
use super::site::{RunBudget, Site};
use super::tape::{Cut, GradSite, GradTp, Rule, Tape};
use super::tp_site::{Agreement, run_and_write_back};
use super::{Engine, FlexError, Groups, LogLine, Registration};
use crate::distributed::{layout, wire};
use crate::models::TpSplit;

/// What a backward pass returns (merged at global rank 0).
#[derive(Debug)]
pub struct BackwardOutput {
    /// The loss over the whole batch.
    pub loss: f64,
    /// The forward's logits (detached).
    pub logits: Tensor,
    /// What forward hooks emitted.
    pub outputs: BTreeMap<String, Tensor>,
    /// What backward hooks emitted (gradients), by their keys.
    pub grad_outputs: BTreeMap<String, Tensor>,
    /// Gradient of every parameter of global rank 0 (checkpoint names),
    /// after the backward hooks' edits: on one rank, every parameter; on a
    /// mesh, rank 0's shard (every rank's: `FlexModel::backward_each`).
    pub param_grads: BTreeMap<String, Tensor>,
    /// Who emitted each entry of `outputs`.
    pub producers: BTreeMap<String, String>,
    /// Who emitted each entry of `grad_outputs`.
    pub grad_producers: BTreeMap<String, String>,
    pub logs: Vec<LogLine>,
}

/// What one rank computed in a backward pass.
#[derive(Debug)]
pub struct RankBackward {
    /// The loss over the whole batch (on every rank).
    pub loss: f64,
    /// What this rank's backward hooks emitted.
    pub grad_outputs: BTreeMap<String, Tensor>,
    /// Who emitted each entry of `grad_outputs`.
    pub grad_producers: BTreeMap<String, String>,
    /// Gradients of this rank's parameters (its tensor-parallel slices),
    /// combined over data-parallel replicas.
    pub param_grads: BTreeMap<String, Tensor>,
}

/// What the forward half left for the backward half.
struct Taped {
    /// The scalar this rank differentiates first.
    root: Tensor,
    local_loss: f64,
    logits: Option<Tensor>,
    stage_in: Option<Tensor>,
    cuts: Vec<Cut>,
    forward: HookResults,
    /// This replica's real tokens per row, in a padded batch.
    real: Option<std::sync::Arc<[(u32, u32)]>>,
}

#[derive(Default)]
struct HookResults {
    outputs: BTreeMap<String, Tensor>,
    producers: BTreeMap<String, String>,
    logs: Vec<LogLine>,
}

impl HookResults {
    fn take(site: &mut Site<'_>) -> HookResults {
        HookResults {
            outputs: std::mem::take(&mut site.outputs),
            producers: std::mem::take(&mut site.producers),
            logs: std::mem::take(&mut site.logs),
        }
    }
}

/// This replica's rows of a backward pass.
struct Rows<'a> {
    ids: &'a Tensor,
    /// The padded batch's real positions, these rows.
    valid: Option<&'a Tensor>,
    loss: &'a Loss,
}

impl Engine {
    /// This rank's part of a forward on `ids` and a backward pass of `loss`:
    /// this rank's own view, and the merged output at global rank 0.
    pub(crate) fn backward(
        &self,
        batch: &Batch,
        regs: &[Registration],
        groups: &Groups,
        index: u64,
        loss: &Loss,
    ) -> Result<(RankBackward, Option<BackwardOutput>), FlexError> {
        self.set_epoch(index);
        let params = self.model.parameters();
        for (_, p) in &params {
            let _ = p.set_requires_grad(true);
        }
        let result = self.backward_inner(batch, regs, groups, index, loss, &params);
        for (_, p) in &params {
            let _ = p.set_requires_grad(false);
        }
        drop(params);
        self.model.release_parameters();
        if let Err(e) = &result
            && !self.alone()
        {
            // Peers waiting on this rank (its TP group, the next or previous
            // stage, the final exchange) fail now instead of at their deadline.
            let why = format!("backward failed on rank {}: {e}", self.global_rank());
            let g = &self.groups;
            for c in [&g.tp, &g.pp, &g.dp, &g.world] {
                c.abort(&why);
            }
        }
        result
    }

    fn backward_inner(
        &self,
        batch: &Batch,
        regs: &[Registration],
        groups: &Groups,
        index: u64,
        loss: &Loss,
        params: &[(String, Tensor)],
    ) -> Result<(RankBackward, Option<BackwardOutput>), FlexError> {
        let ids = &batch.ids;
        let b = ids.size()[0];
        let (start, rows) = self.replica_rows(b).map_err(FlexError::Input)?;
        let device = self.model.device();
        let local_ids = ids.narrow(0, start, rows).to_device(device);
        let local_valid = batch
            .attention_mask
            .as_ref()
            .map(|v| v.narrow(0, start, rows).to_device(device));
        let local = Rows {
            ids: &local_ids,
            valid: local_valid.as_ref(),
            loss: &loss.rows(start, rows),
        };
        let taped = self.forward_taped(&local, regs, groups, index)?;
        let (mut acc, grads) = self.segments(&taped, regs, groups, index, params)?;
        let n = taped.cuts.len();
        if let Some(s) = &taped.stage_in {
            let gi = acc[n].take().unwrap_or_else(|| s.zeros_like()).detach();
            let msg = wire::encode(&gi).map_err(FlexError::Input)?;
            self.groups.pp.send_bytes(msg, self.coords.pp - 1)?;
        }
        let first_param = n + usize::from(taped.stage_in.is_some());
        let w = loss.weight(batch.attention_mask.as_ref(), b, start, rows);
        let param_grads = self.param_grads(&mut acc[first_param..], params, w)?;
        let loss_value = self.total_loss(taped.local_loss * w)?;
        let mine = RankBackward {
            loss: loss_value,
            grad_outputs: grads.outputs,
            grad_producers: grads.producers,
            param_grads,
        };
        let merged = self.merge_backward(&mine, taped.logits, taped.forward, grads.logs, rows)?;
        Ok((mine, merged))
    }

    /// The forward with autograd recording, cut at backward-hooked points
    /// and TP collectives; the scalar to differentiate first (the loss on
    /// the last stage, `out · grad` from the next stage elsewhere).
    fn forward_taped(
        &self,
        local: &Rows<'_>,
        regs: &[Registration],
        groups: &Groups,
        index: u64,
    ) -> Result<Taped, FlexError> {
        let g = &self.groups;
        let (device, c, me) = (self.model.device(), self.coords, self.global_rank());
        let bad = |message: String| FlexError::Rank { rank: me, message };
        let stage_in = if c.pp > 0 {
            let m = g.pp.recv_bytes(c.pp - 1)?;
            Some(
                wire::decode(&m)
                    .map_err(bad)?
                    .to_device(device)
                    .set_requires_grad(true),
            )
        } else {
            None
        };
        let tape = Tape::default();
        let mut forward = Site::new(regs, groups, index, None, self.rank_info());
        forward.budget = RunBudget::new(self.limits);
        forward.interrupt = self.interrupt();
        // Hooks learn the real tokens of a padded batch, as in a forward.
        let real = local
            .valid
            .and_then(|v| super::forward::real_spans(v, local.ids.size()[1]));
        forward.token_dims = Some(&self.token_dims);
        forward.real = real.clone();
        let mut site = GradSite {
            forward,
            backward_points: backward_points(regs, groups),
            tape: &tape,
            tp: g.tp.as_ref(),
            splits: &self.splits,
            check_edits: self.check_edits,
            global_rank: me as u32,
        };
        let tp = GradTp {
            comm: g.tp.as_ref(),
            tape: &tape,
        };
        let out = self
            .model
            .forward_stage_with_grad(
                local.ids,
                stage_in.as_ref().map(Tensor::shallow_clone),
                &mut site,
                &tp,
                local.valid,
            )
            .map_err(|e| super::model_error(e, std::mem::take(&mut site.forward.outputs)))?;
        let forward = HookResults::take(&mut site.forward);
        let (root, local_loss, logits) = if c.pp + 1 == self.mesh.pp {
            let logits = if self.mesh.tp > 1 {
                let parts = g.tp.all_gather(&out.detach())?;
                let full = Tensor::cat(&parts, -1).set_requires_grad(true);
                tape.cut(out, full, Rule::Slice)
            } else {
                out
            };
            let l = loss_of(&logits, local.loss, local.valid)?;
            let v = l.double_value(&[]);
            (l, v, Some(logits.detach()))
        } else {
            g.pp.send_bytes(
                wire::encode(&out.detach()).map_err(FlexError::Input)?,
                c.pp + 1,
            )?;
            let gm = g.pp.recv_bytes(c.pp + 1)?;
            let grad = wire::decode(&gm).map_err(bad)?.to_device(device);
            ((&out * grad).sum(Kind::Float), 0.0, None)
        };
        let cuts = std::mem::take(&mut *tape.0.borrow_mut());
        Ok(Taped {
            real,
            root,
            local_loss,
            logits,
            stage_in,
            cuts,
            forward,
        })
    }

    /// The backward, segment by segment from the loss down; the gradients
    /// of (cuts, stage input, parameters) and what backward hooks produced.
    fn segments(
        &self,
        taped: &Taped,
        regs: &[Registration],
        groups: &Groups,
        index: u64,
        params: &[(String, Tensor)],
    ) -> Result<(Vec<Option<Tensor>>, HookResults), FlexError> {
        let cuts = &taped.cuts;
        let n = cuts.len();
        let mut inputs: Vec<Tensor> = cuts.iter().map(|c| c.leaf.shallow_clone()).collect();
        inputs.extend(taped.stage_in.iter().map(Tensor::shallow_clone));
        inputs.extend(params.iter().map(|(_, p)| p.shallow_clone()));
        let mut acc: Vec<Option<Tensor>> = (0..inputs.len()).map(|_| None).collect();
        accumulate(&[&taped.root], &inputs, &mut acc)?;
        let mut bsite = Site::with_direction(regs, groups, index, None, self.rank_info(), true);
        bsite.budget = RunBudget::new(self.limits);
        bsite.token_dims = Some(&self.token_dims);
        bsite.real = taped.real.clone();
        for j in (0..n).rev() {
            let cut = &cuts[j];
            let gj = acc[j]
                .take()
                .unwrap_or_else(|| cut.leaf.zeros_like())
                .detach();
            let gj = self
                .cut_gradient(&cut.rule, gj, &mut bsite)
                .map_err(|e| attach_partial(e, &mut bsite))?;
            if !cut.orig.requires_grad() {
                continue;
            }
            let surrogate = (&cut.orig * gj).sum(Kind::Float);
            let earlier: Vec<Tensor> = inputs[..j]
                .iter()
                .chain(&inputs[n..])
                .map(Tensor::shallow_clone)
                .collect();
            let mut part: Vec<Option<Tensor>> = (0..earlier.len()).map(|_| None).collect();
            accumulate(&[&surrogate], &earlier, &mut part)?;
            for (k, gk) in part.into_iter().enumerate() {
                let Some(gk) = gk else { continue };
                let slot = if k < j { k } else { n + (k - j) };
                acc[slot] = Some(match acc[slot].take() {
                    Some(a) => a + gk,
                    None => gk,
                });
            }
        }
        Ok((acc, HookResults::take(&mut bsite)))
    }

    /// The gradient a cut passes to its segment: through its rule, or
    /// through the backward hooks of its point.
    fn cut_gradient(
        &self,
        rule: &Rule,
        gj: Tensor,
        bsite: &mut Site<'_>,
    ) -> Result<Tensor, FlexError> {
        let tp = self.groups.tp.as_ref();
        Ok(match rule {
            Rule::Identity => gj,
            Rule::SumGrad => tp.all_reduce_sum(&gj)?,
            Rule::Slice => {
                layout::local_part(&gj, TpSplit { dim: -1, groups: 1 }, tp.rank(), tp.size())
                    .contiguous()
            }
            Rule::Hook(point) => {
                let split = if self.mesh.tp > 1 {
                    self.splits.get(point).copied().flatten()
                } else {
                    None
                };
                let logical = match split {
                    Some(s) => layout::gather(tp, &gj, s)?.0,
                    None => gj.shallow_clone(),
                };
                // Gradient edits are always checked across TP ranks.
                let agreement = Agreement {
                    tp,
                    global_rank: self.global_rank() as u32,
                    check: true,
                    stage: self.coords.pp,
                };
                run_and_write_back(bsite, &agreement, point, split, (gj, logical), None)
                    .map_err(|f| super::model_error(f.error, BTreeMap::new()))?
                    .0
            }
        })
    }
}

/// Points with an enabled backward hook.
fn backward_points(regs: &[Registration], groups: &Groups) -> HashSet<String> {
    regs.iter()
        .filter(|r| r.backward && groups.enables(&r.groups))
        .flat_map(|r| r.points.iter().cloned())
        .collect()
}

/// A backward hook's error with what backward hooks had emitted.
fn attach_partial(e: FlexError, bsite: &mut Site<'_>) -> FlexError {
    match e {
        FlexError::Hook { error, .. } => FlexError::Hook {
            error,
            partial: std::sync::Mutex::new(std::mem::take(&mut bsite.outputs)),
        },
        e => e,
    }
}

impl Engine {
    /// Parameter gradients from `acc`: replicas' weighted by `w` and
    /// summed; a parameter on several stages (tied embeddings) gets the sum
    /// of its stages' gradients on each of them.
    fn param_grads(
        &self,
        acc: &mut [Option<Tensor>],
        params: &[(String, Tensor)],
        w: f64,
    ) -> Result<BTreeMap<String, Tensor>, FlexError> {
        let g = &self.groups;
        let mut param_grads = BTreeMap::new();
        for (slot, (name, p)) in acc.iter_mut().zip(params) {
            let gp = slot.take().unwrap_or_else(|| p.zeros_like()).detach();
            let gp = if self.mesh.dp > 1 {
                g.dp.all_reduce_sum(&(gp * w))?
            } else {
                gp
            };
            param_grads.insert(name.clone(), gp);
        }
        if self.mesh.pp > 1 {
            self.sum_shared_params(&mut param_grads)?;
        }
        Ok(param_grads)
    }

    fn sum_shared_params(
        &self,
        param_grads: &mut BTreeMap<String, Tensor>,
    ) -> Result<(), FlexError> {
        let pp = self.groups.pp.as_ref();
        let names: Vec<String> = param_grads.keys().cloned().collect();
        let enc = serde_json::to_vec(&names).unwrap_or_default();
        let all: Vec<Vec<String>> = pp
            .all_gather_bytes(Bytes::from(enc))?
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap_or_default())
            .collect();
        let mut shared: Vec<String> = Vec::new();
        for (i, a) in all.iter().enumerate() {
            for nm in a {
                if all[i + 1..].iter().any(|o| o.contains(nm)) && !shared.contains(nm) {
                    shared.push(nm.clone());
                }
            }
        }
        shared.sort();
        for nm in shared {
            let mine = param_grads
                .get(&nm)
                .map(Tensor::shallow_clone)
                .unwrap_or_else(|| Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)));
            let parts = pp.all_gather(&mine)?;
            if let Some(t) = param_grads.get_mut(&nm) {
                let mut sum = t.zeros_like();
                for part in parts.iter().filter(|p| p.numel() > 0) {
                    sum += part.to_device(sum.device());
                }
                *t = sum;
            }
        }
        Ok(())
    }

    /// The whole batch's loss on every rank, from the last stage's TP rank
    /// 0 of each replica (`mine`: its rows' share).
    fn total_loss(&self, mine: f64) -> Result<f64, FlexError> {
        if self.alone() {
            return Ok(mine);
        }
        let c = self.coords;
        let mine = if c.pp + 1 == self.mesh.pp && c.tp == 0 {
            mine
        } else {
            0.0
        };
        let all = self
            .groups
            .world
            .all_gather_bytes(Bytes::copy_from_slice(&mine.to_le_bytes()))?;
        Ok(all
            .iter()
            .map(|b| {
                f64::from_le_bytes(b.get(..8).and_then(|s| s.try_into().ok()).unwrap_or([0; 8]))
            })
            .sum())
    }

    /// The merged output at global rank 0: forward hooks' outputs and
    /// logits, backward hooks' gradients, rank 0's parameter gradients.
    fn merge_backward(
        &self,
        mine: &RankBackward,
        logits: Option<Tensor>,
        forward: HookResults,
        grad_logs: Vec<LogLine>,
        rows: i64,
    ) -> Result<Option<BackwardOutput>, FlexError> {
        let no_logits = || FlexError::Rank {
            rank: self.global_rank(),
            message: "no logits reached rank 0".into(),
        };
        let mut logs = forward.logs;
        if self.alone() {
            logs.extend(grad_logs);
            return Ok(Some(BackwardOutput {
                loss: mine.loss,
                logits: logits.ok_or_else(no_logits)?,
                outputs: forward.outputs,
                grad_outputs: shallow(&mine.grad_outputs),
                param_grads: shallow(&mine.param_grads),
                producers: forward.producers,
                grad_producers: mine.grad_producers.clone(),
                logs,
            }));
        }
        let report = |outputs, producers, logs, logits| RankReport {
            coords: self.coords,
            batch: rows,
            tokens: 0,
            padded: false,
            outputs,
            producers,
            logs,
            gathered: BTreeMap::new(),
            logits,
        };
        let logits = if self.coords.tp == 0 { logits } else { None };
        let world = self.groups.world.as_ref();
        let fwd = report(forward.outputs, forward.producers, logs, logits);
        let fwd = gather_merged(world, fwd, &self.mesh, &self.batched)?;
        let grads = report(
            shallow(&mine.grad_outputs),
            mine.grad_producers.clone(),
            grad_logs,
            None,
        );
        let grads = gather_merged(world, grads, &self.mesh, &self.batched)?;
        let (Some(f), Some(gr)) = (fwd, grads) else {
            return Ok(None);
        };
        let mut logs = f.logs;
        logs.extend(gr.logs);
        Ok(Some(BackwardOutput {
            loss: mine.loss,
            logits: f.logits.ok_or_else(no_logits)?,
            outputs: f.outputs,
            grad_outputs: gr.outputs,
            param_grads: shallow(&mine.param_grads),
            producers: f.producers,
            grad_producers: gr.producers,
            logs,
        }))
    }
}

fn shallow(m: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    m.iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect()
}
