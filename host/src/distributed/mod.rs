//! The distributed engine's communication layer: the [`Communicator`] trait
//! and its backends (threads of one process; MPI and NCCL behind cargo
//! features), the [`Mesh`] of ranks, and how a hook point's activation is
//! gathered from and scattered back to tensor-parallel shards.

pub mod comm;
pub mod error;
pub mod layout;
pub mod mesh;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
mod p2p;
pub mod solo;
pub mod thread;
pub mod wire;

pub use comm::Communicator;
pub use error::CommError;
pub use mesh::{
    Coords, Groups, Mesh, local_ranks_from_env, rank_from, rank_from_env, threads_per_rank,
};
pub use solo::Solo;
pub use thread::ThreadComm;

/// The runtime that keeps a launched job's communication library
/// initialised; drop it after every communicator made from it.
pub type Runtime = Box<dyn std::any::Any>;

/// This process's world communicator as one rank of an MPI job
/// (`mpirun`/`srun`), with the runtime to keep while it is used;
/// `Unavailable` in a build without the `mpi` feature.
pub fn mpi_world(
    timeout: std::time::Duration,
) -> Result<(Runtime, Box<dyn Communicator>), CommError> {
    #[cfg(feature = "mpi")]
    {
        let (rt, world) = mpi::init(timeout)?;
        Ok((Box::new(rt), Box::new(world)))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = timeout;
        Err(CommError::Unavailable(
            "this build has no MPI backend: rebuild with `--features mpi`".into(),
        ))
    }
}

/// Whether this build has the MPI backend (the `mpi` feature).
pub const HAS_MPI: bool = cfg!(feature = "mpi");
