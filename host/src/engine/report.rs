//! What each rank reports at the end of a distributed forward, and how
//! global rank 0 merges the reports into one [`ForwardOutput`].

use std::collections::{BTreeMap, HashSet};

use bytes::{BufMut, Bytes, BytesMut};
use tch::Tensor;

use super::deferred::At;
use crate::distributed::{CommError, Mesh, wire};
use crate::hooks::{HookError, LogLevel};

/// Why a rank's forward failed, in a form that travels between ranks.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum RankFailure {
    /// A hook's error, and where in the forward it happened.
    Hook(HookError, At),
    Input(String),
    Model {
        rank: usize,
        message: String,
    },
    Comm(CommError),
}

impl RankFailure {
    /// Which failure every rank reports when several did: a hook's error
    /// (the root cause; the others follow from it), then bad input, then a
    /// model error, then a communication error; among hook errors the first
    /// in forward order; ties go to the lowest rank.
    fn priority(&self) -> u8 {
        match self {
            RankFailure::Hook(..) => 0,
            RankFailure::Input(_) => 1,
            RankFailure::Model { .. } => 2,
            RankFailure::Comm(_) => 3,
        }
    }

    pub fn pick(all: Vec<Option<RankFailure>>) -> Option<RankFailure> {
        all.into_iter()
            .enumerate()
            .filter_map(|(i, f)| f.map(|f| (i, f)))
            .min_by_key(|(i, f)| {
                let at = match f {
                    RankFailure::Hook(_, at) => *at,
                    _ => At::END,
                };
                (f.priority(), at, *i)
            })
            .map(|(_, f)| f)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    pp: usize,
    dp: usize,
    tp: usize,
    /// Rows of the batch this rank's replica ran.
    batch: i64,
    /// Real tokens in those rows (all of their positions when unpadded).
    #[serde(default)]
    tokens: i64,
    #[serde(default)]
    padded: bool,
    outputs: Vec<String>,
    producers: BTreeMap<String, String>,
    logs: Vec<(String, String, LogLevel, String)>,
    gathered: BTreeMap<String, u64>,
    has_logits: bool,
}

/// One rank's contribution.
pub(crate) struct RankReport {
    pub coords: crate::distributed::Coords,
    pub batch: i64,
    /// Real tokens in this replica's rows (all positions when unpadded):
    /// outputs of tokens (`[tokens, ...]`) concatenate too.
    pub tokens: i64,
    /// The pass's batch was padded.
    pub padded: bool,
    pub outputs: BTreeMap<String, Tensor>,
    pub producers: BTreeMap<String, String>,
    pub logs: Vec<(String, String, LogLevel, String)>,
    pub gathered: BTreeMap<String, u64>,
    pub logits: Option<Tensor>,
}

fn put_chunk(out: &mut BytesMut, b: &[u8]) {
    out.put_u64_le(b.len() as u64);
    out.put_slice(b);
}

fn take_chunk<'a>(b: &'a [u8], at: &mut usize) -> Result<&'a [u8], String> {
    let len = b
        .get(*at..*at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or("truncated report")? as usize;
    *at += 8;
    let chunk = b.get(*at..*at + len).ok_or("truncated report")?;
    *at += len;
    Ok(chunk)
}

impl RankReport {
    pub fn encode(&self) -> Result<Bytes, String> {
        let header = Header {
            pp: self.coords.pp,
            dp: self.coords.dp,
            tp: self.coords.tp,
            batch: self.batch,
            tokens: self.tokens,
            padded: self.padded,
            outputs: self.outputs.keys().cloned().collect(),
            producers: self.producers.clone(),
            logs: self.logs.clone(),
            gathered: self.gathered.clone(),
            has_logits: self.logits.is_some(),
        };
        let mut out = BytesMut::new();
        put_chunk(
            &mut out,
            &serde_json::to_vec(&header).map_err(|e| e.to_string())?,
        );
        for t in self.outputs.values().chain(self.logits.iter()) {
            put_chunk(&mut out, &wire::encode(t)?);
        }
        Ok(out.freeze())
    }

    pub fn decode(b: &[u8]) -> Result<RankReport, String> {
        let mut at = 0;
        let header: Header =
            serde_json::from_slice(take_chunk(b, &mut at)?).map_err(|e| e.to_string())?;
        let mut outputs = BTreeMap::new();
        for k in &header.outputs {
            outputs.insert(k.clone(), wire::decode(take_chunk(b, &mut at)?)?);
        }
        let logits = if header.has_logits {
            Some(wire::decode(take_chunk(b, &mut at)?)?)
        } else {
            None
        };
        Ok(RankReport {
            coords: crate::distributed::Coords {
                pp: header.pp,
                dp: header.dp,
                tp: header.tp,
            },
            batch: header.batch,
            tokens: header.tokens,
            padded: header.padded,
            outputs,
            producers: header.producers,
            logs: header.logs,
            gathered: header.gathered,
            logits,
        })
    }
}

