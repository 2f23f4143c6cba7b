//! One rank's part of a distributed backward pass with backward hooks: the
//! same segment-wise scheme as `backward.rs`, with the tensor-parallel
//! collectives as cuts too. Megatron's rules: a row-parallel all-reduce
//! passes the gradient through (identity), a replicated tensor entering
//! column-parallel layers (`copy_to_parallel`) gets the sum of the ranks'
//! gradients, the gathered logits give each rank its vocabulary slice. The
//! cuts are recorded in forward order, the same on every TP rank, so the
//! backward collectives line up. Pipeline stages pass the gradient of their
//! input back to the previous stage. Data-parallel replicas differentiate the
//! loss of their own rows (what their hooks see: not rescaled, FlexModel's
//! convention); parameter gradients are combined over replicas weighted by
//! their rows, so they equal the gradient of the loss over the whole batch.
//! Forward hooks do not run in a distributed backward pass.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use tch::{Kind, Tensor};

use super::backward::{Loss, accumulate, loss_of};
use super::dist_site::run_and_write_back;
use super::site::Site;
use super::{FlexError, Groups, Registration};
use crate::distributed::{Communicator, layout, wire};
use crate::hooks::RankInfo;
use crate::models::{HookSite, ModelError, TpComm, TpSplit};

enum Rule {
    /// All-reduce output: the gradient passes through.
    Identity,
    /// Replicated input of column-parallel layers: sum over the group.
    SumGrad,
    /// Gathered logits: this rank's vocabulary slice.
    Slice,
    /// A hook point with backward hooks.
    Hook(String),
}

struct Cut {
    orig: Tensor,
    leaf: Tensor,
    rule: Rule,
}

#[derive(Default)]
struct Tape(RefCell<Vec<Cut>>);

impl Tape {
    fn cut(&self, orig: Tensor, leaf: Tensor, rule: Rule) -> Tensor {
        let out = leaf.shallow_clone();
        self.0.borrow_mut().push(Cut { orig, leaf, rule });
        out
    }
}

fn comm_err(e: crate::distributed::CommError) -> ModelError {
    ModelError::Comm(Box::new(e))
}

struct GradTp<'a> {
    comm: &'a dyn Communicator,
    tape: &'a Tape,
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

struct GradSite<'a> {
    points: HashSet<String>,
    tape: &'a Tape,
}

impl HookSite for GradSite<'_> {
    fn active(&self, point: &str) -> bool {
        self.points.contains(point)
    }
    fn fire(&mut self, point: &str, t: Tensor) -> Result<Tensor, ModelError> {
        let leaf = t.detach().set_requires_grad(true);
        Ok(self.tape.cut(t, leaf, Rule::Hook(point.to_string())))
    }
}

/// What one rank returns from a distributed backward pass.
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

pub(crate) struct Ctx<'a> {
    pub model: &'a crate::models::Model,
    pub groups: &'a crate::distributed::Groups,
    pub coords: crate::distributed::Coords,
    pub mesh: crate::distributed::Mesh,
    pub splits: &'a HashMap<String, Option<TpSplit>>,
    pub rank: RankInfo,
}

fn fail(e: ModelError, partial: BTreeMap<String, Tensor>) -> FlexError {
    super::model_error(e, partial)
}

