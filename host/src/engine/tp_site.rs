//! The [`HookSite`] of one rank of a forward on any mesh: at a hooked point
//! it gathers the logical activation from the tensor-parallel group (only the
//! slice the hooks declared they read, when they all read the same slice and
//! edit nothing), runs the hooks on it and continues with this rank's part of
//! the result. Where a hook may edit, the TP ranks agree on the outcome at
//! once (the same error everywhere, and, always, the same edit and the same
//! outputs by xxh3 hash: a plugin that computes something different on
//! different ranks fails every rank with `Diverged`); where every hook is
//! read-only, the error and the hashes wait for the end-of-forward exchange
//! ([`super::deferred`]): no extra round. Outputs are recorded at global rank 0 once
//! (TP rank 0 of each stage and replica): the hashes make sure the other TP
//! ranks' outputs, which are not kept, were the same.

use std::collections::{BTreeMap, HashMap};

use tch::Tensor;
use xxhash_rust::xxh3::Xxh3;

use super::deferred::{At, Digest};
use super::site::Site;
use crate::distributed::layout::{self, Range1};
use crate::distributed::{CommError, Communicator};
use crate::hooks::{DimRange, EditMode, HookError, HookErrorKind};
use crate::models::{HookSite, ModelError, TpSplit};

/// What a TP rank reports after running the hooks at a point.
#[derive(serde::Serialize, serde::Deserialize)]
enum Outcome {
    Ok {
        /// xxh3 of the edited logical activation (`None`: not edited).
        edit: Option<u64>,
        /// xxh3 of the outputs the hooks emitted here (keys, dtypes,
        /// shapes, values).
        emits: u64,
    },
    /// The first failure this rank knows of (also one carried from an
    /// earlier read-only point) and where it happened.
    Failed(HookError, At),
}

/// A hook failure at an agreement round: the error every TP rank returns
/// and where in the forward it happened (see [`super::deferred`]).
pub(crate) struct HookFailure {
    pub at: At,
    pub error: ModelError,
}

impl From<HookFailure> for ModelError {
    fn from(f: HookFailure) -> ModelError {
        f.error
    }
}

/// Who takes part in an agreement round and how.
pub(crate) struct Agreement<'c> {
    pub tp: &'c dyn Communicator,
    pub global_rank: u32,
    /// Compare the hashes of edits and outputs too.
    pub check: bool,
    /// This rank's pipeline stage.
    pub stage: usize,
}

pub(crate) struct TpSite<'a, 'c> {
    pub inner: Site<'a>,
    agreement: Agreement<'c>,
    splits: &'c HashMap<String, Option<TpSplit>>,
    /// Bytes received from other ranks to build hook views (as sent: data
    /// and message headers), per point.
    pub gathered: BTreeMap<String, u64>,
    /// The first failure at a read-only point, left for the end of the
    /// forward (or the next agreement round).
    pub deferred: Option<(At, HookError)>,
    /// Where the hook failure that ended this rank's forward happened.
    pub failed_at: Option<At>,
    /// Hashes of what read-only points emitted (with `check_edits`).
    pub digests: Vec<Digest>,
}

fn comm(e: CommError) -> ModelError {
    ModelError::Comm(Box::new(e))
}

fn to_range(r: &DimRange) -> Option<Range1> {
    (*r != DimRange::ALL).then_some(Range1 {
        start: r.start,
        stop: r.stop,
        step: r.step as i64,
    })
}

impl<'a, 'c> TpSite<'a, 'c> {
    pub fn new(
        inner: Site<'a>,
        agreement: Agreement<'c>,
        splits: &'c HashMap<String, Option<TpSplit>>,
    ) -> Self {
        TpSite {
            inner,
            agreement,
            splits,
            gathered: BTreeMap::new(),
            deferred: None,
            failed_at: None,
            digests: Vec::new(),
        }
    }

    /// Whether every hook at `point` is read-only.
    fn read_only(&self, point: &str) -> bool {
        self.inner
            .registrations(point)
            .iter()
            .all(|r| r.hook.access().mode == EditMode::ReadOnly)
    }

    /// The slice every hook at `point` reads, if they all declared the same
    /// one and none edits (and the batch is not padded).
    fn common_read_slice(&self, point: &str) -> Option<Vec<Option<Range1>>> {
        if self.inner.real.is_some() {
            // A padded batch: a declared slice of tokens may mean each row's
            // real tokens (`tokens.emit-real`), not the padded positions.
            return None;
        }
        let regs = self.inner.registrations(point);
        let first = regs.first()?.hook.access();
        let reads = first.reads.clone()?;
        let same = regs.iter().all(|r| {
            let a = r.hook.access();
            a.mode == EditMode::ReadOnly && a.reads.as_ref() == Some(&reads)
        });
        same.then(|| reads.iter().map(to_range).collect())
    }

