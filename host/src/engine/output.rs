//! What a forward returns, and the token ids it takes.

use std::collections::BTreeMap;

use tch::Tensor;

use super::FlexError;
use crate::hooks::LogLevel;
use crate::models::Tokenizer;

/// A hook's log message: (hook, hook point, level, message).
pub type LogLine = (String, String, LogLevel, String);

/// What a forward returns.
#[derive(Debug)]
pub struct ForwardOutput {
    /// `[batch, seq, vocab]`, on the model's device.
    pub logits: Tensor,
    /// Tensors the hooks emitted, keyed by hook point (or `point:name`), on CPU.
    pub outputs: BTreeMap<String, Tensor>,
    /// Who emitted each output: output key -> `Hook::ident` (for WASM
    /// plugins `name@version (sha256:…)`).
    pub producers: BTreeMap<String, String>,
    /// Messages hooks logged: (hook, hook point, level, message).
    pub logs: Vec<LogLine>,
    /// Index of this forward pass (0 for the first).
    pub forward_index: u64,
    /// Distributed runs: bytes received from other ranks to build the hooks'
    /// views (data and message headers), per hook point, summed over all
    /// ranks (empty on one rank).
    pub gathered_bytes: BTreeMap<String, u64>,
}

/// What a forward stopped early returns (`FlexModel::forward_until`).
#[derive(Debug)]
pub struct StoppedOutput {
    /// The canonical hook point the forward stopped after.
    pub stopped_after: String,
    /// Tensors the hooks emitted up to there, on CPU.
    pub outputs: BTreeMap<String, Tensor>,
    /// Who emitted each output (see [`ForwardOutput::producers`]).
    pub producers: BTreeMap<String, String>,
    pub logs: Vec<LogLine>,
    pub forward_index: u64,
    /// See [`ForwardOutput::gathered_bytes`].
    pub gathered_bytes: BTreeMap<String, u64>,
}

/// One forward's merged result at global rank 0, stopped early or not.
#[derive(Debug)]
pub(crate) struct RunOutput {
    /// `None`: the forward stopped at its stop point.
    pub logits: Option<Tensor>,
    pub outputs: BTreeMap<String, Tensor>,
    pub producers: BTreeMap<String, String>,
    pub logs: Vec<LogLine>,
    pub forward_index: u64,
    pub gathered_bytes: BTreeMap<String, u64>,
}

impl RunOutput {
    pub fn into_forward(self) -> Result<ForwardOutput, FlexError> {
        Ok(ForwardOutput {
            logits: self
                .logits
                .ok_or_else(|| FlexError::Input("the forward produced no logits".into()))?,
            outputs: self.outputs,
            producers: self.producers,
            logs: self.logs,
            forward_index: self.forward_index,
            gathered_bytes: self.gathered_bytes,
        })
    }

    pub fn into_stopped(self, stopped_after: String) -> StoppedOutput {
        StoppedOutput {
            stopped_after,
            outputs: self.outputs,
            producers: self.producers,
            logs: self.logs,
            forward_index: self.forward_index,
            gathered_bytes: self.gathered_bytes,
        }
    }
}

/// Token ids as `[batch, seq]` (a `[seq]` tensor is one sequence).
pub(crate) fn batch_ids(input_ids: &Tensor) -> Result<Tensor, FlexError> {
    match input_ids.dim() {
        1 => Ok(input_ids.unsqueeze(0)),
        2 => Ok(input_ids.shallow_clone()),
        d => Err(FlexError::Input(format!(
            "input_ids must be [seq] or [batch, seq], got {d} dims"
        ))),
    }
}

/// The token ids of `text` with the model's tokenizer, as one sequence.
pub(crate) fn text_ids(tok: Option<&Tokenizer>, text: &str) -> Result<Tensor, FlexError> {
    let tok = tok
        .ok_or_else(|| FlexError::Input("the model was loaded without a tokenizer.json".into()))?;
    let ids = tok.encode(text).map_err(FlexError::Model)?;
    if ids.is_empty() {
        return Err(FlexError::Input("the text tokenizes to no tokens".into()));
    }
    Ok(Tensor::from_slice(&ids))
}
