//! The engine: one implementation of forward, forward-until, generation and
//! backward passes with hooks, for one rank of any mesh `(pp, dp, tp)`. A
//! single-rank run is the mesh `(1, 1, 1)` over the trivial communicator
//! ([`crate::distributed::Solo`]) and takes the fast path: no wire
//! encoding, no collectives, the outputs handed over as they are.
//!
//! A forward on a rank: take this replica's rows of the batch (DP), receive
//! the hidden state from the previous stage (PP), run this stage's layers
//! with TP collectives and the rank's hook site ([`tp_site`]), send the
//! result on, then (on a mesh) exchange outcomes with every rank, so that
//! all return the same error, if any, and gather logits and retrieved
//! tensors at global rank 0 ([`report`]).
//!
//! - [`registry`]: registered hooks, groups, handles;
//! - [`site`]: calling the hooks of a point, collecting what they emit;
//!   [`lane`]: a hook confined to its job's rows of a shared batch;
//! - [`tp_site`]: a point's logical view over the TP group, agreement;
//! - [`forward`], [`stage`]: the forward pass and pipeline messages;
//! - [`generate`], [`sampling`]: generation with a key/value cache;
//! - [`backward`], [`tape`], [`loss`]: backward passes with hooks on
//!   gradients;
//! - [`load`]: joining a mesh and loading this rank's shard.

pub mod backward;
mod batch;
mod deferred;
mod error;
pub mod forward;
pub mod generate;
mod lane;
pub mod load;
pub mod loss;
mod options;
mod output;
pub mod registry;
pub(crate) mod report;
pub mod sampling;
pub(crate) mod site;
mod stage;
mod tape;
pub(crate) mod tp_site;

use std::collections::{HashMap, HashSet};

use tch::Tensor;

use crate::distributed::{self, Communicator, Coords, Mesh};
use crate::hooks::{ForwardLimits, RankInfo};
use crate::models::{Model, ModelError, PointInfo, TpComm, TpSplit};

pub use backward::{BackwardOutput, RankBackward};
pub use batch::{Batch, Input, Padding, batch_bounds};
pub use error::FlexError;
pub(crate) use error::{failure, model_error};
pub use forward::Collect;
pub use lane::{Halt, Interrupt, Lane};
pub use loss::Loss;
pub use options::{Launch, Options};
pub use output::{ForwardOutput, LogLine, StoppedOutput};
pub(crate) use output::{RunOutput, batch_ids, text_ids};
pub use registry::{Groups, HookHandle, HookListing, HookSet, Registration};
pub use sampling::{GenerateOptions, GenerateOutput, Sampling};

/// The models' view of the TP group.
pub(crate) struct TpAdapter<'a>(pub &'a dyn Communicator);

impl TpComm for TpAdapter<'_> {
    fn rank(&self) -> i64 {
        self.0.rank() as i64
    }
    fn size(&self) -> i64 {
        self.0.size() as i64
    }
    fn all_reduce(&self, t: Tensor) -> Result<Tensor, ModelError> {
        if self.0.size() == 1 {
            return Ok(t);
        }
        self.0
            .all_reduce_sum(&t)
            .map_err(|e| ModelError::Comm(Box::new(e)))
    }
}

/// One rank of a model on a mesh: its shard, its place on the mesh, its
/// communicators.
pub struct Engine {
    model: Model,
    mesh: Mesh,
    coords: Coords,
    groups: distributed::Groups,
    /// Hook point -> how it is split over the TP group.
    splits: HashMap<String, Option<TpSplit>>,
    /// Hook points whose first dimension is the batch.
    batched: HashSet<String>,
    /// Hook point -> its token dimension (the first that grows with the
    /// sequence), for points that have one.
    token_dims: HashMap<String, usize>,
    check_edits: bool,
    limits: ForwardLimits,
    vocab: i64,
    /// Checked at every hook point when this is the only rank.
    interrupt: Option<Interrupt>,
}

