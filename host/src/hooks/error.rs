//! Error types of the hook runtime.
//!
//! Two layers: [`LoadError`] for everything that can go wrong before a plugin
//! runs (bad bytes, wrong world or version, compile failure), and
//! [`HookError`] for a failed call, which always names the plugin, the hook
//! point and the rank, with a [`HookErrorKind`] saying what happened.

use std::fmt;
use std::time::Duration;

/// The error a plugin itself returned (the WIT `hook-error` variant), or that a
/// host call returned to the plugin and the plugin passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum PluginError {
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    #[error("{0}")]
    Failed(String),
}

/// What went wrong in a hook call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum HookErrorKind {
    /// The plugin returned an error value.
    #[error("plugin returned an error: {0}")]
    Plugin(PluginError),
    /// The per-call fuel budget ran out (deterministic CPU limit).
    #[error("ran out of fuel (budget {budget} units per call)")]
    OutOfFuel { budget: u64 },
    /// The per-call wall-clock deadline passed (epoch interruption).
    #[error("exceeded its deadline of {limit:?} per call")]
    DeadlineExceeded { limit: Duration },
    /// The instance tried to grow its memory beyond the cap.
    #[error("exceeded its memory cap of {limit_bytes} bytes")]
    MemoryLimit { limit_bytes: u64 },
    /// The instance exceeded a table or instance limit.
    #[error("exceeded a resource limit: {0}")]
    ResourceLimit(String),
    /// Wasm call stack exhausted (deep or infinite recursion).
    #[error("overflowed its stack")]
    StackOverflow,
    /// The guest panicked / aborted; `message` is what it printed, if anything.
    #[error("panicked: {message}")]
    Panic { message: String },
    /// The plugin used a capability the host did not grant.
    #[error("used a capability that is not granted: {capability}")]
    CapabilityDenied { capability: String },
    /// The plugin wrote non-finite values and the policy rejects them.
    #[error("wrote {count} non-finite value(s) (NaN/inf), rejected by policy")]
    NonFinite { count: u64 },
    /// Any other trap, with wasmtime's description.
    #[error("trapped: {message}")]
    Trap { message: String },
    /// The plugin could not be instantiated or initialised for this rank.
    #[error("could not be instantiated: {message}")]
    Instantiate { message: String },
    /// The activation handed to the hook is unusable (dtype, device, shape).
    #[error("cannot be called on this activation: {message}")]
    BadActivation { message: String },
    /// Tensor-parallel ranks computed different edits of the same logical
    /// activation, or emitted different outputs (the plugin is not
    /// deterministic across ranks).
    #[error("computed a different result on different tensor-parallel ranks: {message}")]
    Diverged { message: String },
    /// A host function panicked on the plugin's input (a host bug, caught:
    /// the call was rolled back and the instance discarded).
    #[error("made a host function fail unexpectedly (call rolled back): {message}")]
    HostPanic { message: String },
    /// The plugin emitted under a key another plugin's output already holds
    /// in this forward pass.
    #[error("emitted output {:?}, which `{}` already emitted in this forward pass", .0.key, .0.owner)]
    OutputConflict(Box<OutputConflict>),
    /// A host-side limit of a forward pass (outputs, logs) was reached.
    #[error("exceeded a limit of the forward pass: {message}")]
    ForwardLimit { message: String },
}

/// An output key taken twice in one forward pass (boxed in
/// [`HookErrorKind::OutputConflict`] to keep errors small).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputConflict {
    /// The key.
    pub key: String,
    /// Who emitted it first (`Hook::ident`).
    pub owner: String,
}

/// A failed hook call: which plugin, where, on which rank, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("plugin `{plugin}` at hook point `{hook_point}` on rank {rank}: {kind}")]
pub struct HookError {
    pub plugin: String,
    pub hook_point: String,
    /// Global rank of the caller.
    pub rank: u32,
    pub kind: HookErrorKind,
}

/// Why a component could not be loaded as a HookFunction.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read plugin file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a WebAssembly binary ({0})")]
    NotWasm(String),
    #[error(
        "this is a core WebAssembly module, not a component: build the hook for \
         `wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("invalid or unsupported component: {0}")]
    Invalid(String),
    #[error(
        "component does not target the `flexmodel:hook/hook-plugin` world: it exports [{exports}] \
         but no `flexmodel:hook/plugin` interface"
    )]
    WrongWorld { exports: String },
    #[error(
        "component targets `flexmodel:hook@{found}`, but this host supports \
         `flexmodel:hook@{supported}` (same major.minor required); rebuild it against this host's WIT"
    )]
    WrongVersion { found: String, supported: String },
    #[error("component imports something this host does not provide: {0}")]
    UnsupportedImport(String),
    #[error("plugin metadata is invalid: {0}")]
    BadMetadata(String),
    /// The `flexmodel-manifest` section is invalid, disagrees with the
    /// component, or asks for more than this host allows.
    #[error("plugin manifest: {0}")]
    Manifest(String),
    #[error("plugin `{plugin}` rejected its configuration: {error}")]
    Init { plugin: String, error: String },
    #[error("plugin `{plugin}` could not be instantiated: {error}")]
    Instantiate { plugin: String, error: String },
    #[error("component {plugin} is {bytes} bytes, over the limit of {limit} bytes")]
    TooLarge {
        plugin: String,
        bytes: usize,
        limit: usize,
    },
    /// Compiling the component went over a time or memory limit.
    #[error("compiling component {plugin} exceeded its {limit}")]
    CompileLimit { plugin: String, limit: String },
    /// The compiled-code cache cannot be trusted or used.
    #[error("compiled-code cache {path}: {message}")]
    Cache { path: String, message: String },
    #[error("runtime setup failed: {0}")]
    Runtime(String),
}

/// A short, human rendering of a [`wasmtime::Trap`]-carrying error.
pub(crate) struct TrapText<'a>(pub &'a wasmtime::Error);

impl fmt::Display for TrapText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(trap) = self.0.downcast_ref::<wasmtime::Trap>() {
            write!(f, "{trap}")
        } else {
            // The whole cause chain, without wasmtime's multi-line wasm
            // backtrace (a context entry of its own).
            let parts: Vec<String> = self
                .0
                .chain()
                .map(|c| c.to_string())
                .filter(|s| !s.contains("wasm backtrace:"))
                .map(|s| s.lines().next().unwrap_or("").to_string())
                .filter(|s| !s.is_empty())
                .collect();
            write!(f, "{}", parts.join(": "))
        }
    }
}
