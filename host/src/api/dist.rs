//! A model sharded over a mesh of ranks that are threads of this process
//! (the thread backend): the same API as [`super::FlexModel`], with every
//! rank running [`RankEngine`] on its own thread.
//!
//! ```ignore
//! let opts = DistOptions::new(/*pp*/ 1, /*dp*/ 1, /*tp*/ 2)?;
//! let mut dm = DistFlexModel::load(dir, opts)?;
//! dm.register_wasm(&plugin, "blocks.*.hook_resid_post", "{}", &[])?;
//! let out = dm.forward(&ids, &Groups::All)?; // merged at global rank 0
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use tch::Tensor;

pub use super::rank::DistOptions;
use super::rank::RankEngine;
use super::registry::{HookListing, HookSet, Registration};
use super::{
    FlexError, ForwardOutput, GenerateOptions, GenerateOutput, Groups, HookHandle, Loss,
    RankBackward,
};
use crate::distributed::{Communicator, ThreadComm};
use crate::hooks::{Hook, Plugin};
use crate::models::{PointInfo, Tokenizer};

/// One rank's result of a forward.
pub type Reply = Result<Option<ForwardOutput>, FlexError>;

enum Job {
    Forward {
        ids: Tensor,
        regs: Arc<Vec<Registration>>,
        groups: Groups,
        index: u64,
        reply: Sender<Reply>,
    },
    Points {
        batch: i64,
        seq: i64,
        reply: Sender<Vec<PointInfo>>,
    },
    Backward {
        ids: Tensor,
        regs: Arc<Vec<Registration>>,
        groups: Groups,
        index: u64,
        loss: Loss,
        reply: Sender<Result<RankBackward, FlexError>>,
    },
    Generate {
        ids: Tensor,
        regs: Arc<Vec<Registration>>,
        groups: Groups,
        index: u64,
        opts: GenerateOptions,
        /// Rank 0 streams each step's tokens here.
        stream: Sender<(usize, Vec<i64>)>,
        reply: Sender<Result<Option<GenerateOutput>, FlexError>>,
    },
}

struct Worker {
    tx: Option<Sender<Job>>,
    join: Option<JoinHandle<()>>,
}

/// A model sharded over threads.
pub struct DistFlexModel {
    workers: Vec<Worker>,
    registry: HookSet,
    points: Vec<PointInfo>,
    tokenizer: Option<Tokenizer>,
    opts: DistOptions,
    forward_index: u64,
}