impl Engine {
    /// The engine of `model` (this rank's shard) at its place on `mesh`,
    /// with `groups` split from the world.
    pub(crate) fn new(
        model: Model,
        mesh: Mesh,
        groups: distributed::Groups,
        opts: &Options,
    ) -> Engine {
        let coords = mesh.coords(groups.world.rank());
        let points = model.points(1, 1);
        let splits = points
            .iter()
            .map(|p| (p.name.clone(), p.tp_split))
            .collect();
        let vocab = model.vocab_size();
        let twice = model.points(2, 1);
        let batched = points
            .iter()
            .zip(&twice)
            .filter(|(a, b)| a.shape.first() != b.shape.first())
            .map(|(a, _)| a.name.clone())
            .collect();
        let longer = model.points(1, 2);
        let token_dims = points
            .iter()
            .zip(&longer)
            .filter_map(|(a, b)| {
                let d = a.shape.iter().zip(&b.shape).position(|(x, y)| x != y)?;
                Some((a.name.clone(), d))
            })
            .collect();
        Engine {
            model,
            mesh,
            coords,
            groups,
            splits,
            batched,
            token_dims,
            check_edits: opts.check_edits,
            limits: opts.forward_limits,
            vocab,
            interrupt: None,
        }
    }

    /// A whole model on one rank: the mesh `(1, 1, 1)`.
    pub(crate) fn single(model: Model, opts: &Options) -> Engine {
        let groups = distributed::Groups {
            world: Box::new(distributed::Solo),
            tp: Box::new(distributed::Solo),
            dp: Box::new(distributed::Solo),
            pp: Box::new(distributed::Solo),
            replica: Box::new(distributed::Solo),
        };
        let mesh = Mesh {
            pp: 1,
            dp: 1,
            tp: 1,
        };
        Engine::new(model, mesh, groups, opts)
    }

    pub fn mesh(&self) -> Mesh {
        self.mesh
    }

    pub fn global_rank(&self) -> usize {
        self.groups.world.rank()
    }

    /// `b` from global rank 0 to every rank of the world (collective).
    pub(crate) fn broadcast_from_root(
        &self,
        b: Option<bytes::Bytes>,
    ) -> Result<bytes::Bytes, distributed::CommError> {
        self.groups.world.broadcast_bytes(b, 0)
    }

    /// Every rank of the world (collective).
    pub(crate) fn barrier(&self) -> Result<(), distributed::CommError> {
        self.groups.world.barrier()
    }

    /// Whether this is the only rank (the fast path).
    pub(crate) fn alone(&self) -> bool {
        self.mesh.world() == 1
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub(crate) fn into_model(self) -> Model {
        self.model
    }

    /// Every hook point of the (whole) model, logical shapes.
    pub fn points(&self, batch: i64, seq: i64) -> Vec<PointInfo> {
        self.model.points(batch, seq)
    }

    pub(crate) fn set_limits(&mut self, limits: ForwardLimits) {
        self.limits = limits;
    }

    /// Check `interrupt` at every hook point of later passes (one rank
    /// only: ranks of a mesh would stop at different points).
    pub(crate) fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        self.interrupt = interrupt.filter(|_| self.alone());
    }

    /// The interrupt a pass's site checks.
    pub(crate) fn interrupt(&self) -> Option<&Interrupt> {
        self.interrupt.as_ref()
    }

    /// Bytes this rank has received from its TP group so far.
    pub fn tp_bytes_received(&self) -> u64 {
        self.groups.tp.bytes_received()
    }

    pub(crate) fn rank_info(&self) -> RankInfo {
        let m = &self.mesh;
        RankInfo {
            tp_rank: self.coords.tp as u32,
            tp_size: m.tp as u32,
            pp_rank: self.coords.pp as u32,
            pp_size: m.pp as u32,
            dp_rank: self.coords.dp as u32,
            dp_size: m.dp as u32,
            global_rank: self.global_rank() as u32,
            world_size: m.world() as u32,
        }
    }

    /// Start pass number `index` on every communicator.
    fn set_epoch(&self, index: u64) {
        let g = &self.groups;
        for c in [&g.world, &g.tp, &g.dp, &g.pp, &g.replica] {
            c.set_epoch(index);
        }
    }

    /// This replica's rows of a batch of `b`: (first row, rows).
    fn replica_rows(&self, b: i64) -> Result<(i64, i64), String> {
        if b < self.mesh.dp as i64 {
            return Err(format!(
                "a batch of {b} cannot be split over {} data-parallel replicas",
                self.mesh.dp
            ));
        }
        Ok(crate::models::shard::balanced(
            b,
            self.mesh.dp as i64,
            self.coords.dp as i64,
        ))
    }
}
