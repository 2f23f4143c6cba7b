//! Collectives built from point-to-point messages, for backends without
//! collectives that honour a deadline (threads; MPI, whose blocking
//! collectives cannot be abandoned). Each operation posts its sends, takes
//! its receives before one deadline, then completes its sends.

use std::time::Instant;

use bytes::Bytes;

use super::error::CommError;

pub(crate) trait PointToPoint {
    /// A send in flight.
    type Pending;
    fn p2p_rank(&self) -> usize;
    fn p2p_size(&self) -> usize;
    fn deadline(&self) -> Instant;
    /// Start sending `b` to group rank `dst`; never blocks.
    fn post(&self, dst: usize, b: &Bytes, op: &str) -> Result<Self::Pending, CommError>;
    /// The next message of the current epoch from `src`.
    fn take(&self, src: usize, op: &str, deadline: Instant) -> Result<Bytes, CommError>;
    /// Wait until a posted send is complete.
    fn finish(&self, p: Self::Pending, op: &str, deadline: Instant) -> Result<(), CommError>;
}

fn finish_all<P: PointToPoint + ?Sized>(
    p: &P,
    pending: Vec<P::Pending>,
    op: &str,
    deadline: Instant,
) -> Result<(), CommError> {
    for s in pending {
        p.finish(s, op, deadline)?;
    }
    Ok(())
}

pub(crate) fn all_gather<P: PointToPoint + ?Sized>(
    p: &P,
    b: Bytes,
) -> Result<Vec<Bytes>, CommError> {
    let (me, n) = (p.p2p_rank(), p.p2p_size());
    let op = "all-gather";
    let pending = (0..n)
        .filter(|&r| r != me)
        .map(|r| p.post(r, &b, op))
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = p.deadline();
    let out = (0..n)
        .map(|r| {
            if r == me {
                Ok(b.clone())
            } else {
                p.take(r, op, deadline)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    finish_all(p, pending, op, deadline)?;
    Ok(out)
}

pub(crate) fn gather<P: PointToPoint + ?Sized>(
    p: &P,
    b: Bytes,
    root: usize,
) -> Result<Option<Vec<Bytes>>, CommError> {
    let (me, n) = (p.p2p_rank(), p.p2p_size());
    if root >= n {
        return Err(CommError::Invalid(format!(
            "gather root {root} in a group of {n}"
        )));
    }
    let deadline = p.deadline();
    if me != root {
        let s = p.post(root, &b, "gather")?;
        p.finish(s, "gather", deadline)?;
        return Ok(None);
    }
    (0..n)
        .map(|r| {
            if r == root {
                Ok(b.clone())
            } else {
                p.take(r, "gather", deadline)
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

pub(crate) fn broadcast<P: PointToPoint + ?Sized>(
    p: &P,
    b: Option<Bytes>,
    root: usize,
) -> Result<Bytes, CommError> {
    let (me, n) = (p.p2p_rank(), p.p2p_size());
    if root >= n {
        return Err(CommError::Invalid(format!(
            "broadcast root {root} in a group of {n}"
        )));
    }
    let deadline = p.deadline();
    if me != root {
        return p.take(root, "broadcast", deadline);
    }
    let b = b.ok_or_else(|| CommError::Invalid("broadcast root has no data".into()))?;
    let pending = (0..n)
        .filter(|&r| r != root)
        .map(|r| p.post(r, &b, "broadcast"))
        .collect::<Result<Vec<_>, _>>()?;
    finish_all(p, pending, "broadcast", deadline)?;
    Ok(b)
}

pub(crate) fn send<P: PointToPoint + ?Sized>(p: &P, b: Bytes, dst: usize) -> Result<(), CommError> {
    let s = p.post(dst, &b, "send")?;
    p.finish(s, "send", p.deadline())
}

/// Members of the sub-group `color` (ordered by key, then rank) and this
/// rank's index in it, from every rank's `(color, key)`.
pub(crate) fn split_members<P: PointToPoint + ?Sized>(
    p: &P,
    color: u32,
    key: u32,
) -> Result<(Vec<usize>, usize), CommError> {
    let mine = Bytes::from([color.to_le_bytes(), key.to_le_bytes()].concat());
    let all = all_gather(p, mine)?;
    let mut same: Vec<(u32, usize)> = Vec::new();
    for (r, b) in all.iter().enumerate() {
        let word = |i: usize| -> Result<u32, CommError> {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| CommError::Invalid(format!("split: short color/key from rank {r}")))
        };
        if word(0)? == color {
            same.push((word(4)?, r));
        }
    }
    same.sort();
    let members: Vec<usize> = same.iter().map(|&(_, r)| r).collect();
    let index = members
        .iter()
        .position(|&r| r == p.p2p_rank())
        .ok_or_else(|| CommError::Invalid("split: this rank is not in its own group".into()))?;
    Ok((members, index))
}
