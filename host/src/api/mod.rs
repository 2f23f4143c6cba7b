//! The FlexModel API, the public surface over the [`crate::engine`]: wrap a
//! model on one rank or a mesh, register hooks (WASM plugins or native
//! closures) on hook points by name, alias or glob pattern, run forwards,
//! generation and backward passes, and collect what the hooks retrieve.
//!
//! ```ignore
//! let mut fm = FlexModel::load(dir, Kind::Float, Device::Cpu)?;          // one rank
//! let mut tp = FlexModel::load_with(dir, &Options::new(1, 1, 2)?)?;     // two TP ranks (threads)
//! let h = fm.register_wasm(&plugin, "blocks.*.hook_resid_post", r#"{"slice": [null, -1]}"#, &["probe"])?;
//! let out = fm.forward(&ids, &Groups::All)?;      // out.outputs: hook point -> tensor (CPU)
//! fm.remove(h);
//! ```
//!
//! One type for every layout: the ranks run in this process (the caller's
//! thread for one rank, a thread per rank for a mesh) or this process is
//! one rank of a launched job (`Options::launch`, or [`FlexModel::join`]
//! with a communicator); the API is the same.

mod facade;
mod native;
mod packages;
mod passes;
pub mod rows;
mod save;
mod threads;

pub use crate::engine::{
    BackwardOutput, Batch, FlexError, ForwardOutput, GenerateOptions, GenerateOutput, Groups, Halt,
    HookHandle, HookListing, HookSet, Input, Interrupt, Lane, Launch, LogLine, Loss, Options,
    Padding, RankBackward, Registration, Sampling, StoppedOutput, batch_bounds,
};
pub use facade::FlexModel;
pub use native::FnHook;
pub use packages::{Accepted, Limits, PluginRecord};
pub use save::{producer_key, save_safetensors, save_safetensors_with};

/// One rank's result of a forward: the merged output at global rank 0,
/// `None` at the others, or the rank's error.
pub type Reply = Result<Option<ForwardOutput>, FlexError>;
