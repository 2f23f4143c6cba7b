//! One forward pass on one rank of any mesh; on the mesh `(1, 1, 1)` the
//! fast path hands the site's outputs over as they are.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tch::{Kind, Tensor};

use super::batch::Batch;
use super::deferred::{At, Digest, Order, divergence, retain_before};
use super::report::{RankFailure, RankReport, gather_merged};
use super::site::{RunBudget, Site};
use super::stage::{self, Handoff};
use super::tp_site::{Agreement, TpSite};
use super::{Engine, FlexError, Groups, LogLine, Registration, RunOutput, TpAdapter};
use super::{failure, model_error};
use crate::distributed::Mesh;
use crate::hooks::{GenStep, HookError};
use crate::models::{KvCache, ModelError};

/// One pass: its number, and what generation or `forward_until` adds.
pub(crate) struct Pass<'p> {
    /// Forward number (the same on every rank).
    pub index: u64,
    /// Set during generation.
    pub step: Option<GenStep>,
    /// Stop after this canonical point's hooks ran.
    pub stop: Option<&'p str>,
    /// This rank's key/value cache while generating.
    pub cache: Option<&'p mut KvCache>,
    /// The per-forward caps (carried from step to step while generating).
    pub budget: &'p mut RunBudget,
    /// A padded batch's real positions, cached and new (`[batch, cached +
    /// seq]`, the full batch).
    pub valid: Option<&'p Tensor>,
    /// Where the results are merged.
    pub collect: Collect,
}

/// Where a forward's results (logits, emitted tensors, logs) are merged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Collect {
    /// At global rank 0, every replica's rows together.
    #[default]
    Root,
    /// At the first rank of each data-parallel replica, its own rows only:
    /// nothing crosses between replicas (each can write its own results).
    Replica,
}

/// What this rank's stage produced.
enum Stage {
    Hidden(Tensor),
    /// The last stage's logits (`None` at TP ranks other than 0).
    Logits(Option<Tensor>),
    Stopped,
}

/// Why a stage failed: a model error (kept as it is on one rank) or a
/// failure another rank reported.
enum StageError {
    Model(ModelError),
    Failed(RankFailure),
}

/// What the hooks of this rank produced.
#[derive(Default)]
struct Local {
    batch: i64,
    /// Real tokens of this replica's rows (all of them when unpadded).
    tokens: i64,
    /// The batch is padded (anywhere).
    padded: bool,
    outputs: BTreeMap<String, Tensor>,
    producers: BTreeMap<String, String>,
    logs: Vec<LogLine>,
    gathered: BTreeMap<String, u64>,
    /// Where each output and log line came from.
    order: Order,
    /// A read-only hook's failure the TP group has not heard of yet.
    deferred: Option<(At, HookError)>,
    /// Where the hook failure that ended this rank's stage happened.
    failed_at: Option<At>,
    /// Hashes of what read-only points emitted.
    digests: Vec<Digest>,
}

/// What every rank tells every rank at the end of a forward on a mesh.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Status {
    failure: Option<RankFailure>,
    digests: Vec<Digest>,
}

impl Engine {
    /// One whole forward (not a generation step), stopped after `stop` if
    /// given: see [`Self::forward`].
    pub(crate) fn forward_once(
        &mut self,
        batch: &Batch,
        regs: &[Registration],
        groups: &Groups,
        index: u64,
        stop: Option<&str>,
        collect: Collect,
    ) -> Result<Option<RunOutput>, FlexError> {
        let mut budget = RunBudget::new(self.limits);
        let pass = Pass {
            index,
            step: None,
            stop,
            cache: None,
            budget: &mut budget,
            valid: batch.attention_mask.as_ref(),
            collect,
        };
        self.forward(&batch.ids, regs, groups, pass)
    }

    /// This rank's part of a forward on the full batch `ids` (`[batch,
    /// seq]`, the same on every rank). The merged output at global rank 0
    /// (or at each replica's first rank: `pass.collect`), `None` elsewhere;
    /// an error on any rank is returned on every rank.
    pub(crate) fn forward(
        &mut self,
        ids: &Tensor,
        regs: &[Registration],
        groups: &Groups,
        pass: Pass<'_>,
    ) -> Result<Option<RunOutput>, FlexError> {
        self.set_epoch(pass.index);
        let (index, collect) = (pass.index, pass.collect);
        let mut local = Local::default();
        let result = self.run_stage(ids, regs, groups, pass, &mut local);
        if self.alone() {
            return match result {
                Ok(Stage::Logits(logits)) => Ok(Some(run_output(local, logits, index))),
                Ok(Stage::Hidden(t)) => Ok(Some(run_output(local, Some(t), index))),
                Ok(Stage::Stopped) => Ok(Some(run_output(local, None, index))),
                Err(StageError::Model(e)) => Err(model_error(e, local.outputs)),
                Err(StageError::Failed(f)) => Err(f.into_error(local.outputs)),
            };
        }
        let me = self.global_rank();
        let result = result.map_err(|e| match e {
            StageError::Model(e) => match failure(e, me) {
                RankFailure::Hook(h, _) => RankFailure::Hook(h, local.failed_at.unwrap_or(At::END)),
                f => f,
            },
            StageError::Failed(f) => f,
        });
        self.finish(result, local, index, collect)
    }

