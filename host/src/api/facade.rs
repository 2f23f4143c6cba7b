//! [`FlexModel`]: a model wrapped for hooks on any mesh; how it is built,
//! and registration.

use std::path::Path;
use std::sync::Arc;

use super::threads::Pool;
use crate::distributed::Communicator;
use crate::engine::{
    Engine, FlexError, HookHandle, HookListing, HookSet, Lane, Launch, Options, registry,
};
use crate::hooks::{ForwardLimits, Hook, Plugin};
use crate::models::{Model, PointInfo, Tokenizer};

/// Where this process's ranks run.
pub(crate) enum Ranks {
    /// One rank on the caller's thread: the only one (mesh `(1, 1, 1)`), or
    /// this process's rank of a launched job.
    Here {
        engine: Box<Engine>,
        /// Keeps MPI initialised while the engine's communicators live
        /// (dropped after them: fields drop in order).
        _runtime: Option<crate::distributed::Runtime>,
    },
    /// One thread per rank.
    Threads(Pool),
}

/// A model wrapped for hooks, on one rank or a mesh of ranks.
pub struct FlexModel {
    pub(crate) ranks: Ranks,
    pub(crate) registry: HookSet,
    pub(crate) points: Vec<PointInfo>,
    pub(crate) tokenizer: Option<Tokenizer>,
    pub(crate) opts: Options,
    pub(crate) forward_index: u64,
    pub(crate) vocab: i64,
    /// The model folder's end-of-sequence tokens.
    pub(crate) eos: Vec<i64>,
}

impl FlexModel {
    /// Wrap `model` (one rank). Nothing about the model changes.
    pub fn new(model: Model) -> FlexModel {
        let opts = Options::single(model.kind(), model.device());
        let engine = Engine::single(model, &opts);
        Self::here(engine, None, opts, None)
    }

    fn here(
        engine: Engine,
        runtime: Option<crate::distributed::Runtime>,
        opts: Options,
        tokenizer: Option<Tokenizer>,
    ) -> FlexModel {
        FlexModel {
            points: engine.points(1, 1),
            vocab: engine.model().vocab_size(),
            ranks: Ranks::Here {
                engine: Box::new(engine),
                _runtime: runtime,
            },
            registry: HookSet::default(),
            tokenizer,
            opts,
            forward_index: 0,
            eos: Vec::new(),
        }
    }

    /// Load the model folder `dir` (and its `tokenizer.json`, if any) on
    /// one rank.
    pub fn load(dir: &Path, kind: tch::Kind, device: tch::Device) -> Result<FlexModel, FlexError> {
        Self::load_with(dir, &Options::single(kind, device))
    }

    /// Load the model folder `dir` on the mesh of `opts`: every rank in
    /// this process ([`Launch::InProcess`]), or this process's rank of an
    /// MPI job ([`Launch::Mpi`]).
    pub fn load_with(dir: &Path, opts: &Options) -> Result<FlexModel, FlexError> {
        let tokenizer = Tokenizer::load(dir).map_err(FlexError::Model)?;
        let mut fm = match opts.launch {
            Launch::InProcess if opts.mesh.world() == 1 => {
                let model = Model::load(dir, opts.kind, opts.device).map_err(FlexError::Model)?;
                Self::here(Engine::single(model, opts), None, opts.clone(), None)
            }
            Launch::InProcess => {
                let (pool, points, vocab) = Pool::start(dir, opts)?;
                FlexModel {
                    ranks: Ranks::Threads(pool),
                    registry: HookSet::default(),
                    points,
                    vocab,
                    tokenizer: None,
                    opts: opts.clone(),
                    forward_index: 0,
                    eos: Vec::new(),
                }
            }
            Launch::Mpi => Self::join_mpi(dir, opts)?,
        };
        fm.tokenizer = tokenizer;
        fm.eos = crate::models::eos_tokens(dir);
        Ok(fm)
    }

    fn join_mpi(dir: &Path, opts: &Options) -> Result<FlexModel, FlexError> {
        let (rt, world) = crate::distributed::mpi_world(opts.timeout)?;
        let engine = Engine::load(dir, opts, world)?;
        Ok(Self::here(engine, Some(rt), opts.clone(), None))
    }

