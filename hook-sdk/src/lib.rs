//! Write FlexModel HookFunctions in Rust.
//!
//! A hook is a struct implementing [`HookFunction`]: it is built from the
//! user's JSON configuration ([`HookFunction::init`]) and called at every hook
//! point it is registered on ([`HookFunction::forward`]) with an
//! [`Activation`]: a view of the gathered activation that stays in host memory.
//! Read only what you need, edit with host-side bulk operations, emit tensors
//! into the output dictionary. Build with `cargo build --target wasm32-wasip2`.
//!
//! ```ignore
//! use flexmodel_hook_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! struct Scale { factor: f32 }
//!
//! impl HookFunction for Scale {
//!     fn info() -> Info { Info::new("scale", "0.1.0", "multiply the activation by a factor").edits() }
//!     fn init(config: &str) -> Result<Self> { parse_config(config) }
//!     fn access(&self) -> Access { Access::edits() }  // in place
//!     fn forward(&mut self, _ctx: &Context, act: &mut Activation) -> Result<()> {
//!         act.scale(&Slice::all(), self.factor)
//!     }
//! }
//! export_hook!(Scale);
//! ```
//!
//! The generated WIT bindings are internal ([`__private`]); hook authors never
//! touch them.

use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod __private {
    wit_bindgen::generate!({
        path: "../wit",
        world: "hook-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_hook_plugin",
        default_bindings_module: "flexmodel_hook_sdk::__private",
    });

    pub use exports::flexmodel::hook::plugin::Guest;
    pub use flexmodel::hook::tensor::Activation as RawActivation;
    pub use flexmodel::hook::types as wit;
}

use __private::flexmodel::hook::generation as wit_gen;
use __private::flexmodel::hook::pass as wit_pass;
use __private::flexmodel::hook::{log as wlog, random as wrand, state as wstate};
use __private::wit;

mod activation;
mod slice;

pub use activation::{Activation, CHUNK, emit, emit_bytes};
pub use slice::{Dim, DimSpec, Slice, SliceSpec};

/// Element type of an activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

impl From<wit::Dtype> for DType {
    fn from(d: wit::Dtype) -> Self {
        match d {
            wit::Dtype::F32 => DType::F32,
            wit::Dtype::F16 => DType::F16,
            wit::Dtype::Bf16 => DType::BF16,
        }
    }
}

impl From<DType> for wit::Dtype {
    fn from(d: DType) -> Self {
        match d {
            DType::F32 => wit::Dtype::F32,
            DType::F16 => wit::Dtype::F16,
            DType::BF16 => wit::Dtype::Bf16,
        }
    }
}

/// A hook's error. Returned to the host as a typed `hook-error`.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    InvalidConfig(String),
    InvalidArgument(String),
    Unsupported(String),
    LimitExceeded(String),
    Failed(String),
}

