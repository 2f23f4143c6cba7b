//! The host-side notion of a hook, shared by WebAssembly plugins and native
//! Rust hooks: where it is called ([`CallContext`]), what it declares
//! ([`Access`]) and what a call produces ([`CallReport`]).

use tch::Tensor;

use super::dtype::DType;
use super::error::HookError;
use super::slice::DimRange;

/// How a hook changes the activation (WIT `edit-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum EditMode {
    /// Reads only; writes are refused.
    #[default]
    ReadOnly,
    /// Edits in place; the host journals what it overwrites.
    InPlace,
    /// Builds a replacement from the original, writing every element.
    Replace,
}

impl EditMode {
    pub fn writes(self) -> bool {
        self != EditMode::ReadOnly
    }
}

/// Rank coordinates of a call, as in the WIT `rank-info` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RankInfo {
    pub tp_rank: u32,
    pub tp_size: u32,
    pub pp_rank: u32,
    pub pp_size: u32,
    pub dp_rank: u32,
    pub dp_size: u32,
    pub global_rank: u32,
    pub world_size: u32,
}

impl RankInfo {
    /// The one rank of an unsharded run.
    pub const SINGLE: RankInfo = RankInfo {
        tp_rank: 0,
        tp_size: 1,
        pp_rank: 0,
        pp_size: 1,
        dp_rank: 0,
        dp_size: 1,
        global_rank: 0,
        world_size: 1,
    };
}

impl Default for RankInfo {
    fn default() -> Self {
        RankInfo::SINGLE
    }
}

/// Where and when a hook is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    /// Canonical hook-point name.
    pub hook_point: String,
    pub rank: RankInfo,
    /// Number of forward passes started before this one.
    pub forward_index: u64,
    /// During generation: which step and at which position (`None` in a
    /// plain forward).
    pub generation: Option<GenStep>,
    /// The call is a backward hook: the tensor is the gradient of the loss
    /// with respect to the hook point's activation.
    pub backward: bool,
    /// Where the activation's tokens are, and which are real in a padded
    /// batch (`None`: a point without a token dimension).
    pub tokens: Option<Tokens>,
}

/// The activation's token dimension and, in a padded batch, each row's real
/// tokens along it (WIT `tokens`, 0.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// 1 for `[batch, seq, ...]`, 2 (queries) for attention scores and
    /// patterns.
    pub dim: usize,
    /// Per batch row `(start, len)` of its real tokens; `None`: all real.
    pub real: Option<std::sync::Arc<[(u32, u32)]>>,
}

/// Where a forward pass of generation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GenStep {
    /// 0 for the prompt (prefill), then 1, 2, ... for each new token.
    pub step: u64,
    /// Position of the first token of this pass (0 for the prompt; then the
    /// position of the token being fed back).
    pub position: u64,
}

/// The access a hook declared at registration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    /// How it changes the activation.
    pub mode: EditMode,
    /// Reads only this slice of the activation, if known.
    pub reads: Option<Vec<DimRange>>,
}

impl Access {
    /// Whether the hook may change the activation.
    pub fn edits(&self) -> bool {
        self.mode.writes()
    }
}

/// Severity of a message a plugin logged.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// One tensor a hook emitted, on CPU.
#[derive(Debug)]
pub struct Emitted {
    /// `<hook-point>` or `<hook-point>:<name>`.
    pub key: String,
    pub tensor: Tensor,
}

/// What a successful call produced besides its edit.
#[derive(Debug, Default)]
pub struct CallReport {
    pub emitted: Vec<Emitted>,
    pub logs: Vec<(LogLevel, String)>,
    /// Non-finite values the hook wrote (counted when the policy asks).
    pub non_finite_written: u64,
    /// Whether the activation was modified.
    pub edited: bool,
}

/// Anything that can be called at a hook point. Implemented by
/// [`super::plugin::WasmHook`] for WebAssembly components; native Rust hooks
/// implement it directly.
pub trait Hook: Send + Sync {
    /// Name used in errors and output keys.
    fn name(&self) -> &str;
    /// Access declared at registration.
    fn access(&self) -> Access;
    /// Who made an output, as recorded with it: the name by default; WASM
    /// plugins give `name@version (sha256:…)`.
    fn ident(&self) -> String {
        self.name().to_string()
    }
    /// Call the hook on `activation`. On success `activation` holds the
    /// result: edited in place, or replaced by a new tensor of the same shape,
    /// dtype and device (edit mode `replace`). On error it is unchanged.
    fn call(&self, ctx: &CallContext, activation: &mut Tensor) -> Result<CallReport, HookError>;
}

/// Output-dictionary key for a tensor emitted under `name` at `hook_point`.
pub fn output_key(hook_point: &str, name: &str) -> String {
    if name.is_empty() {
        hook_point.to_string()
    } else {
        format!("{hook_point}:{name}")
    }
}

/// Check the dtype of a tensor a hook is about to see.
pub fn hook_dtype(t: &Tensor) -> Option<DType> {
    DType::from_kind(t.kind())
}