    /// Join the mesh of `opts` as this process's rank of a job whose ranks
    /// talk over `world` (collective: every rank calls it), loading this
    /// rank's shard of `dir`.
    pub fn join(
        dir: &Path,
        opts: &Options,
        world: Box<dyn Communicator>,
    ) -> Result<FlexModel, FlexError> {
        let engine = Engine::load(dir, opts, world)?;
        let tokenizer = Tokenizer::load(dir).map_err(FlexError::Model)?;
        let mut fm = Self::here(engine, None, opts.clone(), tokenizer);
        fm.eos = crate::models::eos_tokens(dir);
        Ok(fm)
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The model's end-of-sequence tokens (`generation_config.json`, else
    /// `config.json`; empty for a model wrapped with [`Self::new`]).
    pub fn eos_tokens(&self) -> &[i64] {
        &self.eos
    }

    /// The tokenizer loaded with the model, if the folder had one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// This process's global rank (0 when it runs every rank).
    pub fn global_rank(&self) -> usize {
        match &self.ranks {
            Ranks::Here { engine, .. } => engine.global_rank(),
            Ranks::Threads(_) => 0,
        }
    }

    /// Whether this process is one rank of a launched job (`mpirun`) of
    /// several: the other ranks run in other processes.
    pub fn launched(&self) -> bool {
        matches!(&self.ranks, Ranks::Here { engine, .. } if !engine.alone())
    }

    /// `message` from global rank 0 to every process of a launched job
    /// (collective: every rank calls it; only rank 0's `message` counts).
    /// In one process it is handed back.
    pub fn broadcast_from_root(&self, message: Option<Vec<u8>>) -> Result<Vec<u8>, FlexError> {
        match &self.ranks {
            Ranks::Here { engine, .. } if !engine.alone() => engine
                .broadcast_from_root(message.map(bytes::Bytes::from))
                .map(|b| b.to_vec())
                .map_err(|e| FlexError::Input(format!("broadcast: {e}"))),
            _ => Ok(message.unwrap_or_default()),
        }
    }

    /// Wait until every process of a launched job got here (collective);
    /// in one process there is nothing to wait for.
    pub fn barrier(&self) -> Result<(), FlexError> {
        match &self.ranks {
            Ranks::Here { engine, .. } if !engine.alone() => {
                engine.barrier().map_err(FlexError::Comm)
            }
            _ => Ok(()),
        }
    }

    /// Whether this process gets the merged results (global rank 0).
    pub fn is_root(&self) -> bool {
        self.global_rank() == 0
    }

    /// This process's shard of the model (`None` when the ranks are threads).
    pub fn model(&self) -> Option<&Model> {
        match &self.ranks {
            Ranks::Here { engine, .. } => Some(engine.model()),
            Ranks::Threads(_) => None,
        }
    }

    /// Remove every hook and return this process's model (its shard; `None`
    /// when the ranks are threads).
    pub fn into_model(self) -> Option<Model> {
        match self.ranks {
            Ranks::Here { engine, .. } => Some(engine.into_model()),
            Ranks::Threads(_) => None,
        }
    }

    /// Every hook point, with its logical (unsharded) shape for `batch` ×
    /// `seq` tokens.
    pub fn points(&self, batch: i64, seq: i64) -> Vec<PointInfo> {
        match &self.ranks {
            Ranks::Here { engine, .. } => engine.points(batch, seq),
            Ranks::Threads(pool) => pool
                .points(batch, seq)
                .unwrap_or_else(|| self.points.clone()),
        }
    }

    /// The model's vocabulary size.
    pub fn vocab_size(&self) -> i64 {
        self.vocab
    }

    /// Caps on what all hooks together may emit and log in one forward pass
    /// (or one whole generation), per rank.
    pub fn set_forward_limits(&mut self, limits: ForwardLimits) {
        self.opts.forward_limits = limits;
        match &mut self.ranks {
            Ranks::Here { engine, .. } => engine.set_limits(limits),
            Ranks::Threads(pool) => pool.set_limits(limits),
        }
    }

    /// Register `hook` on every hook point matching `pattern` (canonical
    /// name, alias, or glob over either), tagged with `groups`; it runs on
    /// every rank that holds such a point.
    pub fn register(
        &mut self,
        hook: Arc<dyn Hook>,
        pattern: &str,
        groups: &[&str],
    ) -> Result<HookHandle, FlexError> {
        self.registry.add(hook, pattern, groups, &self.points)
    }

    /// Register a WASM plugin with its JSON `config`.
    pub fn register_wasm(
        &mut self,
        plugin: &Arc<Plugin>,
        pattern: &str,
        config: &str,
        groups: &[&str],
    ) -> Result<HookHandle, FlexError> {
        let hook = registry::wasm_hook(plugin, pattern, config, &self.points)?;
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
            .add_directed(hook, pattern, groups, &self.points, true)
    }

    /// Register a WASM plugin as a backward hook (see [`Self::register_backward`]).
    pub fn register_wasm_backward(
        &mut self,
        plugin: &Arc<Plugin>,
        pattern: &str,
        config: &str,
        groups: &[&str],
    ) -> Result<HookHandle, FlexError> {
        let hook = registry::wasm_hook(plugin, pattern, config, &self.points)?;
        self.register_backward(hook, pattern, groups)
    }

    /// Confine hook `h` to a [`Lane`] (its rows of the batch, a key prefix,
    /// a deadline), or free it with `None`; `false` if it is not registered.
    pub fn set_lane(&mut self, h: HookHandle, lane: Option<Lane>) -> bool {
        self.registry.set_lane(h, lane)
    }

    /// Remove a hook; `false` if the handle was already removed.
    pub fn remove(&mut self, h: HookHandle) -> bool {
        self.registry.remove(h)
    }

    /// Ask `interrupt` during later passes: on one rank at every hook point
    /// (the pass ends there with [`FlexError::Interrupted`]); on a mesh of
    /// threads while waiting for the ranks (the call returns
    /// [`FlexError::Interrupted`] at once, the ranks finish the pass in the
    /// background and the next call waits for them). `None`: never.
    pub fn set_interrupt(&mut self, interrupt: Option<crate::engine::Interrupt>) {
        match &mut self.ranks {
            Ranks::Here { engine, .. } => engine.set_interrupt(interrupt),
            Ranks::Threads(pool) => pool.set_interrupt(interrupt),
        }
    }

    /// Registered hooks: (handle, hook name, pattern, bound points, groups).
    pub fn hooks(&self) -> Vec<HookListing> {
        self.registry.list()
    }

    /// Forward passes started so far.
    pub fn forward_count(&self) -> u64 {
        self.forward_index
    }
}
