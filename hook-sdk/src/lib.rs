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
use __private::flexmodel::hook::{log as wlog, output as wout, random as wrand, state as wstate};
use __private::wit;

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

/// One dimension of a [`Slice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dim {
    /// First index; negative counts from the end.
    pub start: i64,
    /// One past the last index (`None`: to the end); negative counts from the end.
    pub stop: Option<i64>,
    /// Stride, at least 1.
    pub step: u64,
}

impl Dim {
    /// The whole dimension.
    pub const ALL: Dim = Dim {
        start: 0,
        stop: None,
        step: 1,
    };
    /// A single index (negative counts from the end).
    pub fn index(i: i64) -> Dim {
        Dim {
            start: i,
            stop: if i == -1 { None } else { Some(i + 1) },
            step: 1,
        }
    }
    /// Indices `[start, stop)`.
    pub fn range(start: i64, stop: i64) -> Dim {
        Dim {
            start,
            stop: Some(stop),
            step: 1,
        }
    }
    /// Indices `start, start+step, ...` below `stop`.
    pub fn strided(start: i64, stop: Option<i64>, step: u64) -> Dim {
        Dim { start, stop, step }
    }
}

/// A strided selection of a tensor: one [`Dim`] per leading dimension, the
/// remaining dimensions whole. Python slice semantics, but out-of-range
/// bounds are errors rather than clamped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slice(pub Vec<Dim>);

impl Slice {
    /// The whole tensor.
    pub fn all() -> Slice {
        Slice(Vec::new())
    }
    /// From explicit dims.
    pub fn new(dims: impl Into<Vec<Dim>>) -> Slice {
        Slice(dims.into())
    }
    /// Append a dimension.
    pub fn then(mut self, d: Dim) -> Slice {
        self.0.push(d);
        self
    }
    /// Token `pos` of every sequence of a `[batch, seq, ...]` activation.
    pub fn token(pos: i64) -> Slice {
        Slice(vec![Dim::ALL, Dim::index(pos)])
    }
    /// The last token of every sequence of a `[batch, seq, ...]` activation.
    pub fn last_token() -> Slice {
        Slice::token(-1)
    }
    /// Columns `[start, stop)` of the last dimension of a tensor of rank `rank`.
    pub fn last_dim_range(rank: usize, start: i64, stop: i64) -> Slice {
        let mut d = vec![Dim::ALL; rank.saturating_sub(1)];
        d.push(Dim::range(start, stop));
        Slice(d)
    }
    fn wit(&self) -> Vec<wit::DimRange> {
        self.0
            .iter()
            .map(|d| wit::DimRange {
                start: d.start,
                stop: d.stop,
                step: d.step,
            })
            .collect()
    }
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
}

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

/// Elements per chunk in [`Activation::for_each_chunk`] (64 KiB of f32).
pub const CHUNK: usize = 16 * 1024;

/// The activation a hook is called on, held by the host.
pub struct Activation<'a> {
    raw: &'a __private::RawActivation,
    shape: Vec<usize>,
    dtype: DType,
}

