//! The worker: one thread owning the loaded model, taking queued jobs in
//! order, compatible ones together (co-tenancy batching, see
//! [`super::runner`]). A failing hook, a trap, a fuel, memory, wall-time
//! or output limit fails that job with a typed reason (a shared batch that
//! fails runs its jobs again alone, so only the culprit fails); results
//! are written atomically; the worker goes on with the next.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::follow::Plan;
use super::quota::Quota;
use super::runner::{Failure, Outcome, Runner, Task, prepare, result_bytes, run_batch};
use super::store::{State, Store};
use crate::api::rows::{SeqDims, seq_dims};
use crate::api::{FlexModel, save_safetensors_with};
use crate::hooks::Runtime;
use crate::package::resolve::Resolver;

/// Wakes the worker when a job is queued.
#[derive(Default)]
pub struct Bell {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Bell {
    pub fn ring(&self) {
        *self.rung.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        self.wait_for(Duration::from_millis(500));
    }

    /// Wait until rung or `d` passed.
    fn wait_for(&self, d: Duration) {
        let mut r = self.rung.lock().unwrap_or_else(|p| p.into_inner());
        if !*r {
            r = self
                .cv
                .wait_timeout(r, d)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *r = false;
    }
}

/// A counter bumped at every change of a job's state.
pub type Changes = tokio::sync::watch::Sender<u64>;

/// The stop flags of the running jobs (`DELETE` sets one).
pub type Running = Mutex<HashMap<String, Arc<AtomicBool>>>;

pub struct Worker {
    pub fm: FlexModel,
    pub rt: Arc<Runtime>,
    pub resolver: Arc<Resolver>,
    pub uploads: Arc<super::uploads::Uploads>,
    pub store: Arc<Store>,
    pub bell: Arc<Bell>,
    pub running: Arc<Running>,
    pub changes: Arc<Changes>,
    /// The server's limits (a tenant's own apply under them).
    pub limits: Quota,
    /// Most jobs in one batch (1: no co-tenancy batching).
    pub batch_jobs: usize,
    /// Most prompts in one batch.
    pub batch_rows: usize,
    /// How long a forward job waits for others to share its batch (0: it
    /// takes those already queued).
    pub batch_wait: Duration,
    /// Jobs in the last forward batch: the window closes early once as
    /// many have come (the company recent traffic brings).
    pub last_batch: usize,
}

impl Worker {
    /// Serve jobs until the process ends.
    pub fn run(mut self) {
        let dims = seq_dims(&self.fm);
        let launched = self.fm.launched();
        loop {
            let tasks = match self.batch() {
                Ok(tasks) => tasks,
                Err(e) => {
                    tracing::error!("job store: {e}");
                    Vec::new()
                }
            };
            if tasks.is_empty() {
                self.bell.wait();
            }
            // Under `mpirun`: every rank runs the same batch (an empty plan
            // keeps the others waiting within their collectives' deadline).
            if launched && let Err(e) = Plan::of(&tasks).send(&self.fm) {
                tracing::error!("the other ranks are gone: {e}");
                for t in &tasks {
                    self.end(&t.id, Err(("internal", e.to_string())), 1);
                }
                return;
            }
            if !tasks.is_empty() {
                self.run_tasks(tasks, &dims);
            }
        }
    }

    /// The next batch: the jobs queued now, and those that arrive within
    /// the batch window while there is room, until as many as in the last
    /// batch have come.
    fn batch(&mut self) -> Result<Vec<Task>, super::ServiceError> {
        let (mut tasks, mut rows) = (Vec::new(), 0);
        // Jobs found not to fit this batch: never prepared again for it.
        let mut apart = std::collections::HashSet::new();
        self.take(&mut tasks, &mut rows, &mut apart)?;
        if !self.batch_wait.is_zero() && tasks.first().is_some_and(|t| t.req.batchable()) {
            let until = Instant::now() + self.batch_wait;
            let enough = if self.last_batch > 1 {
                self.last_batch
            } else {
                usize::MAX
            };
            while tasks.len() < self.batch_jobs.min(enough) && rows < self.batch_rows {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                self.bell.wait_for(until - now);
                self.take(&mut tasks, &mut rows, &mut apart)?;
            }
        }
        if tasks.first().is_some_and(|t| t.req.batchable()) {
            self.last_batch = tasks.len();
        }
        // Running from now (queued until then, also through the window);
        // one cancelled meanwhile is left out.
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        let started = self.store.start_all(&ids)?;
        let tasks: Vec<Task> = tasks
            .into_iter()
            .zip(started)
            .filter_map(|(t, ok)| ok.then_some(t))
            .collect();
        if !tasks.is_empty() {
            self.changes.send_modify(|n| *n += 1);
        }
        Ok(tasks)
    }