pub(crate) fn run(
    cx: &Ctx<'_>,
    ids: &Tensor,
    regs: &[Registration],
    groups: &Groups,
    index: u64,
    loss: &Loss,
) -> Result<RankBackward, FlexError> {
    let g = cx.groups;
    for c in [&g.world, &g.tp, &g.dp, &g.pp] {
        c.set_epoch(index);
    }
    let (pp, c) = (cx.mesh.pp, cx.coords);
    let b = ids.size()[0];
    if b < cx.mesh.dp as i64 {
        return Err(FlexError::Input(format!(
            "a batch of {b} cannot be split over {} data-parallel replicas",
            cx.mesh.dp
        )));
    }
    let (start, rows) = crate::models::shard::balanced(b, cx.mesh.dp as i64, c.dp as i64);
    let local_ids = ids.narrow(0, start, rows);
    let local_loss = loss.rows(start, rows);
    let points: HashSet<String> = regs
        .iter()
        .filter(|r| r.backward && groups.enables(&r.groups))
        .flat_map(|r| r.points.iter().cloned())
        .collect();
    let params = cx.model.parameters();
    for (_, p) in &params {
        let _ = p.set_requires_grad(true);
    }
    let tape = Tape::default();
    let result = (|| {
        let device = cx.model.device();
        let stage_in = if c.pp > 0 {
            let m = g.pp.recv_bytes(c.pp - 1)?;
            let h = wire::decode(&m).map_err(|e| FlexError::Rank {
                rank: cx.rank.global_rank as usize,
                message: e,
            })?;
            Some(h.to_device(device).set_requires_grad(true))
        } else {
            None
        };
        let tp = GradTp {
            comm: g.tp.as_ref(),
            tape: &tape,
        };
        let mut site = GradSite {
            points,
            tape: &tape,
        };
        let out = cx
            .model
            .forward_stage_with_grad(
                &local_ids,
                stage_in.as_ref().map(Tensor::shallow_clone),
                &mut site,
                &tp,
            )
            .map_err(|e| fail(e, BTreeMap::new()))?;
        let mut local_loss_value = 0.0;
        let root = if c.pp + 1 == pp {
            let logits = if cx.mesh.tp > 1 {
                let parts = g.tp.all_gather(&out.detach())?;
                let full = Tensor::cat(&parts, -1).set_requires_grad(true);
                tape.cut(out, full, Rule::Slice)
            } else {
                out
            };
            let l = loss_of(&logits, &local_loss)?;
            local_loss_value = l.double_value(&[]);
            l
        } else {
            let msg = wire::encode(&out.detach()).map_err(FlexError::Input)?;
            g.pp.send_bytes(msg, c.pp + 1)?;
            let gm = g.pp.recv_bytes(c.pp + 1)?;
            let grad = wire::decode(&gm)
                .map_err(|e| FlexError::Rank {
                    rank: cx.rank.global_rank as usize,
                    message: e,
                })?
                .to_device(device);
            (&out * grad).sum(Kind::Float)
        };
        let cuts = std::mem::take(&mut *tape.0.borrow_mut());
        let n = cuts.len();
        let mut inputs: Vec<Tensor> = cuts.iter().map(|c| c.leaf.shallow_clone()).collect();
        let has_in = stage_in.is_some();
        if let Some(s) = &stage_in {
            inputs.push(s.shallow_clone());
        }
        inputs.extend(params.iter().map(|(_, p)| p.shallow_clone()));
        let mut acc: Vec<Option<Tensor>> = (0..inputs.len()).map(|_| None).collect();
        accumulate(&[&root], &inputs, &mut acc)?;
        let mut bsite = Site::with_direction(regs, groups, index, None, cx.rank, true);
        for j in (0..n).rev() {
            let cut = &cuts[j];
            let gj = acc[j]
                .take()
                .unwrap_or_else(|| cut.leaf.zeros_like())
                .detach();
            let gj = match &cut.rule {
                Rule::Identity => gj,
                Rule::SumGrad => g.tp.all_reduce_sum(&gj)?,
                Rule::Slice => layout::local_part(
                    &gj,
                    TpSplit { dim: -1, groups: 1 },
                    g.tp.rank(),
                    g.tp.size(),
                )
                .contiguous(),
                Rule::Hook(point) => {
                    let split = if cx.mesh.tp > 1 {
                        cx.splits.get(point).copied().flatten()
                    } else {
                        None
                    };
                    let logical = match split {
                        Some(s) => layout::gather(g.tp.as_ref(), &gj, s)?.0,
                        None => gj.shallow_clone(),
                    };
                    // Gradient edits are always checked across TP ranks.
                    let partial = |bsite: &mut Site<'_>| std::mem::take(&mut bsite.outputs);
                    run_and_write_back(
                        &mut bsite,
                        g.tp.as_ref(),
                        cx.rank.global_rank,
                        point,
                        split,
                        gj,
                        logical,
                        true,
                    )
                    .map_err(|e| fail(e, partial(&mut bsite)))?
                }
            };
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
        if has_in {
            let gi = acc[n]
                .take()
                .unwrap_or_else(|| inputs[n].zeros_like())
                .detach();
            let msg = wire::encode(&gi).map_err(FlexError::Input)?;
            g.pp.send_bytes(msg, c.pp - 1)?;
        }
        // Replicas: gradients of the whole batch's mean loss.
        let w = rows as f64 / b as f64;
        let first_param = n + usize::from(has_in);
        let mut param_grads = BTreeMap::new();
        for (i, (name, p)) in params.iter().enumerate() {
            let gp = acc[first_param + i]
                .take()
                .unwrap_or_else(|| p.zeros_like())
                .detach();
            let gp = if cx.mesh.dp > 1 {
                g.dp.all_reduce_sum(&(gp * w))?
            } else {
                gp
            };
            param_grads.insert(name.clone(), gp);
        }
        // A parameter on several stages (tied embeddings): the sum of its
        // stages' gradients, on each of them.
        if pp > 1 {
            let names: Vec<String> = param_grads.keys().cloned().collect();
            let enc = serde_json::to_vec(&names).unwrap_or_default();
            let all: Vec<Vec<String>> =
                g.pp.all_gather_bytes(Bytes::from(enc))?
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
                let parts = g.pp.all_gather(&mine)?;
                if let Some(t) = param_grads.get_mut(&nm) {
                    let mut sum = t.zeros_like();
                    for part in parts.iter().filter(|p| p.numel() > 0) {
                        sum += part.to_device(sum.device());
                    }
                    *t = sum;
                }
            }
        }
        // The whole batch's loss, known on every rank.
        let mine = if c.pp + 1 == pp && c.tp == 0 {
            local_loss_value * w
        } else {
            0.0
        };
        let all = g
            .world
            .all_gather_bytes(Bytes::copy_from_slice(&mine.to_le_bytes()))?;
        let loss_value = all
            .iter()
            .map(|b| f64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])))
            .sum();
        Ok(RankBackward {
            loss: loss_value,
            grad_outputs: std::mem::take(&mut bsite.outputs),
            grad_producers: std::mem::take(&mut bsite.producers),
            param_grads,
        })
    })();
    for (_, p) in &params {
        let _ = p.set_requires_grad(false);
    }
    if let Err(e) = &result {
        // Peers waiting on this rank (its TP group, the next or previous
        // stage, the final exchange) fail now instead of at their deadline.
        let why = format!("backward failed on rank {}: {e}", cx.rank.global_rank);
        for c in [&g.tp, &g.pp, &g.dp, &g.world] {
            c.abort(&why);
        }
    }
    result
}
