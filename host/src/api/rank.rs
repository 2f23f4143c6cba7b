//! One rank of a distributed model: its shard, its place on the mesh, its
//! communicators, and its part of a forward pass. The same code runs under
//! every launcher: a thread per rank ([`super::DistFlexModel`]) or a
//! process per rank (`mpirun`, `srun`; see the CLI).
//!
//! A forward on a rank: take this replica's rows of the batch (DP), receive
//! the hidden state from the previous stage (PP), run this stage's layers
//! with TP collectives and the distributed hook site, send the result on, and
//! finally exchange outcomes with every rank (so that all return the same
//! error, if any) and gather logits and retrieved tensors at global rank 0.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bytes::Bytes;
use tch::{Device, Kind, Tensor};

use super::dist_site::DistSite;
use super::generate::{self, GenerateOptions, GenerateOutput};
use super::report::{RankFailure, RankReport, merge};
use super::site::{RunBudget, Site};
use super::{FlexError, ForwardOutput, Groups, HookSet, Registration};
use crate::distributed::{self, CommError, Communicator, Coords, Mesh};
use crate::hooks::{GenStep, HookError, RankInfo};
use crate::models::shard::balanced;
use crate::models::{KvCache, Model, ModelError, PointInfo, Shard, TpComm, TpSplit};

/// The models' view of the TP group.
struct TpAdapter<'a>(&'a dyn Communicator);

impl TpComm for TpAdapter<'_> {
    fn rank(&self) -> i64 {
        self.0.rank() as i64
    }
    fn size(&self) -> i64 {
        self.0.size() as i64
    }
    fn all_reduce(&self, t: Tensor) -> Result<Tensor, ModelError> {
        self.0
            .all_reduce_sum(&t)
            .map_err(|e| ModelError::Comm(Box::new(e)))
    }
}

/// Options of a distributed run.
#[derive(Debug, Clone)]
pub struct DistOptions {
    pub mesh: Mesh,
    pub kind: Kind,
    pub device: Device,
    /// How long a rank waits for a peer before failing the forward.
    pub timeout: std::time::Duration,
    /// Verify that every TP rank computed the same edit and emitted the same
    /// outputs (an xxh3 hash of each edited activation and each output; on by
    /// default in every build: a plugin that differs per rank fails with
    /// `Diverged` instead of silently mixing shards).
    pub check_edits: bool,
    /// Caps on what all hooks of a forward pass may emit and log, per rank.
    pub forward_limits: crate::hooks::ForwardLimits,
    /// Run the tensor-parallel collectives through NCCL (CUDA devices, build
    /// with the `nccl` feature); refused cleanly where NCCL or a GPU is missing.
    pub nccl: bool,
    /// libtorch intra-op threads of each rank's thread (thread backend):
    /// by default the machine's cores shared out over the ranks.
    pub threads_per_rank: Option<i32>,
}

impl DistOptions {
    pub fn new(pp: usize, dp: usize, tp: usize) -> Result<DistOptions, FlexError> {
        Ok(DistOptions {
            mesh: Mesh::new(pp * dp * tp, pp, dp, tp)?,
            kind: Kind::Float,
            device: Device::Cpu,
            timeout: std::time::Duration::from_secs(60),
            check_edits: true,
            forward_limits: crate::hooks::ForwardLimits::default(),
            nccl: false,
            threads_per_rank: None,
        })
    }
}

/// One rank of a distributed model.
pub struct RankEngine {
    model: Model,
    mesh: Mesh,
    coords: Coords,
    groups: distributed::Groups,
    splits: HashMap<String, Option<TpSplit>>,
    batched: HashSet<String>,
    check_edits: bool,
    limits: crate::hooks::ForwardLimits,
    /// The per-forward budget carried across the steps of a generation.
    budget: Option<RunBudget>,
    vocab: i64,
    /// This rank's key/value cache while generating.
    cache: Option<KvCache>,
}

fn failure(e: ModelError, rank: usize) -> RankFailure {
    match e {
        ModelError::Hook(b) => match b.downcast::<HookError>() {
            Ok(h) => RankFailure::Hook(*h),
            Err(other) => RankFailure::Model {
                rank,
                message: other.to_string(),
            },
        },
        ModelError::Comm(b) => match b.downcast::<CommError>() {
            Ok(c) => RankFailure::Comm(*c),
            Err(other) => RankFailure::Model {
                rank,
                message: other.to_string(),
            },
        },
        ModelError::Input(m) => RankFailure::Input(m),
        other => RankFailure::Model {
            rank,
            message: other.to_string(),
        },
    }
}

