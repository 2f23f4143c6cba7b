//! The FlexModel API: wrap a model, register hooks (WASM plugins or native
//! closures) on hook points by name, alias or glob pattern, run forwards, and
//! collect what the hooks retrieve.
//!
//! ```ignore
//! let mut fm = FlexModel::new(Model::load(dir, Kind::Float, Device::Cpu)?);
//! let h = fm.register_wasm(&plugin, "blocks.*.hook_resid_post", r#"{"slice": [null, -1]}"#, &["probe"])?;
//! let out = fm.forward(&ids, &Groups::All)?;      // out.outputs: hook point -> tensor (CPU)
//! fm.remove(h);
//! let model = fm.unwrap();                         // the original model, unchanged
//! ```

mod backward;
mod dist;
mod dist_backward;
mod dist_site;
mod generate;
mod native;
mod rank;
mod registry;
mod report;
mod save;
pub(crate) mod site;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tch::Tensor;

use crate::hooks::{Hook, HookError, LoadError, LogLevel, Plugin};
use crate::models::{Model, ModelError, PatternError, PointInfo, PointPattern, Tokenizer};

pub use backward::{BackwardOutput, Loss};
pub use dist::{DistFlexModel, DistOptions};
pub use dist_backward::RankBackward;
pub use generate::{GenerateOptions, GenerateOutput, Sampling};
pub use native::FnHook;
pub use rank::RankEngine;
pub use registry::HookListing;
pub use registry::{HookSet, Registration};
pub use save::{producer_key, save_safetensors};

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
    Comm(#[from] crate::distributed::CommError),
    /// Another rank failed with an error that is not a hook's.
    #[error("rank {rank}: {message}")]
    Rank { rank: usize, message: String },
}

/// Identifies a registered hook, to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookHandle(pub(crate) u64);

/// Which hooks run in a forward. Every hook is in group `all` and in the
/// groups it was tagged with at registration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Groups {
    /// Every registered hook.
    #[default]
    All,
    /// Only hooks in at least one of these groups.
    Only(BTreeSet<String>),
    /// Every hook except those in any of these groups.
    Except(BTreeSet<String>),
}

impl Groups {
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(g: I) -> Groups {
        Groups::Only(g.into_iter().map(Into::into).collect())
    }
    pub fn except<I: IntoIterator<Item = S>, S: Into<String>>(g: I) -> Groups {
        Groups::Except(g.into_iter().map(Into::into).collect())
    }
    pub(crate) fn enables(&self, tags: &BTreeSet<String>) -> bool {
        match self {
            Groups::All => true,
            Groups::Only(g) => g.contains("all") || tags.iter().any(|t| g.contains(t)),
            Groups::Except(g) => !g.contains("all") && !tags.iter().any(|t| g.contains(t)),
        }
    }
}

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
    pub logs: Vec<(String, String, LogLevel, String)>,
    /// Index of this forward pass (0 for the first).
    pub forward_index: u64,
    /// Distributed runs: bytes received from other ranks to build the hooks'
    /// views (data and message headers), per hook point, summed over all
    /// ranks (empty on one rank).
    pub gathered_bytes: BTreeMap<String, u64>,
}

/// What [`FlexModel::forward_until`] returns.
#[derive(Debug)]
pub struct StoppedOutput {
    /// The canonical hook point the forward stopped after.
    pub stopped_after: String,
    /// Tensors the hooks emitted up to there, on CPU.
    pub outputs: BTreeMap<String, Tensor>,
    /// Who emitted each output (see [`ForwardOutput::producers`]).
    pub producers: BTreeMap<String, String>,
    pub logs: Vec<(String, String, LogLevel, String)>,
    pub forward_index: u64,
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
        e => FlexError::Model(e),
    }
}

/// What one single-rank forward produced.
struct RunOut {
    logits: Option<Tensor>,
    outputs: BTreeMap<String, Tensor>,
    producers: BTreeMap<String, String>,
    logs: Vec<(String, String, LogLevel, String)>,
    index: u64,
}

/// A model wrapped for hooks.
pub struct FlexModel {
    model: Model,
    tokenizer: Option<Tokenizer>,
    registry: HookSet,
    forward_index: u64,
    limits: crate::hooks::ForwardLimits,
}

impl FlexModel {
    /// Wrap `model`. Nothing about the model changes.
    pub fn new(model: Model) -> FlexModel {
        FlexModel {
            model,
            tokenizer: None,
            registry: HookSet::default(),
            forward_index: 0,
            limits: crate::hooks::ForwardLimits::default(),
        }
    }

    /// Caps on what all hooks together may emit and log in one forward pass
    /// (or one whole generation).
    pub fn set_forward_limits(&mut self, limits: crate::hooks::ForwardLimits) {
        self.limits = limits;
    }

