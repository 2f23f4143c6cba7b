//! In-process ranks: one thread per rank of the mesh, each running the
//! [`Engine`] of its shard over the thread backend; jobs go to every rank,
//! replies come back in global rank order.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::distributed::{Communicator, ThreadComm};
use crate::engine::{
    BackwardOutput, Batch, Collect, Engine, FlexError, GenerateOptions, GenerateOutput, Groups,
    Interrupt, Loss, Options, RankBackward, Registration, RunOutput,
};
use crate::hooks::ForwardLimits;
use crate::models::PointInfo;

pub(crate) type Reply<T> = Result<T, FlexError>;
pub(crate) type BackwardReply = Reply<(RankBackward, Option<BackwardOutput>)>;

/// What every rank runs.
pub(crate) enum Job {
    Forward {
        batch: Batch,
        regs: Arc<Vec<Registration>>,
        groups: Groups,
        index: u64,
        stop: Option<String>,
        collect: Collect,
        reply: Sender<Reply<Option<RunOutput>>>,
    },
    Points {
        batch: i64,
        seq: i64,
        reply: Sender<Vec<PointInfo>>,
    },
    Limits(ForwardLimits),
    Backward {
        batch: Batch,
        regs: Arc<Vec<Registration>>,
        groups: Groups,
        index: u64,
        loss: Loss,
        reply: Sender<BackwardReply>,
    },
    Generate {
        batch: Batch,
        regs: Arc<Vec<Registration>>,
        groups: Groups,
        index: u64,
        opts: GenerateOptions,
        /// Rank 0 streams each step's tokens here.
        stream: Sender<(usize, Vec<i64>)>,
        reply: Sender<Reply<Option<GenerateOutput>>>,
    },
}

struct Worker {
    tx: Option<Sender<Job>>,
    join: Option<JoinHandle<()>>,
}

/// The ranks' threads.
pub(crate) struct Pool {
    workers: Vec<Worker>,
    /// Asked while waiting for the ranks.
    interrupt: Option<Interrupt>,
}

fn run_job(engine: &mut Engine, job: Job) {
    match job {
        Job::Forward {
            batch,
            regs,
            groups,
            index,
            stop,
            collect,
            reply,
        } => {
            let out = engine.forward_once(&batch, &regs, &groups, index, stop.as_deref(), collect);
            let _ = reply.send(out);
        }
        Job::Points { batch, seq, reply } => {
            let _ = reply.send(engine.points(batch, seq));
        }
        Job::Limits(l) => engine.set_limits(l),
        Job::Backward {
            batch,
            regs,
            groups,
            index,
            loss,
            reply,
        } => {
            let _ = reply.send(engine.backward(&batch, &regs, &groups, index, &loss));
        }
        Job::Generate {
            batch,
            regs,
            groups,
            index,
            opts,
            stream,
            reply,
        } => {
            let r = engine.generate(&batch, &regs, &groups, index, &opts, |step, t| {
                let _ = stream.send((step, t.to_vec()));
            });
            drop(stream);
            let _ = reply.send(r);
        }
    }
}