impl RankEngine {
    /// Join the mesh over `world` (collective) and load this rank's shard of
    /// the model in `dir`. Fails on every rank if it fails on any.
    pub fn new(
        dir: &Path,
        opts: &DistOptions,
        world: Box<dyn Communicator>,
    ) -> Result<RankEngine, FlexError> {
        let mesh = opts.mesh;
        #[allow(unused_mut)]
        let mut groups = mesh.groups(world)?;
        let rank = groups.world.rank();
        let coords = mesh.coords(rank);
        // One GPU per rank, round robin from the one asked for.
        let device = match opts.device {
            Device::Cuda(base) if tch::Cuda::is_available() => {
                Device::Cuda((base + rank) % tch::Cuda::device_count().max(1) as usize)
            }
            d => d,
        };
        if opts.nccl {
            #[cfg(feature = "nccl")]
            {
                let Device::Cuda(ordinal) = device else {
                    return Err(FlexError::Input("--nccl needs a CUDA device".into()));
                };
                let tp = distributed::nccl::NcclComm::new(groups.tp, ordinal)?;
                groups.tp = Box::new(tp);
            }
            #[cfg(not(feature = "nccl"))]
            return Err(FlexError::Comm(CommError::Unavailable(
                "this build has no NCCL backend: rebuild with `--features nccl`".into(),
            )));
        }
        let shard = Shard {
            tp_rank: coords.tp as i64,
            tp_size: mesh.tp as i64,
            pp_rank: coords.pp as i64,
            pp_size: mesh.pp as i64,
        };
        let loaded = Model::load_shard(dir, opts.kind, device, &shard);
        // Every rank learns whether every rank loaded.
        let status = match &loaded {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        let all = groups.world.all_gather_bytes(Bytes::from(status))?;
        if let Some((r, msg)) = all.iter().enumerate().find(|(_, b)| !b.is_empty()) {
            return match loaded {
                Err(e) if r == rank => Err(FlexError::Model(e)),
                _ => Err(FlexError::Rank {
                    rank: r,
                    message: String::from_utf8_lossy(msg).into_owned(),
                }),
            };
        }
        let model = loaded.map_err(FlexError::Model)?;
        let points = model.points(1, 1);
        let splits = points
            .iter()
            .map(|p| (p.name.clone(), p.tp_split))
            .collect();
        let vocab = points
            .last()
            .and_then(|p| p.shape.last().copied())
            .unwrap_or(0);
        let twice = model.points(2, 1);
        let batched = points
            .iter()
            .zip(&twice)
            .filter(|(a, b)| a.shape.first() != b.shape.first())
            .map(|(a, _)| a.name.clone())
            .collect();
        Ok(RankEngine {
            model,
            mesh,
            coords,
            groups,
            splits,
            batched,
            check_edits: opts.check_edits,
            limits: opts.forward_limits,
            budget: None,
            vocab,
            cache: None,
        })
    }

    pub fn mesh(&self) -> Mesh {
        self.mesh
    }

    pub fn global_rank(&self) -> usize {
        self.groups.world.rank()
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Every hook point of the (whole) model, logical shapes.
    pub fn points(&self, batch: i64, seq: i64) -> Vec<PointInfo> {
        self.model.points(batch, seq)
    }

    /// Bytes this rank has received from its TP group so far.
    pub fn tp_bytes_received(&self) -> u64 {
        self.groups.tp.bytes_received()
    }

    fn rank_info(&self) -> RankInfo {
        let m = &self.mesh;
        RankInfo {
            tp_rank: self.coords.tp as u32,
            tp_size: m.tp as u32,
            pp_rank: self.coords.pp as u32,
            pp_size: m.pp as u32,
            dp_rank: self.coords.dp as u32,
            dp_size: m.dp as u32,
            global_rank: self.global_rank() as u32,
            world_size: m.world() as u32,
        }
    }

    /// This rank's part of forward number `index` (the same on every rank)
    /// on the full batch `ids` (`[batch, seq]`, the same on every rank).
    /// Returns the merged output at global rank 0, `None` elsewhere; an
    /// error on any rank is returned on every rank.
    pub fn forward(
        &mut self,
        ids: &Tensor,
        hooks: &HookSet,
        groups: &Groups,
        index: u64,
    ) -> Result<Option<ForwardOutput>, FlexError> {
        self.forward_regs(ids, &hooks.regs, groups, index, None)
    }

    /// Generate after `ids` (the same on every rank), forward numbers
    /// `first_index..`: every rank runs each step; global rank 0 chooses the
    /// next tokens, calls `on_token`, and shares them; rank 0 returns the
    /// output, the others `None`.
    pub fn generate(
        &mut self,
        ids: &Tensor,
        hooks: &HookSet,
        groups: &Groups,
        first_index: u64,
        opts: &GenerateOptions,
        on_token: impl FnMut(usize, &[i64]),
    ) -> Result<Option<GenerateOutput>, FlexError> {
        self.generate_regs(ids, &hooks.regs, groups, first_index, opts, on_token)
    }

    pub(crate) fn generate_regs(
        &mut self,
        ids: &Tensor,
        regs: &[Registration],
        groups: &Groups,
        first_index: u64,
        opts: &GenerateOptions,
        mut on_token: impl FnMut(usize, &[i64]),
    ) -> Result<Option<GenerateOutput>, FlexError> {
        let ids = generate::prompt_ids(ids)?;
        let b = ids.size()[0] as usize;
        let root = self.global_rank() == 0;
        let mut chooser = generate::Chooser::new(opts, b)?;
        self.cache = Some(KvCache::new());
        let mut tokens = ids.to_device(Device::Cpu);
        let mut new_tokens = vec![Vec::new(); b];
        let mut outputs = std::collections::BTreeMap::new();
        let mut producers = std::collections::BTreeMap::new();
        let mut logs = Vec::new();
        let mut input = ids;
        self.budget = Some(RunBudget::new(self.limits));
        let result = (|| {
            for step in 0..opts.max_new_tokens {
                let position = self.cache.as_ref().map_or(0, |c| c.len()) as u64;
                let step_at = GenStep {
                    step: step as u64,
                    position,
                };
                let out = self.forward_regs(
                    &input,
                    regs,
                    groups,
                    first_index + step as u64,
                    Some(step_at),
                );
                let out = match out {
                    Ok(o) => o,
                    Err(FlexError::Hook { error, partial }) => {
                        // Earlier steps' outputs are kept too.
                        let mut all = std::mem::take(&mut outputs);
                        for (k, v) in partial.into_inner().unwrap_or_default() {
                            all.insert(generate::step_key(step, &k), v);
                        }
                        return Err(FlexError::Hook {
                            error,
                            partial: std::sync::Mutex::new(all),
                        });
                    }
                    Err(e) => return Err(e),
                };
                // Rank 0 picks the next tokens and tells everyone.
                let msg = match out {
                    Some(o) if root => {
                        for (k, v) in o.outputs {
                            outputs.insert(generate::step_key(step, &k), v);
                        }
                        for (k, v) in o.producers {
                            producers.insert(generate::step_key(step, &k), v);
                        }
                        logs.extend(o.logs);
                        let next = chooser.next(&o.logits)?;
                        on_token(step, &next);
                        let mut m = vec![u8::from(chooser.all_done())];
                        m.extend(next.iter().flat_map(|t| t.to_le_bytes()));
                        Some(bytes::Bytes::from(m))
                    }
                    _ => None,
                };
                let m = self.groups.world.broadcast_bytes(msg, 0)?;
                let next: Vec<i64> = m[1..]
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect();
                if next.len() != b {
                    return Err(FlexError::Rank {
                        rank: 0,
                        message: format!("sent {} next tokens for {b} sequences", next.len()),
                    });
                }
                for (row, t) in new_tokens.iter_mut().zip(&next) {
                    row.push(*t);
                }
                let col = Tensor::from_slice(&next).view([b as i64, 1]);
                tokens = Tensor::cat(&[&tokens, &col], 1);
                if m[0] == 1 {
                    break;
                }
                input = col;
            }
            Ok(())
        })();
        self.cache = None;
        self.budget = None;
        result?;
        Ok(root.then_some(GenerateOutput {
            tokens,
            new_tokens,
            outputs,
            producers,
            logs,
        }))
    }

    /// This rank's part of a backward pass of `loss` (see
    /// `dist_backward`): every rank returns its own view.
    pub(crate) fn backward_regs(
        &mut self,
        ids: &Tensor,
        regs: &[Registration],
        groups: &Groups,
        index: u64,
        loss: &super::Loss,
    ) -> Result<super::RankBackward, FlexError> {
        let rank = self.rank_info();
        let cx = super::dist_backward::Ctx {
            model: &self.model,
            groups: &self.groups,
            coords: self.coords,
            mesh: self.mesh,
            splits: &self.splits,
            rank,
        };
        super::dist_backward::run(&cx, ids, regs, groups, index, loss)
    }

    pub(crate) fn forward_regs(
        &mut self,
        ids: &Tensor,
        regs: &[Registration],
        groups: &Groups,
        index: u64,
        step_at: Option<GenStep>,
    ) -> Result<Option<ForwardOutput>, FlexError> {
        let mut cache = if step_at.is_some() {
            self.cache.take()
        } else {
            None
        };
        let r = self.forward_cached(ids, regs, groups, index, step_at, cache.as_mut());
        if step_at.is_some() {
            self.cache = cache;
        }
        r
    }

    fn forward_cached(
        &mut self,
        ids: &Tensor,
        regs: &[Registration],
        groups: &Groups,
        index: u64,
        step_at: Option<GenStep>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Option<ForwardOutput>, FlexError> {
        let g = &self.groups;
        for c in [&g.world, &g.tp, &g.dp, &g.pp] {
            c.set_epoch(index);
        }
        let me = g.world.rank();
        let (pp, c) = (self.mesh.pp, self.coords);
        let mut local_batch = 0;
        let mut site_out = None;
        let limits = self.limits;
        let mut carried = if step_at.is_some() {
            self.budget.take()
        } else {
            None
        };
        let mut budget_out = None;
        let result: Result<Option<Tensor>, RankFailure> = (|| {
            let size = ids.size();
            let [b, _s] = size[..] else {
                return Err(RankFailure::Input(format!(
                    "input_ids must be [batch, seq], got {size:?}"
                )));
            };
            if ids.kind() != Kind::Int64 {
                return Err(RankFailure::Input(format!(
                    "input_ids must be int64, got {:?}",
                    ids.kind()
                )));
            }
            // Checked here: a vocabulary-parallel embedding would turn an
            // out-of-range id into zeros instead of an error.
            if ids.numel() > 0 {
                let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
                if lo < 0 || hi >= self.vocab {
                    return Err(RankFailure::Input(format!(
                        "token ids must be in 0..{}, got {}",
                        self.vocab,
                        if lo < 0 { lo } else { hi }
                    )));
                }
            }
            if b < self.mesh.dp as i64 {
                return Err(RankFailure::Input(format!(
                    "a batch of {b} cannot be split over {} data-parallel replicas",
                    self.mesh.dp
                )));
            }
            let (start, rows) = balanced(b, self.mesh.dp as i64, c.dp as i64);
            local_batch = rows;
            let local_ids = ids.narrow(0, start, rows);
            let hidden = if c.pp > 0 {
                let msg = g.pp.recv_bytes(c.pp - 1).map_err(RankFailure::Comm)?;
                Some(decode_stage(&msg, me)?.to_device(self.model.device()))
            } else {
                None
            };
            let mut site = Site::new(regs, groups, index, None, self.rank_info());
            site.generation = step_at;
            site.budget = carried.take().unwrap_or_else(|| RunBudget::new(limits));
            let mut site = DistSite::new(
                site,
                g.tp.as_ref(),
                &self.splits,
                self.check_edits,
                me as u32,
            );
            let out = self.model.forward_stage(
                &local_ids,
                hidden,
                &mut site,
                &TpAdapter(g.tp.as_ref()),
                cache.as_deref_mut(),
            );
            // Generating: the per-forward budget spans every step.
            budget_out = Some(std::mem::take(&mut site.inner.budget));
            site_out = Some((
                site.inner.outputs,
                site.inner.producers,
                site.inner.logs,
                site.gathered,
            ));
            let out = out.map_err(|e| failure(e, me))?;
            if c.pp + 1 == pp && self.mesh.tp > 1 {
                // Vocab-parallel logits: whole at TP rank 0 only.
                return match g.tp.gather(&out, 0).map_err(RankFailure::Comm)? {
                    Some(parts) => Ok(Some(Tensor::cat(&parts, -1).to_device(self.model.device()))),
                    None => Ok(None),
                };
            }
            Ok(Some(out))
        })();
        if step_at.is_some() {
            self.budget = budget_out;
        }
        // Pass the hidden state (or the failure) to the next stage.
        let mut result = result;
        if c.pp + 1 < pp {
            let msg = encode_stage(&result);
            if let Err(e) = g.pp.send_bytes(msg, c.pp + 1) {
                result = Err(RankFailure::Comm(e));
            }
        }
        if let Err(f) = &result
            && !matches!(f, RankFailure::Hook(_) | RankFailure::Input(_))
        {
            // Not an outcome the TP group agreed on: let peers waiting on
            // this rank fail now rather than at their timeout.
            g.tp.abort(&format!("{f:?}"));
        }
        // Every rank learns every rank's outcome.
        let status = serde_json::to_vec(&result.as_ref().err()).unwrap_or_default();
        let statuses = g.world.all_gather_bytes(Bytes::from(status))?;
        let failures: Vec<Option<RankFailure>> = statuses
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap_or(None))
            .collect();
        let failed = RankFailure::pick(failures);
        // Results reach global rank 0, also from a failed forward.
        let (outputs, producers, logs, gathered) = site_out.unwrap_or_default();
        let logits = match (&result, c.pp + 1 == pp && c.tp == 0) {
            (Ok(Some(t)), true) => Some(t.shallow_clone()),
            _ => None,
        };
        let report = RankReport {
            coords: c,
            batch: local_batch,
            outputs,
            producers,
            logs,
            gathered,
            logits,
        };
        let bytes = report.encode().map_err(|m| FlexError::Rank {
            rank: me,
            message: m,
        })?;
        let gathered = g.world.gather_bytes(bytes, 0)?;
        let merged = match gathered {
            Some(all) => {
                let mut reports = Vec::with_capacity(all.len());
                for (r, b) in all.iter().enumerate() {
                    reports.push(RankReport::decode(b).map_err(|message| FlexError::Rank {
                        rank: r,
                        message: format!("malformed report: {message}"),
                    })?);
                }
                Some(merge(reports, &self.mesh, &self.batched))
            }
            None => None,
        };
        if let Some(f) = failed {
            let partial = merged.map(|m| m.outputs).unwrap_or_default();
            return Err(match f {
                RankFailure::Hook(error) => FlexError::Hook {
                    error,
                    partial: std::sync::Mutex::new(partial),
                },
                RankFailure::Input(m) => FlexError::Input(m),
                RankFailure::Model { rank, message } => FlexError::Rank { rank, message },
                RankFailure::Comm(e) => FlexError::Comm(e),
            });
        }
        Ok(match merged {
            Some(m) => Some(ForwardOutput {
                logits: m.logits.ok_or_else(|| FlexError::Rank {
                    rank: me,
                    message: "no logits reached rank 0".into(),
                })?,
                outputs: m.outputs,
                producers: m.producers,
                logs: m.logs,
                forward_index: index,
                gathered_bytes: m.gathered,
            }),
            None => None,
        })
    }
}

/// The message between pipeline stages: the hidden state, or why there is none.
fn encode_stage(r: &Result<Option<Tensor>, RankFailure>) -> Bytes {
    let mut out = Vec::new();
    match r {
        Ok(Some(t)) => match distributed::wire::encode(t) {
            Ok(b) => {
                out.push(0);
                out.extend_from_slice(&b);
            }
            Err(m) => {
                out.push(1);
                out.extend(serde_json::to_vec(&RankFailure::Input(m)).unwrap_or_default());
            }
        },
        Ok(None) => out.push(2),
        Err(f) => {
            out.push(1);
            out.extend(serde_json::to_vec(f).unwrap_or_default());
        }
    }
    Bytes::from(out)
}

fn decode_stage(b: &[u8], me: usize) -> Result<Tensor, RankFailure> {
    let bad = |m: String| RankFailure::Model {
        rank: me,
        message: format!("malformed message from the previous stage: {m}"),
    };
    match b.first() {
        Some(0) => distributed::wire::decode(&b[1..]).map_err(bad),
        Some(1) => Err(serde_json::from_slice(&b[1..]).map_err(|e| bad(e.to_string()))?),
        _ => Err(bad("empty".into())),
    }
}