    /// Load the model folder `dir` (and its `tokenizer.json`, if any) and wrap it.
    pub fn load(
        dir: &std::path::Path,
        kind: tch::Kind,
        device: tch::Device,
    ) -> Result<FlexModel, FlexError> {
        let model = Model::load(dir, kind, device).map_err(FlexError::Model)?;
        let tokenizer = Tokenizer::load(dir).map_err(FlexError::Model)?;
        Ok(FlexModel {
            tokenizer,
            ..FlexModel::new(model)
        })
    }

    /// The tokenizer loaded with the model, if the folder had one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Tokenize `text` with the model's tokenizer and run [`Self::forward`].
    pub fn forward_text(
        &mut self,
        text: &str,
        groups: &Groups,
    ) -> Result<ForwardOutput, FlexError> {
        let ids = text_ids(self.tokenizer.as_ref(), text)?;
        self.forward(&ids, groups)
    }

    /// The wrapped model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Remove every hook and return the original model.
    pub fn unwrap(self) -> Model {
        self.model
    }

    /// Every hook point, with shapes for `batch` × `seq` tokens.
    pub fn points(&self, batch: i64, seq: i64) -> Vec<PointInfo> {
        self.model.points(batch, seq)
    }

    /// Register `hook` on every hook point matching `pattern` (canonical
    /// name, alias, or glob over either), tagged with `groups`.
    pub fn register(
        &mut self,
        hook: Arc<dyn Hook>,
        pattern: &str,
        groups: &[&str],
    ) -> Result<HookHandle, FlexError> {
        // Shapes do not matter for matching: names are shape-independent.
        self.registry
            .add(hook, pattern, groups, &self.model.points(1, 1))
    }

    /// Register a WASM plugin with its JSON `config`.
    pub fn register_wasm(
        &mut self,
        plugin: &Arc<Plugin>,
        pattern: &str,
        config: &str,
        groups: &[&str],
    ) -> Result<HookHandle, FlexError> {
        let hook = registry::wasm_hook(plugin, pattern, config, &self.model.points(1, 1))?;
        self.register(hook, pattern, groups)
    }

    /// Register `hook` as a backward hook: in [`Self::backward`] it is
    /// called on the gradient of the loss at every point matching `pattern`
    /// (`CallContext::backward` is set), and its edits change the gradient
    /// that flows further back.
    pub fn register_backward(
        &mut self,
        hook: Arc<dyn Hook>,
        pattern: &str,
        groups: &[&str],
    ) -> Result<HookHandle, FlexError> {
        self.registry
            .add_directed(hook, pattern, groups, &self.model.points(1, 1), true)
    }

    /// Register a WASM plugin as a backward hook (see [`Self::register_backward`]).
    pub fn register_wasm_backward(
        &mut self,
        plugin: &Arc<Plugin>,
        pattern: &str,
        config: &str,
        groups: &[&str],
    ) -> Result<HookHandle, FlexError> {
        let hook = registry::wasm_hook(plugin, pattern, config, &self.model.points(1, 1))?;
        self.register_backward(hook, pattern, groups)
    }

    /// A forward on `input_ids` and a backward pass of `loss`: forward hooks
    /// run, backward hooks see (and may edit) the gradient at their points,
    /// and every parameter's gradient is returned (the model is unchanged).
    pub fn backward(
        &mut self,
        input_ids: &Tensor,
        groups: &Groups,
        loss: &Loss,
    ) -> Result<BackwardOutput, FlexError> {
        let ids = batch_ids(input_ids)?;
        let index = self.forward_index;
        self.forward_index += 1;
        backward::run(&self.model, &self.registry.regs, groups, index, &ids, loss)
    }

    /// Remove a hook; `false` if the handle was already removed.
    pub fn remove(&mut self, h: HookHandle) -> bool {
        self.registry.remove(h)
    }

    /// Registered hooks: (handle, hook name, pattern, bound points, groups).
    pub fn hooks(&self) -> Vec<HookListing> {
        self.registry.list()
    }

    /// Forward passes started so far.
    pub fn forward_count(&self) -> u64 {
        self.forward_index
    }

    /// Run a forward on `input_ids` (`[batch, seq]` or `[seq]`, int64) with
    /// the hooks `groups` enables.
    pub fn forward(
        &mut self,
        input_ids: &Tensor,
        groups: &Groups,
    ) -> Result<ForwardOutput, FlexError> {
        let r = self.run(input_ids, groups, None)?;
        let logits = r
            .logits
            .ok_or_else(|| FlexError::Input("the forward produced no logits".into()))?;
        Ok(ForwardOutput {
            logits,
            outputs: r.outputs,
            producers: r.producers,
            logs: r.logs,
            forward_index: r.index,
            gathered_bytes: BTreeMap::new(),
        })
    }

