//! Joining a mesh and loading this rank's shard of a model.

use std::path::Path;

use bytes::Bytes;
use tch::Device;

use super::{Engine, FlexError, Options};
use crate::distributed::Communicator;
use crate::models::{Model, Shard};

impl Engine {
    /// Join the mesh of `opts` over `world` (collective) and load this
    /// rank's shard of the model in `dir`. Fails on every rank if it fails
    /// on any.
    pub fn load(
        dir: &Path,
        opts: &Options,
        world: Box<dyn Communicator>,
    ) -> Result<Engine, FlexError> {
        let mesh = opts.mesh;
        #[allow(unused_mut)]
        let mut groups = mesh.groups(world)?;
        let rank = groups.world.rank();
        let coords = mesh.coords(rank);
        // One GPU per rank, round robin from the one asked for.
        let device = match opts.device {
            Device::Cuda(base) if crate::models::cuda::available() => {
                Device::Cuda((base + rank) % crate::models::cuda::device_count().max(1))
            }
            d => d,
        };
        if opts.nccl {
            #[cfg(feature = "nccl")]
            {
                let Device::Cuda(ordinal) = device else {
                    return Err(FlexError::Input("--nccl needs a CUDA device".into()));
                };
                let tp = crate::distributed::nccl::NcclComm::new(groups.tp, ordinal)?;
                groups.tp = Box::new(tp);
            }
            #[cfg(not(feature = "nccl"))]
            return Err(FlexError::Comm(crate::distributed::CommError::Unavailable(
                "this build has no NCCL backend: rebuild with `--features nccl`".into(),
            )));
        }
        let shard = Shard {
            tp_rank: coords.tp as i64,
            tp_size: mesh.tp as i64,
            pp_rank: coords.pp as i64,
            pp_size: mesh.pp as i64,
        };
        let loaded = Model::load_shard(dir, opts.kind, device, &shard);
        if mesh.world() > 1 {
            // Every rank learns whether every rank loaded.
            let status = match &loaded {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            };
            let all = groups.world.all_gather_bytes(Bytes::from(status))?;
            if let Some((r, msg)) = all.iter().enumerate().find(|(_, b)| !b.is_empty()) {
                return match loaded {
                    Err(e) if r == rank => Err(FlexError::Model(e)),
                    _ => Err(FlexError::Rank {
                        rank: r,
                        message: String::from_utf8_lossy(msg).into_owned(),
                    }),
                };
            }
        }
        let model = loaded.map_err(FlexError::Model)?;
        Ok(Engine::new(model, mesh, groups, opts))
    }
}
