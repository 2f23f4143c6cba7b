//! The MPI backend (cargo feature `mpi`; rsmpi over an MPI library such as
//! Open MPI), for CPU clusters and multi-node runs: one process per rank,
//! launched by `mpirun`/`srun`.
//!
//! Collectives are built from non-blocking point-to-point messages polled
//! against a deadline, so that a rank that fails or exits makes its peers
//! return [`CommError::Timeout`] (or [`CommError::PeerAborted`], when it
//! could say so) instead of hanging in a blocking MPI collective. A send
//! abandoned at its deadline keeps its buffer (MPI may still read it).
//!
//! MPI communicators are neither `Send` nor `Sync`: an [`MpiComm`] stays on
//! the thread that made it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::request::{Request, StaticScope};
use mpi::topology::{Color, Communicator as _, SimpleCommunicator};

use super::comm::Communicator;
use super::error::CommError;
use super::p2p::{self, PointToPoint};

const DATA: i32 = 17;
const ABORT: i32 = 18;

/// MPI, initialised; finalised when dropped (keep it alive as long as any
/// communicator).
pub struct MpiRuntime {
    _universe: mpi::environment::Universe,
}

/// Initialise MPI and return it with the world communicator.
pub fn init(timeout: Duration) -> Result<(MpiRuntime, MpiComm), CommError> {
    let universe = mpi::initialize()
        .ok_or_else(|| CommError::Backend("MPI is already initialised in this process".into()))?;
    let world = universe.world();
    let n = world.size() as usize;
    let comm = MpiComm::new(world, (0..n).collect(), timeout);
    Ok((
        MpiRuntime {
            _universe: universe,
        },
        comm,
    ))
}

pub struct MpiComm {
    comm: SimpleCommunicator,
    /// World ranks of the members.
    members: Vec<usize>,
    early: RefCell<Vec<VecDeque<(u64, Bytes)>>>,
    epoch: Cell<u64>,
    timeout: Duration,
    received: Cell<u64>,
}

/// A send in flight: the request and the buffer MPI reads from.
pub struct PendingSend {
    req: Request<'static, [u8], StaticScope>,
    buf: *mut [u8],
}

impl MpiComm {
    fn new(comm: SimpleCommunicator, members: Vec<usize>, timeout: Duration) -> MpiComm {
        let n = members.len();
        MpiComm {
            comm,
            members,
            early: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            epoch: Cell::new(0),
            timeout,
            received: Cell::new(0),
        }
    }

    fn me(&self) -> usize {
        self.members[self.comm.rank() as usize]
    }

    fn check_peer(&self, p: usize, op: &str) -> Result<(), CommError> {
        if p >= self.members.len() || p == self.comm.rank() as usize {
            return Err(CommError::Invalid(format!(
                "{op}: peer {p} in a group of {}",
                self.members.len()
            )));
        }
        Ok(())
    }

    fn framed(&self, b: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + b.len());
        v.extend_from_slice(&self.epoch.get().to_le_bytes());
        v.extend_from_slice(b);
        v
    }
}

fn split_frame(v: Vec<u8>) -> Option<(u64, Bytes)> {
    let epoch = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    Some((epoch, Bytes::from(v).slice(8..)))
}

/// Between polls: spin (keeping MPI's progress engine turning for the
/// peer's rendezvous) for the first 50 ms of a wait, then sleep briefly.
fn pause(since: &Instant) {
    if since.elapsed() < Duration::from_millis(50) {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(100));
    }
}

impl PointToPoint for MpiComm {
    type Pending = PendingSend;

    fn p2p_rank(&self) -> usize {
        self.comm.rank() as usize
    }
    fn p2p_size(&self) -> usize {
        self.members.len()
    }
    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    fn post(&self, dst: usize, b: &Bytes, op: &str) -> Result<PendingSend, CommError> {
        self.check_peer(dst, op)?;
        let buf: &'static mut [u8] = Box::leak(self.framed(b).into_boxed_slice());
        let ptr: *mut [u8] = buf;
        let req = self
            .comm
            .process_at_rank(dst as i32)
            .immediate_send_with_tag(StaticScope, &*buf, DATA);
        Ok(PendingSend { req, buf: ptr })
    }