    fn run_stage(
        &self,
        ids: &Tensor,
        regs: &[Registration],
        groups: &Groups,
        pass: Pass<'_>,
        local: &mut Local,
    ) -> Result<Stage, StageError> {
        let g = &self.groups;
        let me = g.world.rank();
        let input = |m: String| StageError::Failed(RankFailure::Input(m));
        self.check_ids(ids).map_err(input)?;
        let (start, rows) = self.replica_rows(ids.size()[0]).map_err(input)?;
        local.batch = rows;
        let device = self.model.device();
        let local_ids = ids.narrow(0, start, rows).to_device(device);
        let local_valid = pass
            .valid
            .map(|v| v.narrow(0, start, rows).to_device(device));
        let hidden = if self.coords.pp > 0 {
            let msg =
                g.pp.recv_bytes(self.coords.pp - 1)
                    .map_err(|e| StageError::Failed(RankFailure::Comm(e)))?;
            match stage::decode(&msg, me).map_err(StageError::Failed)? {
                Some(h) => Some(h.to_device(device)),
                None => return Ok(Stage::Stopped),
            }
        } else {
            None
        };
        let mut site = Site::new(
            regs,
            groups,
            pass.index,
            pass.stop.map(String::from),
            self.rank_info(),
        );
        site.generation = pass.step;
        site.interrupt = self.interrupt();
        site.budget = std::mem::take(pass.budget);
        site.token_dims = Some(&self.token_dims);
        site.row_offset = start;
        // Spans for this replica's rows whenever the batch's tokens of this
        // pass are padded anywhere (every replica then emits alike).
        let s = ids.size()[1];
        local.tokens = rows * s;
        if pass.valid.and_then(|v| real_spans(v, s)).is_some() {
            let mine = local_valid.as_ref().map(|v| spans(v, s));
            local.padded = true;
            local.tokens = mine
                .as_ref()
                .map_or(0, |m| m.iter().map(|r| i64::from(r.1)).sum());
            site.real = mine;
        }
        let agreement = Agreement {
            tp: g.tp.as_ref(),
            global_rank: me as u32,
            check: self.check_edits,
            stage: self.coords.pp,
        };
        let mut site = TpSite::new(site, agreement, &self.splits);
        let out = self.model.forward_stage(
            &local_ids,
            hidden,
            &mut site,
            &TpAdapter(g.tp.as_ref()),
            pass.cache,
            local_valid.as_ref(),
        );
        *pass.budget = std::mem::take(&mut site.inner.budget);
        local.order = std::mem::take(&mut site.inner.order);
        local.deferred = site.deferred.take();
        local.failed_at = site.failed_at;
        local.digests = std::mem::take(&mut site.digests);
        local.outputs = site.inner.outputs;
        local.producers = site.inner.producers;
        local.logs = site.inner.logs;
        local.gathered = site.gathered;
        let out = match out {
            Ok(t) => t,
            Err(ModelError::Stopped(_)) => return Ok(Stage::Stopped),
            Err(e) => return Err(StageError::Model(e)),
        };
        if self.coords.pp + 1 < self.mesh.pp {
            return Ok(Stage::Hidden(out));
        }
        if self.mesh.tp > 1 {
            // Vocab-parallel logits: whole at TP rank 0 only.
            let parts =
                g.tp.gather(&out, 0)
                    .map_err(|e| StageError::Failed(RankFailure::Comm(e)))?;
            return Ok(Stage::Logits(
                parts.map(|p| Tensor::cat(&p, -1).to_device(device)),
            ));
        }
        Ok(Stage::Logits(Some(out)))
    }

    /// Token ids the model can take: `[batch, seq]`, int64, in the
    /// vocabulary (a vocabulary-parallel embedding would turn an
    /// out-of-range id into zeros instead of an error).
    fn check_ids(&self, ids: &Tensor) -> Result<(), String> {
        let size = ids.size();
        if size.len() != 2 {
            return Err(format!("input_ids must be [batch, seq], got {size:?}"));
        }
        if ids.kind() != Kind::Int64 {
            return Err(format!("input_ids must be int64, got {:?}", ids.kind()));
        }
        if ids.numel() > 0 {
            let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if lo < 0 || hi >= self.vocab {
                let bad = if lo < 0 { lo } else { hi };
                return Err(format!("token ids must be in 0..{}, got {bad}", self.vocab));
            }
        }
        Ok(())
    }

