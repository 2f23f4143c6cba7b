//! The communicator: what the distributed engine needs from a collective
//! backend. Every operation returns a `Result` and gives up after the
//! communicator's timeout instead of hanging when a peer fails or exits.
//!
//! Backends implement the byte-level operations; the tensor-level ones have
//! default implementations on top (a backend with device-resident
//! collectives, NCCL, overrides them).

use std::time::Duration;

use bytes::Bytes;
use tch::{Device, Tensor};

use super::error::CommError;
use super::wire;

pub trait Communicator {
    /// This rank's index in the group.
    fn rank(&self) -> usize;
    /// Number of ranks in the group.
    fn size(&self) -> usize;
    /// Global rank (in the world the group was split from) of group rank `r`.
    fn global_rank(&self, r: usize) -> usize;
    /// How long one operation may wait for a peer.
    fn timeout(&self) -> Duration;
    /// Start a new epoch (one per forward pass, the same number on every rank):
    /// messages left over from an earlier, failed epoch are discarded.
    fn set_epoch(&self, epoch: u64);

    fn barrier(&self) -> Result<(), CommError>;
    /// Every rank's bytes, in rank order.
    fn all_gather_bytes(&self, b: Bytes) -> Result<Vec<Bytes>, CommError>;
    /// Every rank's bytes at `root` (in rank order), `None` elsewhere.
    fn gather_bytes(&self, b: Bytes, root: usize) -> Result<Option<Vec<Bytes>>, CommError>;
    /// `root`'s bytes on every rank (`b` is ignored elsewhere).
    fn broadcast_bytes(&self, b: Option<Bytes>, root: usize) -> Result<Bytes, CommError>;
    fn send_bytes(&self, b: Bytes, dst: usize) -> Result<(), CommError>;
    fn recv_bytes(&self, src: usize) -> Result<Bytes, CommError>;
    /// A sub-group of the ranks that pass the same `color`, ordered by `key`
    /// (collective over this group).
    fn split(&self, color: u32, key: u32) -> Result<Box<dyn Communicator>, CommError>;
    /// Tell every peer this rank gave up the current epoch (best effort,
    /// never blocks): a peer waiting on it fails at once with
    /// [`CommError::PeerAborted`] instead of waiting for the timeout.
    fn abort(&self, reason: &str);
    /// Bytes this rank has received through the communicator so far.
    fn bytes_received(&self) -> u64;

    /// Every rank's tensor, in rank order, on `t`'s device.
    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>, CommError> {
        host_all_gather(self, t)
    }

    /// Every rank's tensor (in rank order) made into one by `assemble`,
    /// and the bytes received from the others. Through host memory, the
    /// received parts are read in place from their messages (no tensor per
    /// part): `assemble` writes them straight into its result, which must
    /// not share storage with them.
    fn all_gather_assembled(
        &self,
        t: &Tensor,
        assemble: &dyn Fn(&[Tensor]) -> Tensor,
    ) -> Result<(Tensor, u64), CommError> {
        host_all_gather_assembled(self, t, assemble)
    }

    /// Elementwise sum over the group, added in rank order so that every
    /// rank gets the same bits.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, CommError> {
        host_all_reduce_sum(self, t)
    }

    /// `root`'s tensor on every rank, on `like`'s device.
    fn broadcast(
        &self,
        t: Option<&Tensor>,
        root: usize,
        like: Device,
    ) -> Result<Tensor, CommError> {
        let b = t.map(encode).transpose()?;
        let b = self.broadcast_bytes(b, root)?;
        decode(&b, self.global_rank(root), "broadcast", like, self)
    }

    /// Every rank's tensor at `root` (on the CPU), `None` elsewhere.
    fn gather(&self, t: &Tensor, root: usize) -> Result<Option<Vec<Tensor>>, CommError> {
        let Some(parts) = self.gather_bytes(encode(t)?, root)? else {
            return Ok(None);
        };
        parts
            .iter()
            .enumerate()
            .map(|(r, b)| decode(b, self.global_rank(r), "gather", Device::Cpu, self))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn send(&self, t: &Tensor, dst: usize) -> Result<(), CommError> {
        self.send_bytes(encode(t)?, dst)
    }

    /// A tensor from `src`, on `like`'s device.
    fn recv(&self, src: usize, like: Device) -> Result<Tensor, CommError> {
        let b = self.recv_bytes(src)?;
        decode(&b, self.global_rank(src), "recv", like, self)
    }
}