    /// Add the next jobs to run to `tasks`: the oldest queued one, with
    /// (when it is a forward) the queued forward jobs after it that can
    /// share its batch, up to the batch's limits. One that fails its
    /// checks ends here; one that cannot join goes into `apart` (and is
    /// not prepared again for this batch: rows only grow).
    fn take(
        &mut self,
        tasks: &mut Vec<Task>,
        rows: &mut usize,
        apart: &mut std::collections::HashSet<String>,
    ) -> Result<(), super::ServiceError> {
        let mut taken: Vec<Task> = Vec::new();
        let mut failed = Vec::new();
        let mut n = *rows;
        for job in self.store.queued(self.batch_jobs.max(1) * 4)? {
            if apart.contains(&job.id) || tasks.iter().any(|t| t.id == job.id) {
                continue; // apart, or taken already (in the batch window)
            }
            if tasks.len() + taken.len() >= self.batch_jobs.max(1) {
                break;
            }
            if tasks
                .first()
                .or(taken.first())
                .is_some_and(|first| !first.req.batchable())
            {
                break; // a generation job, or one stopping early, runs alone
            }
            let quota = self.store.quota(&job.tenant)?.under(&self.limits);
            let task = match prepare(&self.fm, &job.id, &job.body, quota) {
                Ok(t) => t,
                Err(f) => {
                    failed.push((job.id, f));
                    continue;
                }
            };
            let fits = match tasks.first().or(taken.first()) {
                None => true,
                Some(first) => {
                    first.req.batchable()
                        && task.req.batchable()
                        && first.req.padding == task.req.padding
                        && n + task.rows.len() <= self.batch_rows
                }
            };
            // One that cannot join (another kind of job, padded the other
            // way, too many rows) stays queued, the oldest: it starts the
            // next batch.
            if !fits {
                apart.insert(job.id);
                continue;
            }
            n += task.rows.len();
            taken.push(task);
        }
        // A job that fails its checks ends here.
        for (id, f) in failed {
            if self.store.start(&id)? {
                self.end(&id, Err(f), 1);
            }
        }
        tasks.extend(taken);
        *rows = n;
        Ok(())
    }

    fn run_tasks(&mut self, tasks: Vec<Task>, dims: &HashMap<String, SeqDims>) {
        {
            let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
            for t in &tasks {
                r.insert(t.id.clone(), t.stop.clone());
            }
        }
        let mut runner = Runner {
            fm: &mut self.fm,
            rt: &self.rt,
            resolver: &self.resolver,
            uploads: &self.uploads,
            dims,
        };
        let results = run_batch(&mut runner, &tasks);
        let shared = tasks.len() as i64;
        let ends: Vec<(&str, Result<(), Failure>)> = tasks
            .iter()
            .zip(results)
            .map(|(t, r)| (t.id.as_str(), r.and_then(|o| self.write(t, o))))
            .collect();
        self.end_all(&ends, shared);
        let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for t in &tasks {
            r.remove(&t.id);
        }
    }

    /// Record how job `id` ended (in a batch of `batch` jobs).
    fn end(&self, id: &str, r: Result<(), Failure>, batch: i64) {
        self.end_all(&[(id, r)], batch);
    }

    /// Record how the jobs of one batch ended, in one transaction.
    fn end_all(&self, ends: &[(&str, Result<(), Failure>)], batch: i64) {
        let errors: Vec<Option<String>> = ends
            .iter()
            .map(|(_, r)| {
                r.as_ref().err().map(|(reason, message)| {
                    serde_json::json!({"reason": reason, "message": message}).to_string()
                })
            })
            .collect();
        let rows: Vec<(&str, State, Option<&str>)> = ends
            .iter()
            .zip(&errors)
            .map(|((id, r), e)| {
                let state = if r.is_ok() {
                    State::Done
                } else {
                    State::Failed
                };
                (*id, state, e.as_deref())
            })
            .collect();
        if let Err(e) = self.store.finish_all(&rows, batch) {
            tracing::error!(
                "jobs {:?}: {e}",
                ends.iter().map(|e| e.0).collect::<Vec<_>>()
            );
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Write a job's result, whole or not at all (a temporary file renamed
    /// into place), within its output quota.
    fn write(&self, t: &Task, o: Outcome) -> Result<(), Failure> {
        let bytes = result_bytes(&o);
        if let Some(max) = t.quota.output_bytes
            && bytes > max
        {
            return Err((
                "quota",
                format!("quota output_bytes: the result is {bytes} bytes, over {max}"),
            ));
        }
        let mut meta = BTreeMap::new();
        if !o.plugins.is_empty() {
            meta.insert(
                "flexmodel.plugins".to_string(),
                serde_json::to_string(&o.plugins).unwrap_or_default(),
            );
        }
        meta.insert("flexmodel.job".to_string(), t.id.clone());
        let path = self.store.result_path(&t.id);
        let tmp = path.with_extension("partial");
        let written = save_safetensors_with(&tmp, &o.tensors, &o.producers, &meta)
            .map_err(|e| ("storage", e.to_string()))
            .and_then(|()| {
                std::fs::rename(&tmp, &path)
                    .map_err(|e| ("storage", format!("{}: {e}", path.display())))
            });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}
