//! The [`HookSite`] of one rank in a distributed forward: at a hooked point
//! it gathers the logical activation from the tensor-parallel group (only the
//! slice the hooks declared they read, when they all read the same slice and
//! edit nothing), runs the hooks on it, agrees with the other TP ranks on the
//! outcome (the same error everywhere; in debug mode, the same edit by
//! checksum) and continues with this rank's part of the result.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};
use tch::Tensor;

use super::site::Site;
use crate::distributed::layout::{self, Range1};
use crate::distributed::{CommError, Communicator, wire};
use crate::hooks::{DimRange, EditMode, HookError, HookErrorKind};
use crate::models::{HookSite, ModelError, TpSplit};

/// What a TP rank reports after running the hooks at a point.
#[derive(serde::Serialize, serde::Deserialize)]
enum Outcome {
    Ok { checksum: Option<String> },
    Failed(HookError),
}

pub(crate) struct DistSite<'a, 'c> {
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

impl<'a, 'c> DistSite<'a, 'c> {
    pub fn new(
        inner: Site<'a>,
        tp: &'c dyn Communicator,
        splits: &'c HashMap<String, Option<TpSplit>>,
        check_edits: bool,
        global_rank: u32,
    ) -> Self {
        DistSite {
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
    let sums: Vec<&Option<String>> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Ok { checksum } => checksum,
            Outcome::Failed(_) => &None,
        })
        .collect();
    if sums.iter().any(|s| *s != sums[0]) {
        return Err(ModelError::Hook(Box::new(HookError {
            plugin: plugins.join(", "),
            hook_point: point.to_string(),
            rank: global_rank,
            kind: HookErrorKind::Diverged {
                message: format!(
                    "edit checksums by TP rank: {:?}",
                    sums.iter()
                        .map(|s| s.as_deref().map(|h| &h[..12]).unwrap_or("-"))
                        .collect::<Vec<_>>()
                ),
            },
        })));
    }
    Ok(())
}

/// Run the hooks at `point` on the `logical` view of this rank's `local`
/// part, agree with the TP group on the outcome (with `check`, on the edit's
/// checksum too), and return the tensor the forward continues with: this
/// rank's part of the edited view, or `local` unchanged.
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
) -> Result<Tensor, ModelError> {
    let result = site.run_hooks(point, logical);
    if tp.size() > 1 {
        let outcome = match &result {
            Ok((t, edited)) => Outcome::Ok {
                checksum: (check && *edited).then(|| checksum(t)),
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
    Ok(match split {
        Some(s) if edited => layout::local_part(&t, s, tp.rank(), tp.size()).contiguous(),
        Some(_) => local,
        None => t,
    })
}

fn checksum(t: &Tensor) -> String {
    match wire::encode(t) {
        Ok(b) => hex::encode(Sha256::digest(&b)),
        Err(e) => e,
    }
}

impl HookSite for DistSite<'_, '_> {
    fn active(&self, point: &str) -> bool {
        self.inner.hooked(point)
    }

    fn fire(&mut self, point: &str, local: Tensor) -> Result<Tensor, ModelError> {
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
        run_and_write_back(
            &mut self.inner,
            self.tp,
            self.global_rank,
            point,
            split,
            local,
            logical,
            self.check_edits,
        )
    }
}