impl Error {
    pub fn config(msg: impl Into<String>) -> Self {
        Error::InvalidConfig(msg.into())
    }
    pub fn unsupported(msg: impl Into<String>) -> Self {
        Error::Unsupported(msg.into())
    }
    pub fn failed(msg: impl Into<String>) -> Self {
        Error::Failed(msg.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::LimitExceeded(m) => write!(f, "limit exceeded: {m}"),
            Error::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<wit::HookError> for Error {
    fn from(e: wit::HookError) -> Self {
        match e {
            wit::HookError::InvalidConfig(m) => Error::InvalidConfig(m),
            wit::HookError::InvalidArgument(m) => Error::InvalidArgument(m),
            wit::HookError::Unsupported(m) => Error::Unsupported(m),
            wit::HookError::LimitExceeded(m) => Error::LimitExceeded(m),
            wit::HookError::Failed(m) => Error::Failed(m),
        }
    }
}

impl From<Error> for wit::HookError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidConfig(m) => wit::HookError::InvalidConfig(m),
            Error::InvalidArgument(m) => wit::HookError::InvalidArgument(m),
            Error::Unsupported(m) => wit::HookError::Unsupported(m),
            Error::LimitExceeded(m) => wit::HookError::LimitExceeded(m),
            Error::Failed(m) => wit::HookError::Failed(m),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::InvalidConfig(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parse a JSON configuration into `T` (an empty string is `{}`).
pub fn parse_config<T: DeserializeOwned>(config: &str) -> Result<T> {
    let c = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    Ok(serde_json::from_str(c)?)
}

/// Rank coordinates of a call.
pub type RankInfo = wit::RankInfo;

/// Where and when a hook is called.
#[derive(Debug, Clone)]
pub struct Context {
    /// Canonical hook-point name.
    pub hook_point: String,
    /// Logical (gathered) shape of the activation.
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub rank: RankInfo,
    /// Forward passes started before this one.
    pub forward_index: u64,
    /// During generation: the step (0 = the prompt) and the position of the
    /// first token of this pass; `None` in a plain forward.
    pub generation: Option<GenStep>,
    /// A backward hook: the activation is the gradient of the loss with
    /// respect to the hook point's activation; edits change the gradient.
    pub backward: bool,
    /// The activation's token dimension (1 for `[batch, seq, ...]`, 2 for
    /// attention scores and patterns), if it has one.
    pub token_dim: Option<usize>,
    /// In a padded batch, each row's real tokens along `token_dim`; `None`
    /// when every token is real.
    pub real_tokens: Option<Vec<TokenSpan>>,
}

/// One batch row's real tokens: positions `start .. start + len` along the
/// token dimension (WIT `tokens.span`).
pub type TokenSpan = __private::flexmodel::hook::tokens::Span;

/// Where a generation is (WIT `generation.gen-step`).
pub type GenStep = wit_gen::GenStep;

/// How a hook changes the activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EditMode {
    /// Only reads; writes are refused.
    #[default]
    ReadOnly,
    /// Edits in place: reads see earlier writes; the host undoes the writes
    /// if the call fails.
    InPlace,
    /// Writes a complete replacement: reads see the original, writes build
    /// the new activation, and every element must be written (or none, to
    /// leave the activation unchanged). No undo journal; the host allocates
    /// the replacement instead (see BENCHMARKS.md for when that pays).
    Replace,
}

/// Access a hook needs, declared at `init`.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub mode: EditMode,
    pub reads: Option<Slice>,
}

impl Access {
    /// Read-only, may read anything.
    pub fn read_only() -> Access {
        Access {
            mode: EditMode::ReadOnly,
            reads: None,
        }
    }
    /// Edits in place.
    pub fn edits() -> Access {
        Access {
            mode: EditMode::InPlace,
            reads: None,
        }
    }
    /// Writes a complete replacement (see [`EditMode::Replace`]).
    pub fn replaces() -> Access {
        Access {
            mode: EditMode::Replace,
            reads: None,
        }
    }
    /// Reads only `slice` (lets the host gather less).
    pub fn reads(mut self, slice: Slice) -> Access {
        self.reads = Some(slice);
        self
    }
}

/// What a hook says about itself.
#[derive(Debug, Clone)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub description: String,
    pub hook_points: Vec<String>,
    pub edits: bool,
}

impl Info {
    pub fn new(name: &str, version: &str, description: &str) -> Info {
        Info {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            hook_points: vec![],
            edits: false,
        }
    }
    /// Marks the hook as editing by default.
    pub fn edits(mut self) -> Info {
        self.edits = true;
        self
    }
    /// Adds a hook-point pattern the hook is meant for.
    pub fn hook_point(mut self, pattern: &str) -> Info {
        self.hook_points.push(pattern.into());
        self
    }
}

/// State kept by the host across calls and forward passes (`save_ctx`).
pub mod state {
    use super::*;

    pub fn get(key: &str) -> Option<Vec<u8>> {
        wstate::get(key)
    }
    pub fn set(key: &str, value: &[u8]) -> Result<()> {
        Ok(wstate::set(key, value)?)
    }
    pub fn remove(key: &str) {
        wstate::remove(key)
    }
    pub fn keys() -> Vec<String> {
        wstate::keys()
    }
    /// Typed value stored as JSON.
    pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>> {
        match wstate::get(key) {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::failed(format!("state {key:?}: {e}"))),
        }
    }
    pub fn set_json<T: serde::Serialize>(key: &str, value: &T) -> Result<()> {
        let b = serde_json::to_vec(value).map_err(|e| Error::failed(e.to_string()))?;
        set(key, &b)
    }
}

/// Messages for the user (tagged by the host with plugin, hook point, rank).
pub mod log {
    use super::wlog::{self, Level};
    pub fn debug(msg: &str) {
        wlog::log(Level::Debug, msg)
    }
    pub fn info(msg: &str) {
        wlog::log(Level::Info, msg)
    }
    pub fn warn(msg: &str) {
        wlog::log(Level::Warn, msg)
    }
    pub fn error(msg: &str) {
        wlog::log(Level::Error, msg)
    }
}