    fn logical_view(
        &mut self,
        point: &str,
        local: &Tensor,
        split: TpSplit,
    ) -> Result<Tensor, ModelError> {
        let tp = self.agreement.tp;
        let gathered = match self.common_read_slice(point) {
            Some(reads) => layout::gather_slice(tp, local, split, &reads).map_err(comm)?,
            None => None,
        };
        let (t, bytes) = match gathered {
            Some(x) => x,
            None => layout::gather(tp, local, split).map_err(comm)?,
        };
        *self.gathered.entry(point.to_string()).or_default() += bytes;
        Ok(t)
    }
}

/// Agree with the other TP ranks on the outcome of the hooks at `point`: the
/// first failure in forward order (lowest failing rank on a tie)
/// everywhere, or `Diverged` if the edits' or outputs' checksums differ.
fn agree(
    a: &Agreement<'_>,
    plugins: &[&str],
    point: &str,
    here: At,
    outcome: Outcome,
) -> Result<(), HookFailure> {
    let (tp, global_rank) = (a.tp, a.global_rank);
    let internal = |e: String| HookFailure {
        at: here,
        error: ModelError::Internal(e),
    };
    let bytes = serde_json::to_vec(&outcome).map_err(|e| internal(e.to_string()))?;
    let all = tp.all_gather_bytes(bytes.into()).map_err(|e| HookFailure {
        at: here,
        error: comm(e),
    })?;
    let mut outcomes = Vec::with_capacity(all.len());
    for (r, b) in all.iter().enumerate() {
        let o: Outcome = serde_json::from_slice(b).map_err(|e| HookFailure {
            at: here,
            error: comm(CommError::Protocol {
                op: "hook outcome".into(),
                rank: global_rank as usize,
                peer: tp.global_rank(r),
                message: e.to_string(),
            }),
        })?;
        outcomes.push(o);
    }
    if let Some((e, at)) = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Failed(e, at) => Some((e, *at)),
            Outcome::Ok { .. } => None,
        })
        .min_by_key(|(_, at)| *at)
    {
        return Err(HookFailure {
            at,
            error: ModelError::Hook(Box::new(e.clone())),
        });
    }
    let sums: Vec<(Option<u64>, u64)> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Ok { edit, emits } => (*edit, *emits),
            Outcome::Failed(..) => (None, 0),
        })
        .collect();
    let show = |v: Vec<String>| v.join(", ");
    let message = if sums.iter().any(|s| s.0 != sums[0].0) {
        Some(format!(
            "edit hashes by TP rank: [{}]",
            show(
                sums.iter()
                    .map(|s| s.0.map_or("unedited".into(), |h| format!("{h:016x}")))
                    .collect()
            )
        ))
    } else if sums.iter().any(|s| s.1 != sums[0].1) {
        Some(format!(
            "output hashes by TP rank: [{}]",
            show(sums.iter().map(|s| format!("{:016x}", s.1)).collect())
        ))
    } else {
        None
    };
    if let Some(message) = message {
        return Err(HookFailure {
            at: here,
            error: ModelError::Hook(Box::new(HookError {
                plugin: plugins.join(", "),
                hook_point: point.to_string(),
                rank: global_rank,
                kind: HookErrorKind::Diverged { message },
            })),
        });
    }
    Ok(())
}

/// Run the hooks at `point` on the `logical` view of this rank's `local`
/// part, agree with the TP group on the outcome (with `check`, on the hashes
/// of the edit and the outputs too; `carried`: a failure this rank kept from
/// an earlier read-only point, reported in this round), and return the
/// tensor the forward continues with (this rank's part of the edited view,
/// or `local` unchanged) and whether a hook edited it. On a TP group of one,
/// the logical view is `local` itself and nothing is exchanged.
pub(crate) fn run_and_write_back(
    site: &mut Site<'_>,
    a: &Agreement<'_>,
    point: &str,
    split: Option<TpSplit>,
    (local, logical): (Tensor, Tensor),
    carried: Option<&(At, HookError)>,
) -> Result<(Tensor, bool), HookFailure> {
    let seq = site.point_seq;
    let place = |hook| At {
        stage: a.stage,
        point: seq,
        hook,
    };
    let result = site.run_hooks(point, logical);
    if a.tp.size() > 1 {
        let outcome = match (&result, carried) {
            (_, Some((at, e))) => Outcome::Failed(e.clone(), *at),
            (Ok((t, edited)), None) => Outcome::Ok {
                edit: (a.check && *edited).then(|| {
                    let mut h = Xxh3::new();
                    hash_tensor(&mut h, t);
                    h.digest()
                }),
                emits: if a.check { emits_hash(site) } else { 0 },
            },
            (Err((i, e)), None) => Outcome::Failed(e.clone(), place(*i)),
        };
        let plugins: Vec<&str> = site
            .registrations(point)
            .iter()
            .map(|r| r.hook.name())
            .collect();
        agree(a, &plugins, point, place(0), outcome)?;
    }
    let (t, edited) = result.map_err(|(i, e)| HookFailure {
        at: place(i),
        error: ModelError::Hook(Box::new(e)),
    })?;
    let t = match split {
        Some(s) if edited => layout::local_part(&t, s, a.tp.rank(), a.tp.size()).contiguous(),
        Some(_) => local,
        None => t,
    };
    Ok((t, edited))
}

