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
pub mod thread;
pub mod wire;

pub use comm::Communicator;
pub use error::CommError;
pub use mesh::{
    Coords, Groups, Mesh, local_ranks_from_env, rank_from, rank_from_env, threads_per_rank,
};
pub use thread::ThreadComm;
