//! What read-only hooks leave for the end of a forward on a TP group of more
//! than one rank. Read-only hooks cannot change the activation, so the TP
//! ranks need not agree after each of them: a rank keeps its first failure
//! and (with `check_edits`) the hash of what each hooked point emitted, and
//! both travel with the end-of-forward outcome exchange that every rank
//! makes anyway. The rule that keeps this equal to one rank:
//!
//! - every TP rank calls the same hooks at the same points, whatever happened
//!   on any one of them (a failure at a read-only point does not stop the
//!   calls on that rank: its peers cannot know yet), so plugin instances see
//!   the same calls on every TP rank;
//! - the forward fails with the *first* failure in forward order, [`At`]:
//!   pipeline stage, hooked point, hook in call order; an editing point's
//!   agreement round reports a failure carried from an earlier read-only
//!   point, so every TP rank stops there with it;
//! - what was emitted and logged at or after that failure is dropped, so the
//!   partial outputs are those one rank would have kept.

use std::collections::BTreeMap;

use crate::distributed::Mesh;
use crate::hooks::{HookError, HookErrorKind};

/// Where in a forward a hook ran: stage, hooked point (counted in forward
/// order within the stage), hook (in call order at the point). Ordered as
/// the forward runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub(crate) struct At {
    pub stage: usize,
    pub point: u64,
    pub hook: usize,
}

impl At {
    /// Where nothing is known: after everything.
    pub const END: At = At {
        stage: usize::MAX,
        point: u64::MAX,
        hook: usize::MAX,
    };
}

/// The hash of what the hooks at one read-only point emitted on this rank.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Digest {
    pub at: At,
    pub point: String,
    pub plugins: String,
    pub emits: u64,
}

/// The first divergence between TP peers' digests, before `before`: the
/// `Diverged` error every rank reports, at its place in the forward. `all`
/// holds each global rank's digests.
pub(crate) fn divergence(mesh: &Mesh, all: &[Vec<Digest>], before: At) -> Option<(At, HookError)> {
    let mut first: Option<(At, HookError)> = None;
    for (rank, digests) in all.iter().enumerate() {
        let c = mesh.coords(rank);
        if c.tp != 0 {
            continue;
        }
        let peers: Vec<usize> = (0..mesh.tp)
            .map(|tp| mesh.rank_of(crate::distributed::Coords { tp, ..c }))
            .collect();
        if peers.iter().any(|&p| p >= all.len()) {
            continue;
        }
        for (i, d) in digests.iter().enumerate() {
            if d.at >= before || first.as_ref().is_some_and(|f| f.0 <= d.at) {
                break;
            }
            let hashes: Vec<Option<u64>> = peers
                .iter()
                .map(|&p| all[p].get(i).filter(|o| o.at == d.at).map(|o| o.emits))
                .collect();
            if hashes.iter().all(|h| *h == Some(d.emits)) {
                continue;
            }
            let shown: Vec<String> = hashes
                .iter()
                .map(|h| h.map_or("missing".into(), |h| format!("{h:016x}")))
                .collect();
            let odd = peers
                .iter()
                .zip(&hashes)
                .find(|(_, h)| **h != Some(d.emits))
                .map_or(rank, |(p, _)| *p);
            first = Some((
                d.at,
                HookError {
                    plugin: d.plugins.clone(),
                    hook_point: d.point.clone(),
                    rank: odd as u32,
                    kind: HookErrorKind::Diverged {
                        message: format!("output hashes by TP rank: [{}]", shown.join(", ")),
                    },
                },
            ));
            break;
        }
    }
    first
}

/// Drop what was emitted and logged at or after `at` (this rank being in
/// `stage`): `order` holds each output's and each log line's (point, hook).
pub(crate) fn retain_before<T>(
    outputs: &mut BTreeMap<String, T>,
    producers: &mut BTreeMap<String, String>,
    logs: &mut Vec<super::LogLine>,
    order: &Order,
    stage: usize,
    at: At,
) {
    let place = |&(point, hook): &(u64, usize)| At { stage, point, hook };
    let keep = |k: &String| order.outputs.get(k).is_none_or(|o| place(o) < at);
    outputs.retain(|k, _| keep(k));
    producers.retain(|k, _| keep(k));
    let mut i = 0;
    logs.retain(|_| {
        let kept = order.logs.get(i).is_none_or(|o| place(o) < at);
        i += 1;
        kept
    });
}

/// Where each output and log line of a forward came from: (hooked point in
/// forward order, hook in call order).
#[derive(Debug, Default)]
pub(crate) struct Order {
    pub outputs: BTreeMap<String, (u64, usize)>,
    pub logs: Vec<(u64, usize)>,
}
