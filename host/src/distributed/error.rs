//! Errors of the collectives.

use std::time::Duration;

/// Why a collective operation failed. Ranks are global ranks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum CommError {
    #[error("{op} on rank {rank}: timed out after {timeout:?} waiting for rank {peer}")]
    Timeout {
        op: String,
        rank: usize,
        peer: usize,
        timeout: Duration,
    },
    #[error("{op} on rank {rank}: rank {peer} is gone (it exited or dropped its communicator)")]
    PeerGone {
        op: String,
        rank: usize,
        peer: usize,
    },
    #[error("rank {peer} gave up the forward: {reason}")]
    PeerAborted { peer: usize, reason: String },
    #[error("{op} on rank {rank}: malformed message from rank {peer}: {message}")]
    Protocol {
        op: String,
        rank: usize,
        peer: usize,
        message: String,
    },
    #[error("invalid collective call: {0}")]
    Invalid(String),
    #[error("communication backend failed: {0}")]
    Backend(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}