/// Everything merged at global rank 0.
pub(crate) struct Merged {
    pub logits: Option<Tensor>,
    pub outputs: BTreeMap<String, Tensor>,
    pub producers: BTreeMap<String, String>,
    pub logs: Vec<(String, String, LogLevel, String)>,
    pub gathered: BTreeMap<String, u64>,
}

/// Merge the reports (in global rank order). Logits and outputs come from TP
/// rank 0 of each stage and replica (the other TP ranks hold the same).
/// Data-parallel replicas' outputs are concatenated along the batch
/// dimension when they come from a batched hook point (`batched`) and their
/// first dimension is the replica's batch (or, in a padded batch, its real
/// tokens: outputs of real tokens only); otherwise replica 0's is kept
/// under the key and replica `r`'s under `key@dp{r}` unless identical.
pub(crate) fn merge(reports: Vec<RankReport>, mesh: &Mesh, batched: &HashSet<String>) -> Merged {
    let mut gathered: BTreeMap<String, u64> = BTreeMap::new();
    let mut logs = Vec::new();
    // Per output key: (replica, (its rows, its tokens), tensor).
    type Part = (usize, (i64, i64), Tensor);
    let mut per_key: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    // In a padded batch even positional points are per row (positions
    // come from each row's mask).
    let mut padded = false;
    let mut logits: Vec<(usize, Tensor)> = Vec::new();
    let mut producers_in: BTreeMap<String, String> = BTreeMap::new();
    for r in reports {
        for (k, v) in r.gathered {
            *gathered.entry(k).or_default() += v;
        }
        if r.coords.tp != 0 {
            continue;
        }
        logs.extend(r.logs);
        for (k, p) in r.producers {
            producers_in.entry(k).or_insert(p);
        }
        padded |= r.padded;
        for (k, t) in r.outputs {
            per_key
                .entry(k)
                .or_default()
                .push((r.coords.dp, (r.batch, r.tokens), t));
        }
        if let Some(l) = r.logits {
            logits.push((r.coords.dp, l));
        }
    }
    logits.sort_by_key(|(dp, _)| *dp);
    let logits = (!logits.is_empty())
        .then(|| Tensor::cat(&logits.into_iter().map(|(_, t)| t).collect::<Vec<_>>(), 0));
    let mut outputs = BTreeMap::new();
    for (key, mut parts) in per_key {
        parts.sort_by_key(|(dp, _, _)| *dp);
        if mesh.dp == 1 || parts.len() == 1 {
            for (_, _, t) in parts {
                outputs.insert(key.clone(), t);
            }
            continue;
        }
        let point = key.split(':').next().unwrap_or(&key);
        let by_batch = (batched.contains(point) || padded)
            && parts
                .iter()
                .all(|(_, (b, n), t)| t.dim() > 0 && (t.size()[0] == *b || t.size()[0] == *n))
            && parts.iter().all(|(_, _, t)| {
                t.size()[1..] == parts[0].2.size()[1..] && t.kind() == parts[0].2.kind()
            });
        if by_batch {
            let ts: Vec<Tensor> = parts.into_iter().map(|(_, _, t)| t).collect();
            outputs.insert(key, Tensor::cat(&ts, 0));
        } else {
            let first = parts[0].2.shallow_clone();
            for (dp, _, t) in parts.into_iter().skip(1) {
                if !(t.size() == first.size() && t.kind() == first.kind() && t.equal(&first)) {
                    outputs.insert(format!("{key}@dp{dp}"), t);
                }
            }
            outputs.insert(key, first);
        }
    }
    // Every merged key (including `key@dp{r}`) keeps its producer.
    let producers = outputs
        .keys()
        .filter_map(|k| {
            let base = k.rsplit_once("@dp").map_or(k.as_str(), |(b, _)| b);
            producers_in.get(base).map(|p| (k.clone(), p.clone()))
        })
        .collect();
    Merged {
        logits,
        outputs,
        producers,
        logs,
        gathered,
    }
}

/// Gather every rank's `report` at global rank 0 over `world` and merge
/// them there (`None` on the other ranks).
pub(crate) fn gather_merged(
    world: &dyn crate::distributed::Communicator,
    report: RankReport,
    mesh: &Mesh,
    batched: &HashSet<String>,
) -> Result<Option<Merged>, super::FlexError> {
    use super::FlexError;
    let me = world.rank();
    let bytes = report.encode().map_err(|m| FlexError::Rank {
        rank: me,
        message: m,
    })?;
    let Some(all) = world.gather_bytes(bytes, 0)? else {
        return Ok(None);
    };
    let mut reports = Vec::with_capacity(all.len());
    for (r, b) in all.iter().enumerate() {
        reports.push(RankReport::decode(b).map_err(|message| FlexError::Rank {
            rank: r,
            message: format!("malformed report: {message}"),
        })?);
    }
    Ok(Some(merge(reports, mesh, batched)))
}
