//! The trivial communicator: a group of one rank. A single-rank run is the
//! mesh `(1, 1, 1)` over it: every collective returns this rank's own data
//! at once (no encoding, no copies), point-to-point messages have no peer.

use std::time::Duration;

use bytes::Bytes;
use tch::{Device, Tensor};

use super::comm::Communicator;
use super::error::CommError;

/// A group of one rank (global rank 0 of a world of one).
#[derive(Debug, Default, Clone, Copy)]
pub struct Solo;

fn no_peer(op: &str, peer: usize) -> CommError {
    CommError::Invalid(format!(
        "{op}: rank {peer} does not exist in a group of one"
    ))
}

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn global_rank(&self, r: usize) -> usize {
        r
    }
    fn timeout(&self) -> Duration {
        Duration::MAX
    }
    fn set_epoch(&self, _epoch: u64) {}
    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }
    fn all_gather_bytes(&self, b: Bytes) -> Result<Vec<Bytes>, CommError> {
        Ok(vec![b])
    }
    fn gather_bytes(&self, b: Bytes, root: usize) -> Result<Option<Vec<Bytes>>, CommError> {
        match root {
            0 => Ok(Some(vec![b])),
            r => Err(no_peer("gather", r)),
        }
    }
    fn broadcast_bytes(&self, b: Option<Bytes>, root: usize) -> Result<Bytes, CommError> {
        match (root, b) {
            (0, Some(b)) => Ok(b),
            (0, None) => Err(CommError::Invalid(
                "broadcast: the root sent nothing".into(),
            )),
            (r, _) => Err(no_peer("broadcast", r)),
        }
    }
    fn send_bytes(&self, _b: Bytes, dst: usize) -> Result<(), CommError> {
        Err(no_peer("send", dst))
    }
    fn recv_bytes(&self, src: usize) -> Result<Bytes, CommError> {
        Err(no_peer("recv", src))
    }
    fn split(&self, _color: u32, _key: u32) -> Result<Box<dyn Communicator>, CommError> {
        Ok(Box::new(Solo))
    }
    fn abort(&self, _reason: &str) {}
    fn bytes_received(&self) -> u64 {
        0
    }
    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>, CommError> {
        Ok(vec![t.shallow_clone()])
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, CommError> {
        Ok(t.shallow_clone())
    }
    fn broadcast(
        &self,
        t: Option<&Tensor>,
        root: usize,
        like: Device,
    ) -> Result<Tensor, CommError> {
        match (root, t) {
            (0, Some(t)) => Ok(t.to_device(like)),
            (0, None) => Err(CommError::Invalid(
                "broadcast: the root sent nothing".into(),
            )),
            (r, _) => Err(no_peer("broadcast", r)),
        }
    }
    fn gather(&self, t: &Tensor, root: usize) -> Result<Option<Vec<Tensor>>, CommError> {
        match root {
            0 => Ok(Some(vec![t.shallow_clone()])),
            r => Err(no_peer("gather", r)),
        }
    }
}
