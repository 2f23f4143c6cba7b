//! The message between pipeline stages: the hidden state, the news that the
//! forward stopped early, or why there is neither.

use bytes::Bytes;
use tch::Tensor;

use super::report::RankFailure;
use crate::distributed::wire;

const HIDDEN: u8 = 0;
const FAILED: u8 = 1;
const STOPPED: u8 = 3;

/// What a stage passes on.
pub(crate) enum Handoff<'a> {
    Hidden(&'a Tensor),
    Stopped,
    Failed(&'a RankFailure),
}

pub(crate) fn encode(h: Handoff<'_>) -> Bytes {
    let mut out = Vec::new();
    let failed = |out: &mut Vec<u8>, f: &RankFailure| {
        out.push(FAILED);
        out.extend(serde_json::to_vec(f).unwrap_or_default());
    };
    match h {
        Handoff::Hidden(t) => match wire::encode(t) {
            Ok(b) => {
                out.push(HIDDEN);
                out.extend_from_slice(&b);
            }
            Err(m) => failed(&mut out, &RankFailure::Input(m)),
        },
        Handoff::Stopped => out.push(STOPPED),
        Handoff::Failed(f) => failed(&mut out, f),
    }
    Bytes::from(out)
}

/// The previous stage's hidden state; `None`: the forward stopped there.
pub(crate) fn decode(b: &[u8], me: usize) -> Result<Option<Tensor>, RankFailure> {
    let bad = |m: String| RankFailure::Model {
        rank: me,
        message: format!("malformed message from the previous stage: {m}"),
    };
    match b.first() {
        Some(&HIDDEN) => wire::decode(&b[1..]).map(Some).map_err(bad),
        Some(&FAILED) => Err(serde_json::from_slice(&b[1..]).map_err(|e| bad(e.to_string()))?),
        Some(&STOPPED) => Ok(None),
        _ => Err(bad("empty".into())),
    }
}