    fn finish(&self, p: PendingSend, op: &str, deadline: Instant) -> Result<(), CommError> {
        let mut req = p.req;
        let since = Instant::now();
        loop {
            match req.test() {
                Ok(_) => {
                    // SAFETY: `buf` came from `Box::leak` in `post`, and the
                    // send that read it is complete.
                    drop(unsafe { Box::from_raw(p.buf) });
                    return Ok(());
                }
                Err(r) if Instant::now() >= deadline => {
                    // Abandon the send; its buffer stays leaked for MPI.
                    // SAFETY: the raw request is dropped without freeing
                    // anything MPI may still use.
                    let _ = unsafe { r.into_raw() };
                    return Err(CommError::Timeout {
                        op: op.into(),
                        rank: self.me(),
                        peer: usize::MAX,
                        timeout: self.timeout,
                    });
                }
                Err(r) => {
                    req = r;
                    pause(&since);
                }
            }
        }
    }

    fn take(&self, src: usize, op: &str, deadline: Instant) -> Result<Bytes, CommError> {
        self.check_peer(src, op)?;
        let cur = self.epoch.get();
        let peer = self.members[src];
        {
            let mut early = self.early.borrow_mut();
            while let Some((e, _)) = early[src].front() {
                if *e > cur {
                    break;
                }
                let (e, b) = early[src].pop_front().unwrap_or_default();
                if e == cur {
                    return Ok(b);
                }
            }
        }
        let process = self.comm.process_at_rank(src as i32);
        let since = Instant::now();
        loop {
            if let Some(m) = process.immediate_matched_probe_with_tag(ABORT) {
                let (v, _) = m.matched_receive_vec::<u8>();
                if let Some((e, reason)) = split_frame(v)
                    && e == cur
                {
                    return Err(CommError::PeerAborted {
                        peer,
                        reason: String::from_utf8_lossy(&reason).into_owned(),
                    });
                }
            }
            if let Some(m) = process.immediate_matched_probe_with_tag(DATA) {
                let (v, _) = m.matched_receive_vec::<u8>();
                let Some((e, b)) = split_frame(v) else {
                    return Err(CommError::Protocol {
                        op: op.into(),
                        rank: self.me(),
                        peer,
                        message: "message without its epoch".into(),
                    });
                };
                if e == cur {
                    self.received.set(self.received.get() + b.len() as u64);
                    return Ok(b);
                }
                if e > cur {
                    self.early.borrow_mut()[src].push_back((e, b));
                }
                continue;
            }
            if Instant::now() >= deadline {
                return Err(CommError::Timeout {
                    op: op.into(),
                    rank: self.me(),
                    peer,
                    timeout: self.timeout,
                });
            }
            pause(&since);
        }
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }
    fn size(&self) -> usize {
        self.members.len()
    }
    fn global_rank(&self, r: usize) -> usize {
        self.members.get(r).copied().unwrap_or(usize::MAX)
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn set_epoch(&self, epoch: u64) {
        self.epoch.set(epoch);
    }
    fn barrier(&self) -> Result<(), CommError> {
        p2p::all_gather(self, Bytes::new()).map(|_| ())
    }
    fn all_gather_bytes(&self, b: Bytes) -> Result<Vec<Bytes>, CommError> {
        p2p::all_gather(self, b)
    }
    fn gather_bytes(&self, b: Bytes, root: usize) -> Result<Option<Vec<Bytes>>, CommError> {
        p2p::gather(self, b, root)
    }
    fn broadcast_bytes(&self, b: Option<Bytes>, root: usize) -> Result<Bytes, CommError> {
        p2p::broadcast(self, b, root)
    }
    fn send_bytes(&self, b: Bytes, dst: usize) -> Result<(), CommError> {
        p2p::send(self, b, dst)
    }
    fn recv_bytes(&self, src: usize) -> Result<Bytes, CommError> {
        self.take(src, "recv", PointToPoint::deadline(self))
    }

    fn split(&self, color: u32, key: u32) -> Result<Box<dyn Communicator>, CommError> {
        // Members first (with a deadline), then MPI's own split, which
        // cannot time out but now only waits for ranks known to be alive.
        let (same, _) = p2p::split_members(self, color, key)?;
        let sub = self
            .comm
            .split_by_color_with_key(Color::with_value(color as i32), key as i32)
            .ok_or_else(|| CommError::Backend("MPI_Comm_split returned no communicator".into()))?;
        let members = same.iter().map(|&r| self.members[r]).collect();
        let c = MpiComm::new(sub, members, self.timeout);
        c.set_epoch(self.epoch.get());
        Ok(Box::new(c))
    }

    fn abort(&self, reason: &str) {
        let mut text = reason.as_bytes().to_vec();
        text.truncate(1024);
        let msg = self.framed(&text);
        for p in 0..self.members.len() {
            if p != self.comm.rank() as usize {
                // Small: sent eagerly, returns without waiting for the peer.
                self.comm
                    .process_at_rank(p as i32)
                    .send_with_tag(&msg[..], ABORT);
            }
        }
    }

    fn bytes_received(&self) -> u64 {
        self.received.get()
    }
}