/// Host-seeded randomness, identical on every rank for the same call.
pub mod random {
    use super::wrand;
    pub fn next_u64() -> u64 {
        wrand::next_u64()
    }
    pub fn uniform(n: usize) -> Vec<f32> {
        wrand::uniform(n as u32)
    }
    pub fn normal(n: usize) -> Vec<f32> {
        wrand::normal(n as u32)
    }
}

/// A HookFunction.
pub trait HookFunction: Sized + 'static {
    /// Static self-description (callable before `init`).
    fn info() -> Info;
    /// Build the hook from the user's JSON configuration.
    fn init(config: &str) -> Result<Self>;
    /// The access this configured hook needs (default: in place if
    /// `info().edits`, else read-only; may read anything).
    fn access(&self) -> Access {
        if Self::info().edits {
            Access::edits()
        } else {
            Access::read_only()
        }
    }
    /// Called at every hook point the hook is registered on.
    fn forward(&mut self, ctx: &Context, act: &mut Activation<'_>) -> Result<()>;
}

#[doc(hidden)]
pub mod __dispatch {
    use super::*;
    use std::cell::RefCell;

    pub fn metadata<H: HookFunction>() -> wit::PluginInfo {
        let i = H::info();
        wit::PluginInfo {
            name: i.name,
            version: i.version,
            description: i.description,
            hook_points: i.hook_points,
            edits: i.edits,
        }
    }

    pub fn init<H: HookFunction>(
        cell: &'static std::thread::LocalKey<RefCell<Option<H>>>,
        config: String,
    ) -> std::result::Result<wit::Access, wit::HookError> {
        let h = H::init(&config)?;
        let a = h.access();
        cell.with(|c| *c.borrow_mut() = Some(h));
        let mode = match a.mode {
            EditMode::ReadOnly => wit::EditMode::ReadOnly,
            EditMode::InPlace => wit::EditMode::InPlace,
            EditMode::Replace => wit::EditMode::Replace,
        };
        Ok(wit::Access {
            mode,
            reads: a.reads.map(|s| s.wit()),
        })
    }

    pub fn on_forward<H: HookFunction>(
        cell: &'static std::thread::LocalKey<RefCell<Option<H>>>,
        ctx: wit::CallContext,
        act: &RawActivation,
    ) -> std::result::Result<(), wit::HookError> {
        use super::__private::RawActivation;
        let _: &RawActivation = act;
        let shape: Vec<usize> = ctx.shape.iter().map(|&d| d as usize).collect();
        let dtype = DType::from(ctx.dtype);
        let c = Context {
            hook_point: ctx.hook_point,
            shape: shape.clone(),
            dtype,
            rank: ctx.rank,
            forward_index: ctx.forward_index,
            generation: super::wit_gen::current(),
            backward: super::wit_pass::current_direction() == super::wit_pass::Direction::Backward,
            token_dim: super::__private::flexmodel::hook::tokens::token_dim().map(|d| d as usize),
            real_tokens: super::__private::flexmodel::hook::tokens::real_tokens(),
        };
        let mut a = Activation::__new(act, shape, dtype);
        cell.with(|cell| match cell.borrow_mut().as_mut() {
            Some(h) => h.forward(&c, &mut a).map_err(Into::into),
            None => Err(wit::HookError::Failed("hook called before init".into())),
        })
    }

    pub use super::__private::RawActivation;
}

/// Export a [`HookFunction`] implementation as the component's `plugin`.
#[macro_export]
macro_rules! export_hook {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __FLEXMODEL_HOOK: ::std::cell::RefCell<::std::option::Option<$ty>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            struct __FlexmodelExport;
            impl $crate::__private::Guest for __FlexmodelExport {
                fn metadata() -> $crate::__private::wit::PluginInfo {
                    $crate::__dispatch::metadata::<$ty>()
                }
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::__private::wit::Access, $crate::__private::wit::HookError> {
                    $crate::__dispatch::init::<$ty>(&__FLEXMODEL_HOOK, config)
                }
                fn on_forward(
                    ctx: $crate::__private::wit::CallContext,
                    act: &$crate::__private::RawActivation,
                ) -> ::std::result::Result<(), $crate::__private::wit::HookError> {
                    $crate::__dispatch::on_forward::<$ty>(&__FLEXMODEL_HOOK, ctx, act)
                }
            }
            $crate::__private::__export_hook_plugin!(__FlexmodelExport with_types_in $crate::__private);
        };
    };
}

/// Everything a hook author needs.
pub mod prelude {
    pub use super::{
        Access, Activation, Context, DType, Dim, EditMode, Error, HookFunction, Info, Result,
        Slice, emit, emit_bytes, export_hook, log, parse_config, random, state,
    };
}
