//! The errors of the engine and of the API over it.

use std::collections::BTreeMap;

use tch::Tensor;

use super::deferred::At;
use super::report::RankFailure;
use crate::distributed::CommError;
use crate::hooks::{HookError, LoadError};
use crate::models::{ModelError, PatternError};

/// Errors of the API.
#[derive(Debug, thiserror::Error)]
pub enum FlexError {
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{error}")]
    Hook {
        error: HookError,
        /// What hooks had emitted in this forward before the failure (in a
        /// mutex only so that the error is `Sync`).
        partial: std::sync::Mutex<BTreeMap<String, Tensor>>,
    },
    #[error(transparent)]
    Model(ModelError),
    #[error("invalid input: {0}")]
    Input(String),
    /// A collective failed (a peer timed out, exited or gave up).
    #[error(transparent)]
    Comm(#[from] CommError),
    /// Another rank failed with an error that is not a hook's.
    #[error("rank {rank}: {message}")]
    Rank { rank: usize, message: String },
    /// The result of a pass is at global rank 0; this process runs another
    /// rank of a launched job (use the `*_each` form there).
    #[error("rank {rank} of a launched job has no merged result (it is at global rank 0)")]
    NotRoot { rank: usize },
    /// The job was stopped between generation steps (its [`super::Halt`]:
    /// cancelled, or past its wall time).
    #[error("{0}")]
    Stopped(String),
    /// The pass was interrupted ([`super::Interrupt`]): nothing it
    /// computed is returned.
    #[error("interrupted")]
    Interrupted,
    /// Resolving a shared plugin failed, or its trust policy refused it.
    #[error(transparent)]
    Package(#[from] crate::package::PackageError),
}

/// A model error as the API reports it: a hook's error with what had been
/// emitted before it, or the model's.
pub(crate) fn model_error(e: ModelError, partial: BTreeMap<String, Tensor>) -> FlexError {
    match e {
        ModelError::Hook(e) => match e.downcast::<HookError>() {
            Ok(error) => FlexError::Hook {
                error: *error,
                partial: std::sync::Mutex::new(partial),
            },
            Err(other) => FlexError::Model(ModelError::Hook(other)),
        },
        ModelError::Interrupted => FlexError::Interrupted,
        e => FlexError::Model(e),
    }
}

/// A model error as a failure that travels between ranks.
pub(crate) fn failure(e: ModelError, rank: usize) -> RankFailure {
    match e {
        ModelError::Hook(b) => match b.downcast::<HookError>() {
            Ok(h) => RankFailure::Hook(*h, At::END),
            Err(other) => RankFailure::Model {
                rank,
                message: other.to_string(),
            },
        },
        ModelError::Comm(b) => match b.downcast::<CommError>() {
            Ok(c) => RankFailure::Comm(*c),
            Err(other) => RankFailure::Model {
                rank,
                message: other.to_string(),
            },
        },
        ModelError::Input(m) => RankFailure::Input(m),
        other => RankFailure::Model {
            rank,
            message: other.to_string(),
        },
    }
}

impl RankFailure {
    /// The error every rank returns for this failure, with `partial`.
    pub(crate) fn into_error(self, partial: BTreeMap<String, Tensor>) -> FlexError {
        match self {
            RankFailure::Hook(error, _) => FlexError::Hook {
                error,
                partial: std::sync::Mutex::new(partial),
            },
            RankFailure::Input(m) => FlexError::Input(m),
            RankFailure::Model { rank, message } => FlexError::Rank { rank, message },
            RankFailure::Comm(e) => FlexError::Comm(e),
        }
    }
}
