//! The [`HookSite`] of one rank of a forward on any mesh: at a hooked point
//! it gathers the logical activation from the tensor-parallel group (only the
//! slice the hooks declared they read, when they all read the same slice and
//! edit nothing), runs the hooks on it, agrees with the other TP ranks on the
//! outcome (the same error everywhere, and, always, the same edit and the
//! same outputs by xxh3 hash: a plugin that computes something different on
//! different ranks fails every rank with `Diverged`) and continues with this
//! rank's part of the result. Outputs are recorded at global rank 0 once
//! (TP rank 0 of each stage and replica): the hashes make sure the other TP
//! ranks' outputs, which are not kept, were the same.

use std::collections::{BTreeMap, HashMap};

use tch::Tensor;
use xxhash_rust::xxh3::Xxh3;

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
    Failed(HookError),
}

pub(crate) struct TpSite<'a, 'c> {
    pub inner: Site<'a>,
    tp: &'c dyn Communicator,
    splits: &'c HashMap<String, Option<TpSplit>>,
    check_edits: bool,
    global_rank: u32,
    /// Bytes received from other ranks to build hook views (as sent: data
    /// and message headers), per point.
    pub gathered: BTreeMap<String, u64>,
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
        tp: &'c dyn Communicator,
        splits: &'c HashMap<String, Option<TpSplit>>,
        check_edits: bool,
        global_rank: u32,
    ) -> Self {
        TpSite {
            inner,
            tp,
            splits,
            check_edits,
            global_rank,
            gathered: BTreeMap::new(),
        }
    }

    /// The slice every hook at `point` reads, if they all declared the same
    /// one and none edits.
    fn common_read_slice(&self, point: &str) -> Option<Vec<Option<Range1>>> {
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
        let gathered = match self.common_read_slice(point) {
            Some(reads) => layout::gather_slice(self.tp, local, split, &reads).map_err(comm)?,
            None => None,
        };
        let (t, bytes) = match gathered {
            Some(x) => x,
            None => layout::gather(self.tp, local, split).map_err(comm)?,
        };
        *self.gathered.entry(point.to_string()).or_default() += bytes;
        Ok(t)
    }
}

/// Agree with the other TP ranks on the outcome of the hooks at `point`: the
/// lowest failing rank's error everywhere, or `Diverged` if the edits'
/// checksums differ.
fn agree(
    tp: &dyn Communicator,
    global_rank: u32,
    plugins: &[&str],
    point: &str,
    outcome: Outcome,
) -> Result<(), ModelError> {
    let bytes = serde_json::to_vec(&outcome).map_err(|e| ModelError::Internal(e.to_string()))?;
    let all = tp.all_gather_bytes(bytes.into()).map_err(comm)?;
    let mut outcomes = Vec::with_capacity(all.len());
    for (r, b) in all.iter().enumerate() {
        let o: Outcome = serde_json::from_slice(b).map_err(|e| {
            comm(CommError::Protocol {
                op: "hook outcome".into(),
                rank: global_rank as usize,
                peer: tp.global_rank(r),
                message: e.to_string(),
            })
        })?;
        outcomes.push(o);
    }
    if let Some(e) = outcomes.iter().find_map(|o| match o {
        Outcome::Failed(e) => Some(e.clone()),
        Outcome::Ok { .. } => None,
    }) {
        return Err(ModelError::Hook(Box::new(e)));
    }
    let sums: Vec<(Option<u64>, u64)> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Ok { edit, emits } => (*edit, *emits),
            Outcome::Failed(_) => (None, 0),
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
        return Err(ModelError::Hook(Box::new(HookError {
            plugin: plugins.join(", "),
            hook_point: point.to_string(),
            rank: global_rank,
            kind: HookErrorKind::Diverged { message },
        })));
    }
    Ok(())
}

/// Run the hooks at `point` on the `logical` view of this rank's `local`
/// part, agree with the TP group on the outcome (with `check`, on the hashes
/// of the edit and the outputs too), and return the tensor the forward
/// continues with (this rank's part of the edited view, or `local`
/// unchanged) and whether a hook edited it. On a TP group of one, the
/// logical view is `local` itself and nothing is exchanged.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_and_write_back(
    site: &mut Site<'_>,
    tp: &dyn Communicator,
    global_rank: u32,
    point: &str,
    split: Option<TpSplit>,
    local: Tensor,
    logical: Tensor,
    check: bool,
) -> Result<(Tensor, bool), ModelError> {
    let result = site.run_hooks(point, logical);
    if tp.size() > 1 {
        let outcome = match &result {
            Ok((t, edited)) => Outcome::Ok {
                edit: (check && *edited).then(|| {
                    let mut h = Xxh3::new();
                    hash_tensor(&mut h, t);
                    h.digest()
                }),
                emits: if check { emits_hash(site) } else { 0 },
            },
            Err(e) => Outcome::Failed(e.clone()),
        };
        let plugins: Vec<&str> = site
            .registrations(point)
            .iter()
            .map(|r| r.hook.name())
            .collect();
        agree(tp, global_rank, &plugins, point, outcome)?;
    }
    let (t, edited) = result.map_err(|e| ModelError::Hook(Box::new(e)))?;
    let t = match split {
        Some(s) if edited => layout::local_part(&t, s, tp.rank(), tp.size()).contiguous(),
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
        self.inner.hooked(point) || self.inner.stops_at(point)
    }

    fn fire(&mut self, point: &str, local: Tensor) -> Result<Tensor, ModelError> {
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
        let tp_size = self.tp.size();
        let split = if tp_size > 1 {
            self.splits.get(point).copied().flatten()
        } else {
            None
        };
        let logical = match split {
            Some(s) => self.logical_view(point, &local, s)?,
            None => local.shallow_clone(),
        };
        let (t, _) = run_and_write_back(
            &mut self.inner,
            self.tp,
            self.global_rank,
            point,
            split,
            local,
            logical,
            self.check_edits,
        )?;
        Ok(t)
    }
}