fn worker(
    dir: std::path::PathBuf,
    opts: DistOptions,
    comm: ThreadComm,
    ready: Sender<Result<Vec<PointInfo>, FlexError>>,
    jobs: Receiver<Job>,
) {
    // The ranks share the machine's cores.
    tch::set_num_threads(
        opts.threads_per_rank
            .unwrap_or_else(|| crate::distributed::threads_per_rank(opts.mesh.world())),
    );
    let world: Box<dyn Communicator> = Box::new(comm);
    let mut engine = match RankEngine::new(&dir, &opts, world) {
        Ok(e) => {
            let _ = ready.send(Ok(e.points(1, 1)));
            e
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    drop(ready);
    for job in jobs {
        match job {
            Job::Forward {
                ids,
                regs,
                groups,
                index,
                reply,
            } => {
                let r = engine.forward_regs(&ids, &regs, &groups, index, None);
                let _ = reply.send(r);
            }
            Job::Points { batch, seq, reply } => {
                let _ = reply.send(engine.points(batch, seq));
            }
            Job::Backward {
                ids,
                regs,
                groups,
                index,
                loss,
                reply,
            } => {
                let _ = reply.send(engine.backward_regs(&ids, &regs, &groups, index, &loss));
            }
            Job::Generate {
                ids,
                regs,
                groups,
                index,
                opts,
                stream,
                reply,
            } => {
                let r = engine.generate_regs(&ids, &regs, &groups, index, &opts, |step, t| {
                    let _ = stream.send((step, t.to_vec()));
                });
                drop(stream);
                let _ = reply.send(r);
            }
        }
    }
}

impl DistFlexModel {
    /// Start one thread per rank of `opts.mesh`; each loads its shard of the
    /// model in `dir`.
    pub fn load(dir: &Path, opts: DistOptions) -> Result<DistFlexModel, FlexError> {
        let n = opts.mesh.world();
        let comms = ThreadComm::world(n, opts.timeout);
        let (ready_tx, ready_rx) = channel();
        let mut workers = Vec::with_capacity(n);
        for (rank, comm) in comms.into_iter().enumerate() {
            let (tx, rx) = channel();
            let ready = ready_tx.clone();
            let (d, o) = (dir.to_path_buf(), opts.clone());
            let join = std::thread::Builder::new()
                .name(format!("flexmodel-rank-{rank}"))
                .spawn(move || worker(d, o, comm, ready, rx))
                .map_err(|e| FlexError::Rank {
                    rank,
                    message: format!("cannot start the rank's thread: {e}"),
                })?;
            workers.push(Worker {
                tx: Some(tx),
                join: Some(join),
            });
        }
        drop(ready_tx);
        let mut points = None;
        let mut first_err = None;
        for r in ready_rx.iter().take(n) {
            match r {
                Ok(p) => points = Some(p),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let mut dm = DistFlexModel {
            workers,
            registry: HookSet::default(),
            points: points.unwrap_or_default(),
            tokenizer: None,
            opts,
            forward_index: 0,
        };
        if let Some(e) = first_err {
            return Err(e);
        }
        if dm.points.is_empty() {
            return Err(FlexError::Rank {
                rank: 0,
                message: "no rank finished loading".into(),
            });
        }
        dm.tokenizer = Tokenizer::load(dir).map_err(FlexError::Model)?;
        Ok(dm)
    }

    pub fn options(&self) -> &DistOptions {
        &self.opts
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Every hook point, with its logical (unsharded) shape for `batch` ×
    /// `seq` tokens.
    pub fn points(&self, batch: i64, seq: i64) -> Vec<PointInfo> {
        let (tx, rx) = channel();
        let asked = self.workers[0].tx.as_ref().is_some_and(|t| {
            t.send(Job::Points {
                batch,
                seq,
                reply: tx,
            })
            .is_ok()
        });
        if asked && let Ok(p) = rx.recv() {
            return p;
        }
        self.points.clone()
    }

    /// Register `hook` on every point matching `pattern`; it runs on every
    /// rank that holds such a point.
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
        let hook = super::registry::wasm_hook(plugin, pattern, config, &self.points)?;
        self.register(hook, pattern, groups)
    }

    /// Register `hook` as a backward hook (see `FlexModel::register_backward`).
    pub fn register_backward(
        &mut self,
        hook: Arc<dyn Hook>,
        pattern: &str,
        groups: &[&str],
    ) -> Result<HookHandle, FlexError> {
        self.registry
            .add_directed(hook, pattern, groups, &self.points, true)
    }

    /// Register a WASM plugin as a backward hook.
    pub fn register_wasm_backward(
        &mut self,
        plugin: &Arc<Plugin>,
        pattern: &str,
        config: &str,
        groups: &[&str],
    ) -> Result<HookHandle, FlexError> {
        let hook = super::registry::wasm_hook(plugin, pattern, config, &self.points)?;
        self.register_backward(hook, pattern, groups)
    }

    /// A backward pass of `loss` on every rank (see `RankEngine`): each
    /// rank's own result, in global rank order.
    pub fn backward_each(
        &mut self,
        input_ids: &Tensor,
        groups: &Groups,
        loss: &Loss,
    ) -> Result<Vec<Result<RankBackward, FlexError>>, FlexError> {
        let ids = super::batch_ids(input_ids)?;
        let index = self.forward_index;
        self.forward_index += 1;
        let regs = Arc::new(self.registry.regs.clone());
        let replies = self.dispatch(|reply| Job::Backward {
            ids: ids.copy(),
            regs: regs.clone(),
            groups: groups.clone(),
            index,
            loss: loss.deep_copy(),
            reply,
        })?;
        Ok(collect(replies, "the backward pass"))
    }

    pub fn remove(&mut self, h: HookHandle) -> bool {
        self.registry.remove(h)
    }

    pub fn hooks(&self) -> Vec<HookListing> {
        self.registry.list()
    }

    /// Run a forward on `input_ids` (`[batch, seq]` or `[seq]`) over all
    /// ranks; the merged result (global rank 0's).
    pub fn forward(
        &mut self,
        input_ids: &Tensor,
        groups: &Groups,
    ) -> Result<ForwardOutput, FlexError> {
        rank0(self.forward_each(input_ids, groups)?)
    }

    /// Like [`Self::forward`], with every rank's own result (global rank
    /// order): the merged output at rank 0, `None` at the others, or each
    /// rank's error.
    pub fn forward_each(
        &mut self,
        input_ids: &Tensor,
        groups: &Groups,
    ) -> Result<Vec<Reply>, FlexError> {
        let ids = super::batch_ids(input_ids)?;
        let index = self.forward_index;
        self.forward_index += 1;
        let regs = Arc::new(self.registry.regs.clone());
        let replies = self.dispatch(|reply| Job::Forward {
            ids: ids.copy(),
            regs: regs.clone(),
            groups: groups.clone(),
            index,
            reply,
        })?;
        Ok(collect(replies, "the forward"))
    }

    /// Generate on every rank (see `FlexModel::generate`); `on_token` gets
    /// each step's tokens as global rank 0 chooses them.
    pub fn generate(
        &mut self,
        input_ids: &Tensor,
        groups: &Groups,
        opts: &GenerateOptions,
        mut on_token: impl FnMut(usize, &[i64]),
    ) -> Result<GenerateOutput, FlexError> {
        let index = self.forward_index;
        self.forward_index += opts.max_new_tokens as u64;
        let regs = Arc::new(self.registry.regs.clone());
        let (stream_tx, stream_rx) = channel();
        let replies = self.dispatch(|reply| Job::Generate {
            ids: input_ids.copy(),
            regs: regs.clone(),
            groups: groups.clone(),
            index,
            opts: opts.clone(),
            stream: stream_tx.clone(),
            reply,
        })?;
        drop(stream_tx);
        for (step, t) in stream_rx {
            on_token(step, &t);
        }
        rank0(collect(replies, "generation"))
    }

    /// Tokenize `text` and run [`Self::forward`].
    pub fn forward_text(
        &mut self,
        text: &str,
        groups: &Groups,
    ) -> Result<ForwardOutput, FlexError> {
        let ids = super::text_ids(self.tokenizer.as_ref(), text)?;
        self.forward(&ids, groups)
    }
}

impl DistFlexModel {
    /// Send every rank the job `make(reply)` builds; their reply channels,
    /// in rank order.
    fn dispatch<R>(
        &self,
        mut make: impl FnMut(Sender<R>) -> Job,
    ) -> Result<Vec<Receiver<R>>, FlexError> {
        let mut replies = Vec::with_capacity(self.workers.len());
        for (rank, w) in self.workers.iter().enumerate() {
            let (tx, rx) = channel();
            if w.tx.as_ref().is_none_or(|t| t.send(make(tx)).is_err()) {
                return Err(FlexError::Rank {
                    rank,
                    message: "the rank's thread has exited".into(),
                });
            }
            replies.push(rx);
        }
        Ok(replies)
    }
}

/// Every rank's reply, in rank order (a rank whose thread died during
/// `what` gives an error).
fn collect<T>(
    replies: Vec<Receiver<Result<T, FlexError>>>,
    what: &str,
) -> Vec<Result<T, FlexError>> {
    replies
        .into_iter()
        .enumerate()
        .map(|(rank, rx)| {
            rx.recv().unwrap_or_else(|_| {
                Err(FlexError::Rank {
                    rank,
                    message: format!("the rank's thread died during {what}"),
                })
            })
        })
        .collect()
}

/// Global rank 0's output; every rank reports the same error, the first is
/// rank 0's.
fn rank0<T>(each: Vec<Result<Option<T>, FlexError>>) -> Result<T, FlexError> {
    let mut out = None;
    for r in each {
        if let Some(o) = r? {
            out = Some(o);
        }
    }
    out.ok_or_else(|| FlexError::Rank {
        rank: 0,
        message: "rank 0 returned no output".into(),
    })
}

impl Drop for DistFlexModel {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.tx.take();
        }
        for w in &mut self.workers {
            if let Some(j) = w.join.take() {
                let _ = j.join();
            }
        }
    }
}