impl<'a> Activation<'a> {
    /// The raw WIT handle (for tests that call the host interfaces directly).
    #[doc(hidden)]
    pub fn raw(&self) -> &'a __private::RawActivation {
        self.raw
    }

    #[doc(hidden)]
    pub fn __new(raw: &'a __private::RawActivation, shape: Vec<usize>, dtype: DType) -> Self {
        Activation { raw, shape, dtype }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the host lets this hook write.
    pub fn writable(&self) -> bool {
        self.raw.writable()
    }

    /// Elements `[offset, offset+len)` (row-major) as f32.
    pub fn read(&self, offset: usize, len: usize) -> Result<Vec<f32>> {
        Ok(self.raw.read(offset as u64, len as u64)?)
    }
    /// Elements `[offset, offset+len)` as raw little-endian bytes of the native dtype.
    pub fn read_bytes(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        Ok(self.raw.read_bytes(offset as u64, len as u64)?)
    }
    /// A strided slice as f32, row-major over the slice.
    pub fn read_slice(&self, s: &Slice) -> Result<Vec<f32>> {
        Ok(self.raw.read_slice(&s.wit())?)
    }
    /// Shape of a slice.
    pub fn slice_shape(&self, s: &Slice) -> Result<Vec<usize>> {
        Ok(self
            .raw
            .slice_shape(&s.wit())?
            .into_iter()
            .map(|d| d as usize)
            .collect())
    }
    /// The whole activation as f32 (copies everything: prefer slices or chunks).
    pub fn read_all(&self) -> Result<Vec<f32>> {
        self.read(0, self.numel())
    }
    /// Visit the whole activation in chunks of at most [`CHUNK`] elements:
    /// `f(offset, values)`. Moves every byte once, in cache-sized pieces.
    pub fn for_each_chunk(&self, mut f: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let n = self.numel();
        let mut off = 0;
        while off < n {
            let len = CHUNK.min(n - off);
            if self.dtype == DType::F32 {
                // Native bytes are the fastest read (one copy); view them as f32.
                let b = self.read_bytes(off, len)?;
                // SAFETY: any 4 bytes are a valid f32; `align_to` handles alignment.
                let (head, body, tail) = unsafe { b.align_to::<f32>() };
                if head.is_empty() && tail.is_empty() {
                    f(off, body)?;
                } else {
                    let v: Vec<f32> = b
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    f(off, &v)?;
                }
            } else {
                let v = self.read(off, len)?;
                f(off, &v)?;
            }
            off += len;
        }
        Ok(())
    }

    /// Overwrite elements starting at `offset`.
    pub fn write(&mut self, offset: usize, values: &[f32]) -> Result<()> {
        if self.dtype == DType::F32 {
            // Same bytes, faster path (the host copies them once, in place).
            // SAFETY: f32 has no padding; the byte view covers exactly `values`.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    values.as_ptr() as *const u8,
                    std::mem::size_of_val(values),
                )
            };
            return self.write_bytes(offset, bytes);
        }
        Ok(self.raw.write(offset as u64, values)?)
    }
    /// Overwrite elements starting at `offset` with native-dtype bytes.
    pub fn write_bytes(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        Ok(self.raw.write_bytes(offset as u64, bytes)?)
    }
    /// Overwrite a slice with `values` (row-major over the slice).
    pub fn write_slice(&mut self, s: &Slice, values: &[f32]) -> Result<()> {
        Ok(self.raw.write_slice(&s.wit(), values)?)
    }
    /// Set a slice to `value`.
    pub fn fill(&mut self, s: &Slice, value: f32) -> Result<()> {
        Ok(self.raw.fill(&s.wit(), value)?)
    }
    /// Set a slice to zero.
    pub fn zero(&mut self, s: &Slice) -> Result<()> {
        self.fill(s, 0.0)
    }
    /// Multiply a slice by `factor`.
    pub fn scale(&mut self, s: &Slice, factor: f32) -> Result<()> {
        Ok(self.raw.scale(&s.wit(), factor)?)
    }
    /// Add `alpha * v` to every row (last dimension) of a slice.
    pub fn add_vector(&mut self, s: &Slice, v: &[f32], alpha: f32) -> Result<()> {
        Ok(self.raw.add_vector(&s.wit(), v, alpha)?)
    }
    /// Emit a slice of this activation into the output dictionary without
    /// copying it through the plugin (`name` empty: the hook point's name).
    pub fn emit(&self, name: &str, s: &Slice) -> Result<()> {
        Ok(wout::emit_activation(name, self.raw, &s.wit())?)
    }
}

/// Emit an f32 tensor into the output dictionary.
pub fn emit(name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    Ok(wout::emit(name, &shape, values)?)
}

/// Emit raw bytes of `dtype` into the output dictionary.
pub fn emit_bytes(name: &str, shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<()> {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    Ok(wout::emit_bytes(name, &shape, dtype.into(), bytes)?)
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

/// A slice as written in a JSON configuration: a list with one entry per
/// leading dimension, each `null` (whole dimension), an integer (one index,
/// negative from the end), `[start, stop]` or `[start, stop, step]` (`stop`
/// may be `null`). `[null, -1]` is the last token of every sequence.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(transparent)]
pub struct SliceSpec(pub Vec<DimSpec>);

/// One dimension of a [`SliceSpec`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum DimSpec {
    All(()),
    Index(i64),
    Range(Vec<Option<i64>>),
}

impl SliceSpec {
    /// Validate and convert to a [`Slice`].
    pub fn to_slice(&self) -> Result<Slice> {
        let mut dims = Vec::with_capacity(self.0.len());
        for d in &self.0 {
            dims.push(match d {
                DimSpec::All(()) => Dim::ALL,
                DimSpec::Index(i) => Dim::index(*i),
                DimSpec::Range(v) => match v.as_slice() {
                    [s, e] => Dim::strided(s.unwrap_or(0), *e, 1),
                    [s, e, st] => {
                        let step = st.unwrap_or(1);
                        if step < 1 {
                            return Err(Error::config(format!("slice step {step} must be >= 1")));
                        }
                        Dim::strided(s.unwrap_or(0), *e, step as u64)
                    }
                    _ => {
                        return Err(Error::config(format!(
                            "slice range {v:?} must be [start, stop] or [start, stop, step]"
                        )));
                    }
                },
            });
        }
        Ok(Slice(dims))
    }
}