fn worker(
    dir: std::path::PathBuf,
    opts: Options,
    comm: ThreadComm,
    ready: Sender<Result<(Vec<PointInfo>, i64), FlexError>>,
    jobs: Receiver<Job>,
) {
    // The ranks share the machine's cores.
    tch::set_num_threads(
        opts.threads_per_rank
            .unwrap_or_else(|| crate::distributed::threads_per_rank(opts.mesh.world())),
    );
    let world: Box<dyn Communicator> = Box::new(comm);
    let mut engine = match Engine::load(&dir, &opts, world) {
        Ok(e) => {
            let _ = ready.send(Ok((e.points(1, 1), e.model().vocab_size())));
            e
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    drop(ready);
    for job in jobs {
        run_job(&mut engine, job);
    }
}

impl Pool {
    /// Start one thread per rank of `opts.mesh`; each loads its shard of the
    /// model in `dir`. The model's hook points (logical shapes) and
    /// vocabulary size.
    pub fn start(dir: &Path, opts: &Options) -> Result<(Pool, Vec<PointInfo>, i64), FlexError> {
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
        let pool = Pool {
            workers,
            interrupt: None,
        };
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
        if let Some(e) = first_err {
            return Err(e);
        }
        let (points, vocab) = points.ok_or_else(|| FlexError::Rank {
            rank: 0,
            message: "no rank finished loading".into(),
        })?;
        Ok((pool, points, vocab))
    }

    /// Every hook point with its logical shape, from rank 0.
    pub fn points(&self, batch: i64, seq: i64) -> Option<Vec<PointInfo>> {
        let (tx, rx) = channel();
        let job = Job::Points {
            batch,
            seq,
            reply: tx,
        };
        let sent = self.workers[0]
            .tx
            .as_ref()
            .is_some_and(|t| t.send(job).is_ok());
        if sent { rx.recv().ok() } else { None }
    }

    pub fn set_limits(&self, limits: ForwardLimits) {
        for w in &self.workers {
            if let Some(t) = &w.tx {
                let _ = t.send(Job::Limits(limits));
            }
        }
    }

    /// Send every rank the job `make(reply)` builds, and collect every
    /// rank's reply in rank order (a rank whose thread died during `what`
    /// gives an error).
    pub fn run<T>(
        &self,
        what: &str,
        make: impl FnMut(Sender<Reply<T>>) -> Job,
    ) -> Result<Vec<Reply<T>>, FlexError> {
        Ok(self.collect(self.send(make)?, what))
    }

    /// Ask `interrupt` while waiting for the ranks (see [`Self::collect`]).
    pub fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        self.interrupt = interrupt;
    }

    /// Every rank's reply in rank order (a rank whose thread died during
    /// `what` gives an error). While waiting, the interrupt is asked every
    /// few milliseconds: when it says so, every rank's reply is
    /// [`FlexError::Interrupted`] at once, and the ranks finish the job in
    /// the background (its results dropped; the next job waits behind it).
    /// The ranks themselves are not stopped: they would stop at different
    /// points of a pass and leave a collective hanging.
    pub(crate) fn collect<T>(&self, replies: Vec<Receiver<Reply<T>>>, what: &str) -> Vec<Reply<T>> {
        let Some(interrupt) = &self.interrupt else {
            return collect(replies, what);
        };
        let world = replies.len();
        let mut got = Vec::with_capacity(world);
        for (rank, rx) in replies.into_iter().enumerate() {
            loop {
                match rx.recv_timeout(POLL) {
                    Ok(r) => break got.push(r),
                    Err(RecvTimeoutError::Timeout) if interrupt() => {
                        return interrupted(world);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        break got.push(Err(died(rank, what)));
                    }
                }
            }
        }
        got
    }

    /// Receive `rx`'s items, asking the interrupt while waiting; `false`
    /// when it said stop.
    pub(crate) fn drain<T>(&self, rx: &Receiver<T>, mut each: impl FnMut(T)) -> bool {
        loop {
            match rx.recv_timeout(POLL) {
                Ok(t) => each(t),
                Err(RecvTimeoutError::Disconnected) => return true,
                Err(RecvTimeoutError::Timeout) => {
                    if self.interrupt.as_ref().is_some_and(|i| i()) {
                        return false;
                    }
                }
            }
        }
    }

    /// Send every rank the job `make(reply)` builds; the reply channels.
    pub fn send<T>(
        &self,
        mut make: impl FnMut(Sender<Reply<T>>) -> Job,
    ) -> Result<Vec<Receiver<Reply<T>>>, FlexError> {
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

/// How often a waiting caller asks its interrupt.
const POLL: Duration = Duration::from_millis(20);

fn died(rank: usize, what: &str) -> FlexError {
    FlexError::Rank {
        rank,
        message: format!("the rank's thread died during {what}"),
    }
}

/// Every rank's reply: interrupted.
pub(crate) fn interrupted<T>(world: usize) -> Vec<Reply<T>> {
    (0..world).map(|_| Err(FlexError::Interrupted)).collect()
}

fn collect<T>(replies: Vec<Receiver<Reply<T>>>, what: &str) -> Vec<Reply<T>> {
    replies
        .into_iter()
        .enumerate()
        .map(|(rank, rx)| rx.recv().unwrap_or_else(|_| Err(died(rank, what))))
        .collect()
}

impl Drop for Pool {
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