    /// On a mesh: pass the stage's result on, agree on the outcome with
    /// every rank, and merge the reports at global rank 0.
    fn finish(
        &self,
        result: Result<Stage, RankFailure>,
        mut local: Local,
        index: u64,
        collect: Collect,
    ) -> Result<Option<RunOutput>, FlexError> {
        let g = &self.groups;
        let (pp, c) = (self.mesh.pp, self.coords);
        let mut result = result;
        if c.pp + 1 < pp {
            let msg = match &result {
                Ok(Stage::Hidden(t)) => stage::encode(Handoff::Hidden(t)),
                Ok(_) => stage::encode(Handoff::Stopped),
                Err(f) => stage::encode(Handoff::Failed(f)),
            };
            if let Err(e) = g.pp.send_bytes(msg, c.pp + 1) {
                result = Err(RankFailure::Comm(e));
            }
        }
        if let Err(f) = &result
            && !matches!(f, RankFailure::Hook(..) | RankFailure::Input(_))
        {
            // Not an outcome the TP group agreed on: let peers waiting on
            // this rank fail now rather than at their timeout.
            g.tp.abort(&format!("{f:?}"));
        }
        // A read-only hook's failure goes out with the outcome, after the
        // later stages got the hidden state they need to stay in step.
        if let Some((at, e)) = local.deferred.take()
            && !matches!(result, Err(RankFailure::Hook(..)))
        {
            result = Err(RankFailure::Hook(e, at));
        }
        // Every rank learns every rank's outcome.
        let status = Status {
            failure: result.as_ref().err().cloned(),
            digests: std::mem::take(&mut local.digests),
        };
        let status = serde_json::to_vec(&status).unwrap_or_default();
        let statuses = g.world.all_gather_bytes(Bytes::from(status))?;
        let statuses: Vec<Status> = statuses
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap_or_default())
            .collect();
        let (failures, digests): (Vec<_>, Vec<_>) =
            statuses.into_iter().map(|s| (s.failure, s.digests)).unzip();
        let mut failed = RankFailure::pick(failures);
        let before = match &failed {
            None => Some(At::END),
            Some(RankFailure::Hook(_, at)) => Some(*at),
            Some(_) => None,
        };
        if let Some(before) = before
            && let Some((at, e)) = divergence(&self.mesh, &digests, before)
        {
            failed = Some(RankFailure::Hook(e, at));
        }
        if let Some(RankFailure::Hook(_, at)) = &failed {
            retain_before(
                &mut local.outputs,
                &mut local.producers,
                &mut local.logs,
                &local.order,
                c.pp,
                *at,
            );
        }
        // Results reach global rank 0, also from a failed forward.
        let logits = match result {
            Ok(Stage::Logits(Some(t))) if c.tp == 0 => Some(t),
            _ => None,
        };
        let report = RankReport {
            coords: c,
            batch: local.batch,
            tokens: local.tokens,
            padded: local.padded,
            outputs: local.outputs,
            producers: local.producers,
            logs: local.logs,
            gathered: local.gathered,
            logits,
        };
        let merged = match collect {
            Collect::Root => gather_merged(g.world.as_ref(), report, &self.mesh, &self.batched)?,
            Collect::Replica => {
                // One replica's ranks: a mesh of one replica for the merge.
                let one = Mesh { dp: 1, ..self.mesh };
                gather_merged(g.replica.as_ref(), report, &one, &self.batched)?
            }
        };
        if let Some(f) = failed {
            return Err(f.into_error(merged.map(|m| m.outputs).unwrap_or_default()));
        }
        Ok(merged.map(|m| RunOutput {
            logits: m.logits,
            outputs: m.outputs,
            producers: m.producers,
            logs: m.logs,
            forward_index: index,
            gathered_bytes: m.gathered,
        }))
    }
}

/// Each row's real tokens `(start, len)` among the last `s` positions of
/// `valid` (`[rows, cached + s]`); `None` when they are all real.
pub(crate) fn real_spans(valid: &Tensor, s: i64) -> Option<Arc<[(u32, u32)]>> {
    let all = spans(valid, s);
    let width = s as u32;
    (!all.iter().all(|&(start, len)| start == 0 && len == width)).then_some(all)
}

/// Each row's real tokens `(start, len)` among the last `s` positions of
/// `valid` (real tokens are contiguous in a row, padded left or right).
fn spans(valid: &Tensor, s: i64) -> Arc<[(u32, u32)]> {
    let size = valid.size();
    let w = valid
        .narrow(1, size[1] - s, s)
        .ne(0)
        .to_kind(Kind::Int64)
        .to_device(tch::Device::Cpu);
    let rows: Vec<Vec<i64>> = Vec::try_from(&w).unwrap_or_default();
    rows.iter()
        .map(|r| {
            let start = r.iter().position(|&v| v == 1).unwrap_or(0);
            let len = r.iter().filter(|&&v| v == 1).count();
            (start as u32, len as u32)
        })
        .collect()
}

fn run_output(local: Local, logits: Option<Tensor>, index: u64) -> RunOutput {
    RunOutput {
        logits,
        outputs: local.outputs,
        producers: local.producers,
        logs: local.logs,
        forward_index: index,
        gathered_bytes: local.gathered,
    }
}