fn encode(t: &Tensor) -> Result<Bytes, CommError> {
    wire::encode(t).map_err(CommError::Invalid)
}

fn decode<C: Communicator + ?Sized>(
    b: &[u8],
    peer: usize,
    op: &str,
    device: Device,
    c: &C,
) -> Result<Tensor, CommError> {
    wire::decode(b)
        .map(|t| t.to_device(device))
        .map_err(|message| CommError::Protocol {
            op: op.into(),
            rank: c.global_rank(c.rank()),
            peer,
            message,
        })
}

/// [`Communicator::all_gather`] through the byte-level operations (the
/// tensors travel through host memory).
pub fn host_all_gather<C: Communicator + ?Sized>(
    c: &C,
    t: &Tensor,
) -> Result<Vec<Tensor>, CommError> {
    let parts = c.all_gather_bytes(encode(t)?)?;
    let me = c.rank();
    parts
        .iter()
        .enumerate()
        .map(|(r, b)| {
            if r == me {
                Ok(t.shallow_clone())
            } else {
                decode(b, c.global_rank(r), "all-gather", t.device(), c)
            }
        })
        .collect()
}

/// [`Communicator::all_gather_assembled`] through the byte-level
/// operations.
pub fn host_all_gather_assembled<C: Communicator + ?Sized>(
    c: &C,
    t: &Tensor,
    assemble: &dyn Fn(&[Tensor]) -> Tensor,
) -> Result<(Tensor, u64), CommError> {
    let msgs = c.all_gather_bytes(encode(t)?)?;
    let me = c.rank();
    let local = t.to_device(Device::Cpu);
    let mut parts = Vec::with_capacity(msgs.len());
    let mut received = 0u64;
    for (r, b) in msgs.iter().enumerate() {
        if r == me {
            parts.push(local.shallow_clone());
            continue;
        }
        // SAFETY: `msgs` outlives `parts`, dropped below before returning;
        // `assemble` makes a new tensor.
        let part = unsafe { wire::view(b) }.map_err(|message| CommError::Protocol {
            op: "all-gather".into(),
            rank: c.global_rank(me),
            peer: c.global_rank(r),
            message,
        })?;
        received += (part.numel() * part.kind().elt_size_in_bytes()) as u64;
        parts.push(part);
    }
    let out = assemble(&parts).to_device(t.device());
    drop(parts);
    drop(msgs);
    Ok((out, received))
}

/// [`Communicator::all_reduce_sum`] through [`host_all_gather`], summed in
/// rank order.
pub fn host_all_reduce_sum<C: Communicator + ?Sized>(
    c: &C,
    t: &Tensor,
) -> Result<Tensor, CommError> {
    if c.size() == 1 {
        return Ok(t.shallow_clone());
    }
    let parts = host_all_gather(c, t)?;
    let same = |p: &Tensor| p.size() == parts[0].size() && p.kind() == parts[0].kind();
    if !same(&parts[1]) {
        return Err(CommError::Invalid(format!(
            "all-reduce over tensors of different shapes/dtypes: {:?} {:?} vs {:?} {:?}",
            parts[0].size(),
            parts[0].kind(),
            parts[1].size(),
            parts[1].kind()
        )));
    }
    let mut acc = &parts[0] + &parts[1];
    for p in &parts[2..] {
        if p.size() != acc.size() || p.kind() != acc.kind() {
            return Err(CommError::Invalid(format!(
                "all-reduce over tensors of different shapes/dtypes: {:?} {:?} vs {:?} {:?}",
                acc.size(),
                acc.kind(),
                p.size(),
                p.kind()
            )));
        }
        acc += p;
    }
    Ok(acc)
}