    /// Run the forward only up to the hook point `stop_after` (a name, alias
    /// or pattern; with several matches, the last in forward order), after its
    /// hooks ran: for retrieving activations without paying for the rest of
    /// the model (TransformerLens' `stop_at_layer`). No logits are computed.
    pub fn forward_until(
        &mut self,
        input_ids: &Tensor,
        groups: &Groups,
        stop_after: &str,
    ) -> Result<StoppedOutput, FlexError> {
        let points = PointPattern::new(stop_after)?.select(&self.model.points(1, 1))?;
        let stop = points.last().cloned().unwrap_or_default();
        let r = self.run(input_ids, groups, Some(stop.clone()))?;
        Ok(StoppedOutput {
            stopped_after: stop,
            outputs: r.outputs,
            producers: r.producers,
            logs: r.logs,
            forward_index: r.index,
        })
    }

    fn run(
        &mut self,
        input_ids: &Tensor,
        groups: &Groups,
        stop: Option<String>,
    ) -> Result<RunOut, FlexError> {
        let ids = batch_ids(input_ids)?;
        let index = self.forward_index;
        self.forward_index += 1;
        let mut site = site::Site::new(
            &self.registry.regs,
            groups,
            index,
            stop,
            crate::hooks::RankInfo::SINGLE,
        );
        site.budget = site::RunBudget::new(self.limits);
        let logits = match self.model.forward(&ids, &mut site) {
            Ok(logits) => Some(logits),
            Err(ModelError::Stopped(_)) => None,
            Err(e) => return Err(model_error(e, site.outputs)),
        };
        Ok(RunOut {
            logits,
            outputs: site.outputs,
            producers: site.producers,
            logs: site.logs,
            index,
        })
    }

    /// Generate up to `opts.max_new_tokens` tokens after `input_ids`
    /// (`[seq]` or `[batch, seq]`) with a key/value cache, the hooks `groups`
    /// enables firing at every step (`CallContext::generation` says which);
    /// `on_token(step, tokens)` gets each step's new token per sequence as it
    /// comes.
    pub fn generate(
        &mut self,
        input_ids: &Tensor,
        groups: &Groups,
        opts: &GenerateOptions,
        mut on_token: impl FnMut(usize, &[i64]),
    ) -> Result<GenerateOutput, FlexError> {
        let ids = generate::prompt_ids(input_ids)?;
        let b = ids.size()[0] as usize;
        let mut chooser = generate::Chooser::new(opts, b)?;
        let mut cache = crate::models::KvCache::new();
        let mut tokens = ids.to_device(tch::Device::Cpu);
        let mut new_tokens = vec![Vec::new(); b];
        let mut outputs = BTreeMap::new();
        let mut producers = BTreeMap::new();
        let mut logs = Vec::new();
        let mut input = ids;
        // One budget for the whole generation: the caps span all steps.
        let mut budget = site::RunBudget::new(self.limits);
        for step in 0..opts.max_new_tokens {
            let index = self.forward_index;
            self.forward_index += 1;
            let mut site = site::Site::new(
                &self.registry.regs,
                groups,
                index,
                None,
                crate::hooks::RankInfo::SINGLE,
            );
            site.generation = Some(crate::hooks::GenStep {
                step: step as u64,
                position: cache.len() as u64,
            });
            site.budget = std::mem::take(&mut budget);
            let r = self.model.forward_stage(
                &input,
                None,
                &mut site,
                &crate::models::SingleRank,
                Some(&mut cache),
            );
            budget = std::mem::take(&mut site.budget);
            let step_outputs = std::mem::take(&mut site.outputs);
            for (k, v) in step_outputs {
                outputs.insert(generate::step_key(step, &k), v);
            }
            for (k, v) in std::mem::take(&mut site.producers) {
                producers.insert(generate::step_key(step, &k), v);
            }
            logs.append(&mut site.logs);
            let logits = r.map_err(|e| model_error(e, std::mem::take(&mut outputs)))?;
            let next = chooser.next(&logits)?;
            on_token(step, &next);
            for (row, t) in new_tokens.iter_mut().zip(&next) {
                row.push(*t);
            }
            let col = Tensor::from_slice(&next).view([b as i64, 1]);
            tokens = Tensor::cat(&[tokens, col.shallow_clone()], 1);
            if chooser.all_done() {
                break;
            }
            input = col.to_device(self.model.device());
        }
        Ok(GenerateOutput {
            tokens,
            new_tokens,
            outputs,
            producers,
            logs,
        })
    }
}
