//! The device mesh `(pp, dp, tp)` in FlexModel's order: tensor-parallel ranks
//! are contiguous, then data-parallel replicas, then pipeline stages:
//! `rank = (pp_rank * dp + dp_rank) * tp + tp_rank`.

use super::comm::Communicator;
use super::error::CommError;

/// Sizes of the three axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mesh {
    pub pp: usize,
    pub dp: usize,
    pub tp: usize,
}

/// A rank's coordinates on the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coords {
    pub pp: usize,
    pub dp: usize,
    pub tp: usize,
}

/// The sub-groups a rank belongs to.
pub struct Groups {
    pub world: Box<dyn Communicator>,
    /// Ranks sharing a layer's weights (same stage, same replica).
    pub tp: Box<dyn Communicator>,
    /// Replicas of the same shard (same stage, same TP rank).
    pub dp: Box<dyn Communicator>,
    /// The stages of one pipeline (same replica, same TP rank).
    pub pp: Box<dyn Communicator>,
    /// Every rank of one data-parallel replica (all its stages and TP
    /// ranks), in global rank order: its rank 0 is the replica's first.
    pub replica: Box<dyn Communicator>,
}

impl Mesh {
    /// A mesh over `world` ranks; the sizes must multiply to it.
    pub fn new(world: usize, pp: usize, dp: usize, tp: usize) -> Result<Mesh, CommError> {
        if pp == 0 || dp == 0 || tp == 0 || pp * dp * tp != world {
            return Err(CommError::Invalid(format!(
                "mesh pp {pp} × dp {dp} × tp {tp} does not match a world of {world} ranks"
            )));
        }
        Ok(Mesh { pp, dp, tp })
    }

    pub fn world(&self) -> usize {
        self.pp * self.dp * self.tp
    }

    pub fn coords(&self, rank: usize) -> Coords {
        Coords {
            tp: rank % self.tp,
            dp: (rank / self.tp) % self.dp,
            pp: rank / (self.tp * self.dp),
        }
    }

    pub fn rank_of(&self, c: Coords) -> usize {
        (c.pp * self.dp + c.dp) * self.tp + c.tp
    }

    /// Split `world` into this rank's TP, DP and PP groups (collective).
    pub fn groups(&self, world: Box<dyn Communicator>) -> Result<Groups, CommError> {
        if world.size() != self.world() {
            return Err(CommError::Invalid(format!(
                "mesh of {} ranks over a world of {}",
                self.world(),
                world.size()
            )));
        }
        let c = self.coords(world.rank());
        let tp = world.split((c.pp * self.dp + c.dp) as u32, c.tp as u32)?;
        let dp = world.split((c.pp * self.tp + c.tp) as u32, c.dp as u32)?;
        let pp = world.split((c.dp * self.tp + c.tp) as u32, c.pp as u32)?;
        let replica = world.split(c.dp as u32, world.rank() as u32)?;
        Ok(Groups {
            world,
            tp,
            dp,
            pp,
            replica,
        })
    }
}

/// Rank and world size from the environment of a launcher: Open MPI
/// (`mpirun`), PMI (MPICH, Intel MPI), Slurm (`srun`), or torchrun-style
/// `RANK`/`WORLD_SIZE`. `None` when not launched by any of them.
pub fn rank_from_env() -> Option<(usize, usize)> {
    rank_from(|k| std::env::var(k).ok())
}

/// How many ranks of the job share this machine, from the launcher's
/// environment (Open MPI, MPICH/Hydra, Slurm); `None` when not said.
pub fn local_ranks_from_env() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_NTASKS_PER_NODE",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.trim().parse().ok())
    .filter(|&n: &usize| n > 0)
}

/// libtorch intra-op threads for one of `local` ranks sharing this
/// machine's cores.
pub fn threads_per_rank(local: usize) -> i32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / local.max(1)).max(1) as i32
}

/// [`rank_from_env`] over any variable lookup.
pub fn rank_from(var: impl Fn(&str) -> Option<String>) -> Option<(usize, usize)> {
    let pairs = [
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("PMI_RANK", "PMI_SIZE"),
        ("SLURM_PROCID", "SLURM_NTASKS"),
        ("RANK", "WORLD_SIZE"),
    ];
    pairs.iter().find_map(|(r, w)| {
        let rank = var(r)?.trim().parse().ok()?;
        let world = var(w)?.trim().parse().ok()?;
        (rank < world).then_some((rank, world))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tp_ranks_are_contiguous() {
        let m = Mesh::new(8, 2, 2, 2).unwrap();
        assert_eq!(
            m.coords(0),
            Coords {
                pp: 0,
                dp: 0,
                tp: 0
            }
        );
        assert_eq!(
            m.coords(1),
            Coords {
                pp: 0,
                dp: 0,
                tp: 1
            }
        );
        assert_eq!(
            m.coords(2),
            Coords {
                pp: 0,
                dp: 1,
                tp: 0
            }
        );
        assert_eq!(
            m.coords(5),
            Coords {
                pp: 1,
                dp: 0,
                tp: 1
            }
        );
        for r in 0..8 {
            assert_eq!(m.rank_of(m.coords(r)), r);
        }
        assert!(Mesh::new(6, 2, 2, 2).is_err());
    }

    #[test]
    fn launchers_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            rank_from(env(&[
                ("OMPI_COMM_WORLD_RANK", "3"),
                ("OMPI_COMM_WORLD_SIZE", "4")
            ])),
            Some((3, 4))
        );
        assert_eq!(
            rank_from(env(&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2")])),
            Some((1, 2))
        );
        assert_eq!(
            rank_from(env(&[("RANK", "0"), ("WORLD_SIZE", "8")])),
            Some((0, 8))
        );
        assert_eq!(
            rank_from(env(&[("PMI_RANK", "2"), ("PMI_SIZE", "2")])),
            None,
            "rank < size"
        );
        assert_eq!(rank_from(env(&[("RANK", "x"), ("WORLD_SIZE", "2")])), None);
        assert_eq!(rank_from(env(&[])), None);
    }
}
