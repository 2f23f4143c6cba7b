//! How a model is loaded and run: its mesh, dtype, device, and how its ranks
//! are launched.

use tch::{Device, Kind};

use super::FlexError;
use crate::distributed::Mesh;
use crate::hooks::ForwardLimits;

/// Where the ranks of the mesh run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Launch {
    /// Every rank in this process: the caller's thread for one rank, a
    /// thread per rank otherwise (the thread backend).
    #[default]
    InProcess,
    /// This process is one rank of a job launched by `mpirun`/`srun`: it
    /// runs its own rank, over MPI (build with the `mpi` feature).
    Mpi,
}

/// Options of a model on a mesh of ranks (`Options::default()` is one rank).
#[derive(Debug, Clone)]
pub struct Options {
    pub mesh: Mesh,
    pub kind: Kind,
    pub device: Device,
    /// Where the ranks run.
    pub launch: Launch,
    /// How long a rank waits for a peer before failing the forward.
    pub timeout: std::time::Duration,
    /// Verify that every TP rank computed the same edit and emitted the same
    /// outputs (an xxh3 hash of each edited activation and each output; on by
    /// default in every build: a plugin that differs per rank fails with
    /// `Diverged` instead of silently mixing shards).
    pub check_edits: bool,
    /// Caps on what all hooks of a forward pass may emit and log, per rank.
    pub forward_limits: ForwardLimits,
    /// Run the tensor-parallel collectives through NCCL (CUDA devices, build
    /// with the `nccl` feature); refused cleanly where NCCL or a GPU is missing.
    pub nccl: bool,
    /// libtorch intra-op threads of each rank's thread (thread backend):
    /// by default the machine's cores shared out over the ranks.
    pub threads_per_rank: Option<i32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mesh: Mesh {
                pp: 1,
                dp: 1,
                tp: 1,
            },
            kind: Kind::Float,
            device: Device::Cpu,
            launch: Launch::InProcess,
            timeout: std::time::Duration::from_secs(60),
            check_edits: true,
            forward_limits: ForwardLimits::default(),
            nccl: false,
            threads_per_rank: None,
        }
    }
}

impl Options {
    /// `pp` pipeline stages × `dp` data-parallel replicas × `tp`
    /// tensor-parallel ranks.
    pub fn new(pp: usize, dp: usize, tp: usize) -> Result<Options, FlexError> {
        Ok(Options {
            mesh: Mesh::new(pp * dp * tp, pp, dp, tp)?,
            ..Options::default()
        })
    }

    /// One rank holding the whole model as `kind` on `device`.
    pub fn single(kind: Kind, device: Device) -> Options {
        Options {
            kind,
            device,
            ..Options::default()
        }
    }
}
