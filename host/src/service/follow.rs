//! `flexmodel serve` under `mpirun`: global rank 0 serves HTTP, keeps the
//! job store and takes the jobs; before each batch it broadcasts the batch's
//! plan (the jobs' ids, bodies and limits) to every rank, and every rank
//! runs the same batch on its shard (one distributed forward per batch).
//! While idle, rank 0 broadcasts an empty plan at least every half second,
//! so that the others wait within their collectives' deadline. The other
//! ranks ([`follow`]) only run what the plans say; a job's result and state
//! are written by rank 0 alone.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ServiceError;
use super::quota::Quota;
use super::runner::{Runner, Task, prepare, run_batch};
use crate::api::FlexModel;
use crate::api::rows::seq_dims;
use crate::hooks::Runtime;
use crate::package::resolve::Resolver;

/// One job of a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Planned {
    pub id: String,
    pub body: String,
    pub quota: Quota,
}

/// The jobs of the next batch (empty: nothing to run yet).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Plan {
    pub jobs: Vec<Planned>,
}

impl Plan {
    pub fn of(tasks: &[Task]) -> Plan {
        Plan {
            jobs: tasks
                .iter()
                .map(|t| Planned {
                    id: t.id.clone(),
                    body: t.body.clone(),
                    quota: t.quota,
                })
                .collect(),
        }
    }

    /// Broadcast this plan from rank 0 (collective).
    pub fn send(&self, fm: &FlexModel) -> Result<(), ServiceError> {
        let bytes = serde_json::to_vec(self).map_err(|e| ServiceError::Io(e.to_string()))?;
        fm.broadcast_from_root(Some(bytes))
            .map(|_| ())
            .map_err(|e| ServiceError::Io(e.to_string()))
    }

    fn receive(fm: &FlexModel) -> Result<Plan, ServiceError> {
        let bytes = fm
            .broadcast_from_root(None)
            .map_err(|e| ServiceError::Io(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| ServiceError::Io(format!("a plan: {e}")))
    }
}

/// A rank other than 0 of a launched server: run every plan rank 0 sends,
/// until the job ends (rank 0 gone: the broadcast fails).
pub fn follow(mut fm: FlexModel, rt: Arc<Runtime>, resolver: Resolver) -> Result<(), ServiceError> {
    let dims: HashMap<_, _> = seq_dims(&fm);
    let uploads = super::uploads::Uploads::default();
    loop {
        let plan = Plan::receive(&fm)?;
        if plan.jobs.is_empty() {
            continue;
        }
        let tasks: Vec<Task> = plan
            .jobs
            .iter()
            .map(|j| prepare(&fm, &j.id, &j.body, j.quota))
            .collect::<Result<_, _>>()
            .map_err(|(_, m)| ServiceError::Input(format!("a planned job rank 0 accepted: {m}")))?;
        let mut runner = Runner {
            fm: &mut fm,
            rt: &rt,
            resolver: &resolver,
            uploads: &uploads,
            dims: &dims,
        };
        // Rank 0 keeps the outcomes; the failures are every rank's.
        let _ = run_batch(&mut runner, &tasks);
    }
}
