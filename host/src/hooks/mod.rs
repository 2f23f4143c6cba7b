//! The hook runtime: HookFunctions compiled to WebAssembly components, loaded
//! with wasmtime and called sandboxed on activation tensors.
//!
//! - [`runtime`]: the runtime users hold: loading, the compile cache.
//! - [`engine`]: the configured wasmtime engine and linker plugins run on.
//! - [`config`]: everything configurable about the runtime.
//! - [`artifact`]: a validated, compiled plugin and its self-description.
//! - [`manifest`]: the `flexmodel-manifest` section of a packed plugin.
//! - [`plugin`]: a plugin registered with a configuration, one instance per rank.
//! - [`instance`]: one live instance and the transaction around each call.
//! - [`activation`]: host-side ranged access to a tensor, with an undo journal.
//! - [`host`]: the host side of each WIT interface.
//! - [`sandbox`]: WASI with nothing granted; denied capabilities trap;
//!   [`capture`]: what a plugin prints.
//! - [`limits`]: every limit on what a plugin may make the host do.
//! - [`compile`]: bounded compilation in a child process.
//! - [`cache`]: the authenticated cache of compiled components.

pub mod activation;
mod activation_read;
pub mod artifact;
mod bindings;
pub mod cache;
pub mod capture;
pub mod compile;
pub mod config;
pub mod dtype;
pub mod engine;
pub mod error;
pub mod hook;
mod host;
pub mod instance;
mod journal;
pub mod limits;
pub mod manifest;
pub mod plugin;
pub mod runtime;
pub mod sandbox;
pub mod slice;
mod store;
mod wit;

pub use activation::{DType, EditMode};
pub use artifact::{Plugin, PluginInfo, WIT_VERSION};
pub use config::{CpuLimit, NonFinitePolicy, RuntimeConfig};
pub use error::{HookError, HookErrorKind, LoadError, OutputConflict, PluginError};
pub use hook::{
    Access, CallContext, CallReport, Emitted, GenStep, Hook, LogLevel, RankInfo, Tokens,
};
pub use limits::{CacheLimits, CompileLimits, ForwardLimits, HostLimits};
pub use manifest::Manifest;
pub use plugin::WasmHook;
pub use runtime::Runtime;
pub use sandbox::Grants;
pub use slice::DimRange;
pub use store::CallLimits;