/// Feed a tensor's dtype, shape and values into `h` (values as stored: the
/// same bits give the same hash).
fn hash_tensor(h: &mut Xxh3, t: &Tensor) {
    h.update(format!("{:?}{:?}", t.kind(), t.size()).as_bytes());
    let c = if t.device() == tch::Device::Cpu {
        t.contiguous()
    } else {
        t.to_device(tch::Device::Cpu).contiguous()
    };
    let n = c.numel() * c.kind().elt_size_in_bytes();
    if n > 0 {
        // SAFETY: `c` is a contiguous CPU tensor of `n` bytes, alive here.
        let b = unsafe { std::slice::from_raw_parts(c.data_ptr() as *const u8, n) };
        h.update(b);
    }
}

/// Hash of what the last `run_hooks` emitted.
fn emits_hash(site: &Site<'_>) -> u64 {
    let mut h = Xxh3::new();
    for k in &site.last_emitted {
        h.update(k.as_bytes());
        if let Some(t) = site.outputs.get(k) {
            hash_tensor(&mut h, t);
        }
    }
    h.digest()
}

impl HookSite for TpSite<'_, '_> {
    fn active(&self, point: &str) -> bool {
        self.inner.interrupted() || self.inner.hooked(point) || self.inner.stops_at(point)
    }

    fn fire(&mut self, point: &str, local: Tensor) -> Result<Tensor, ModelError> {
        if self.inner.interrupted() {
            return Err(ModelError::Interrupted);
        }
        let t = self.run_point(point, local)?;
        if self.inner.stops_at(point) {
            return Err(ModelError::Stopped(point.to_string()));
        }
        Ok(t)
    }
}

impl TpSite<'_, '_> {
    /// The hooks at `point` on this rank's `local` part, through the
    /// logical view; the tensor the forward continues with.
    pub fn run_point(&mut self, point: &str, local: Tensor) -> Result<Tensor, ModelError> {
        if !self.inner.hooked(point) {
            return Ok(local);
        }
        let tp_size = self.agreement.tp.size();
        let split = if tp_size > 1 {
            self.splits.get(point).copied().flatten()
        } else {
            None
        };
        let logical = match split {
            Some(s) => self.logical_view(point, &local, s)?,
            None => local.shallow_clone(),
        };
        if tp_size > 1 && self.read_only(point) {
            self.run_read_only(point, &logical);
            return Ok(local);
        }
        let carried = self.deferred.take();
        match run_and_write_back(
            &mut self.inner,
            &self.agreement,
            point,
            split,
            (local, logical),
            carried.as_ref(),
        ) {
            Ok((t, _)) => Ok(t),
            Err(f) => {
                self.failed_at = Some(f.at);
                Err(f.error)
            }
        }
    }

    /// Read-only hooks on a TP group: no agreement round; the first failure
    /// and the outputs' hash wait for the end of the forward.
    fn run_read_only(&mut self, point: &str, logical: &Tensor) {
        let (stage, seq) = (self.agreement.stage, self.inner.point_seq);
        let at = |hook| At {
            stage,
            point: seq,
            hook,
        };
        let here = at(0);
        if let Some((i, e)) = self.inner.run_read_only(point, logical) {
            let failed = at(i);
            self.deferred.get_or_insert((failed, e));
        }
        if self.agreement.check {
            let plugins: Vec<&str> = self
                .inner
                .registrations(point)
                .iter()
                .map(|r| r.hook.name())
                .collect();
            self.digests.push(Digest {
                at: here,
                point: point.to_string(),
                plugins: plugins.join(", "),
                emits: emits_hash(&self.inner),
            });
        }
    }
}
