//! The in-process backend: ranks are threads of one process, messages go
//! through channels (one per ordered pair of ranks), and the collectives are
//! built from point-to-point messages. The default on one machine and the
//! backend of the tests.
//!
//! A rank that exits drops its channel ends, so its peers fail at once with
//! [`CommError::PeerGone`]; a rank that gives up sends an abort message; any
//! other wait ends after the timeout.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::comm::Communicator;
use super::error::CommError;
use super::p2p::{self, PointToPoint};

enum Msg {
    Data { epoch: u64, bytes: Bytes },
    Abort { epoch: u64, reason: String },
}

impl Msg {
    fn epoch(&self) -> u64 {
        match self {
            Msg::Data { epoch, .. } | Msg::Abort { epoch, .. } => *epoch,
        }
    }
}

/// One member's channel ends in a group.
struct Endpoints {
    tx: Vec<Sender<Msg>>,
    rx: Vec<Option<Receiver<Msg>>>,
}

/// Where the members of a group being split off pick up their channel ends.
#[derive(Default)]
struct Hub {
    pending: Mutex<HashMap<String, Vec<Option<Endpoints>>>>,
}

fn endpoints(n: usize) -> Vec<Option<Endpoints>> {
    // tx[i][j]: i -> j; rx[j][i] receives what i sends to j.
    let mut txs: Vec<Vec<Sender<Msg>>> = (0..n).map(|_| Vec::with_capacity(n)).collect();
    let mut rxs: Vec<Vec<Option<Receiver<Msg>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for (i, row) in txs.iter_mut().enumerate() {
        for (j, rx_row) in rxs.iter_mut().enumerate() {
            let (tx, rx) = channel();
            row.push(tx);
            if i != j {
                rx_row[i] = Some(rx);
            }
        }
    }
    txs.into_iter()
        .zip(rxs)
        .map(|(tx, rx)| Some(Endpoints { tx, rx }))
        .collect()
}

/// A rank's communicator in the thread backend.
pub struct ThreadComm {
    rank: usize,
    /// Global ranks of the members, by group rank.
    members: Vec<usize>,
    tx: Vec<Sender<Msg>>,
    rx: Vec<Option<Receiver<Msg>>>,
    /// Messages of a later epoch that arrived early, per source.
    early: RefCell<Vec<VecDeque<Msg>>>,
    hub: Arc<Hub>,
    id: String,
    splits: Cell<u64>,
    epoch: Cell<u64>,
    timeout: Duration,
    received: Cell<u64>,
}

impl ThreadComm {
    /// Communicators for a world of `n` ranks, one per rank thread, each
    /// waiting at most `timeout` for a peer.
    pub fn world(n: usize, timeout: Duration) -> Vec<ThreadComm> {
        let hub = Arc::new(Hub::default());
        endpoints(n)
            .into_iter()
            .enumerate()
            .map(|(rank, e)| {
                let e = e.expect("fresh endpoints");
                ThreadComm::from_parts(rank, (0..n).collect(), e, hub.clone(), "w".into(), timeout)
            })
            .collect()
    }

    fn from_parts(
        rank: usize,
        members: Vec<usize>,
        e: Endpoints,
        hub: Arc<Hub>,
        id: String,
        timeout: Duration,
    ) -> ThreadComm {
        let n = members.len();
        ThreadComm {
            rank,
            members,
            tx: e.tx,
            rx: e.rx,
            early: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            hub,
            id,
            splits: Cell::new(0),
            epoch: Cell::new(0),
            timeout,
            received: Cell::new(0),
        }
    }

    fn me(&self) -> usize {
        self.members[self.rank]
    }

    fn check_peer(&self, p: usize, op: &str) -> Result<(), CommError> {
        if p >= self.members.len() || p == self.rank {
            return Err(CommError::Invalid(format!(
                "{op}: peer {p} in a group of {} on rank {}",
                self.members.len(),
                self.rank
            )));
        }
        Ok(())
    }

    fn post(&self, dst: usize, bytes: Bytes, op: &str) -> Result<(), CommError> {
        self.check_peer(dst, op)?;
        self.tx[dst]
            .send(Msg::Data {
                epoch: self.epoch.get(),
                bytes,
            })
            .map_err(|_| CommError::PeerGone {
                op: op.into(),
                rank: self.me(),
                peer: self.members[dst],
            })
    }

    fn take(&self, src: usize, op: &str, deadline: Instant) -> Result<Bytes, CommError> {
        self.check_peer(src, op)?;
        let cur = self.epoch.get();
        let peer = self.members[src];
        let handle = |m: Msg| -> Option<Result<Bytes, CommError>> {
            match m {
                Msg::Data { epoch, bytes } if epoch == cur => {
                    self.received.set(self.received.get() + bytes.len() as u64);
                    Some(Ok(bytes))
                }
                Msg::Abort { epoch, reason } if epoch == cur => {
                    Some(Err(CommError::PeerAborted { peer, reason }))
                }
                _ => None,
            }
        };
        // Early arrivals of this epoch first.
        loop {
            let m = self.early.borrow_mut()[src].pop_front();
            let Some(m) = m else { break };
            if m.epoch() > cur {
                self.early.borrow_mut()[src].push_front(m);
                break;
            }
            if let Some(r) = handle(m) {
                return r;
            }
        }
        let rx = self.rx[src]
            .as_ref()
            .ok_or_else(|| CommError::Invalid(format!("{op}: no channel from rank {peer}")))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) if m.epoch() > cur => self.early.borrow_mut()[src].push_back(m),
                Ok(m) => {
                    if let Some(r) = handle(m) {
                        return r;
                    }
                    // A stale message from an earlier, failed epoch: drop it.
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(CommError::Timeout {
                        op: op.into(),
                        rank: self.me(),
                        peer,
                        timeout: self.timeout,
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(CommError::PeerGone {
                        op: op.into(),
                        rank: self.me(),
                        peer,
                    });
                }
            }
        }
    }
}

impl PointToPoint for ThreadComm {
    type Pending = ();
    fn p2p_rank(&self) -> usize {
        self.rank
    }
    fn p2p_size(&self) -> usize {
        self.members.len()
    }
    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }
    fn post(&self, dst: usize, b: &Bytes, op: &str) -> Result<(), CommError> {
        ThreadComm::post(self, dst, b.clone(), op)
    }
    fn take(&self, src: usize, op: &str, deadline: Instant) -> Result<Bytes, CommError> {
        ThreadComm::take(self, src, op, deadline)
    }
    fn finish(&self, _: (), _: &str, _: Instant) -> Result<(), CommError> {
        Ok(())
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
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
        let (same, my_index) = p2p::split_members(self, color, key)?;
        let n = self.splits.get();
        self.splits.set(n + 1);
        let id = format!("{}/{n}:{color}", self.id);
        let e = {
            let mut pending = self
                .hub
                .pending
                .lock()
                .map_err(|_| CommError::Backend("split registry poisoned".into()))?;
            let slots = pending
                .entry(id.clone())
                .or_insert_with(|| endpoints(same.len()));
            let e = slots[my_index].take();
            if slots.iter().all(Option::is_none) {
                pending.remove(&id);
            }
            e
        }
        .ok_or_else(|| CommError::Invalid(format!("split: group {id} slot taken twice")))?;
        let members = same.iter().map(|&r| self.members[r]).collect();
        let c = ThreadComm::from_parts(my_index, members, e, self.hub.clone(), id, self.timeout);
        c.set_epoch(self.epoch.get());
        Ok(Box::new(c))
    }

    fn abort(&self, reason: &str) {
        for (p, tx) in self.tx.iter().enumerate() {
            if p != self.rank {
                let _ = tx.send(Msg::Abort {
                    epoch: self.epoch.get(),
                    reason: reason.to_string(),
                });
            }
        }
    }

    fn bytes_received(&self) -> u64 {
        self.received.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use tch::{Device, Kind, Tensor};

    fn run<F>(n: usize, f: F) -> Vec<Result<Vec<f32>, CommError>>
    where
        F: Fn(ThreadComm) -> Result<Vec<f32>, CommError> + Send + Sync + Copy + 'static,
    {
        let comms = ThreadComm::world(n, Duration::from_secs(5));
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| thread::spawn(move || f(c)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn vec(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn collectives_and_split() {
        let out = run(4, |c| {
            let r = c.rank() as f32;
            let t = Tensor::from_slice(&[r, 10.0 * r]);
            let sum = c.all_reduce_sum(&t)?;
            let all = Tensor::cat(&c.all_gather(&t)?, 0);
            let b = c.broadcast((c.rank() == 2).then_some(&t), 2, Device::Cpu)?;
            // Pairs {0,1} and {2,3}, reversed by key.
            let sub = c.split((c.rank() / 2) as u32, (3 - c.rank()) as u32)?;
            let s = sub.all_reduce_sum(&Tensor::from_slice(&[r]))?;
            assert_eq!(sub.size(), 2);
            assert_eq!(sub.rank(), 1 - c.rank() % 2);
            if c.rank() == 0 {
                c.send(&Tensor::from_slice(&[7.0f32]), 3)?;
            }
            let got = if c.rank() == 3 {
                vec(&c.recv(0, Device::Cpu)?)
            } else {
                vec![]
            };
            c.barrier()?;
            Ok([vec(&sum), vec(&all), vec(&b), vec(&s), got].concat())
        });
        for (r, o) in out.into_iter().enumerate() {
            let o = o.unwrap();
            assert_eq!(&o[..2], &[6.0, 60.0]);
            assert_eq!(&o[2..10], &[0.0, 0.0, 1.0, 10.0, 2.0, 20.0, 3.0, 30.0]);
            assert_eq!(&o[10..12], &[2.0, 20.0]);
            assert_eq!(o[12], if r < 2 { 1.0 } else { 5.0 });
            if r == 3 {
                assert_eq!(o[13], 7.0);
            }
        }
        let _ = Kind::Float;
    }

    #[test]
    fn a_rank_that_exits_fails_its_peers_instead_of_hanging() {
        let start = Instant::now();
        let out = run(3, |c| {
            if c.rank() == 1 {
                return Ok(vec![]); // exits: drops its channel ends
            }
            c.all_reduce_sum(&Tensor::from_slice(&[1.0f32]))
                .map(|t| vec(&t))
        });
        // Rank 0 fails first on rank 1; rank 2 on rank 1 or on rank 0, which
        // exits when it fails.
        assert!(
            matches!(out[0], Err(CommError::PeerGone { peer: 1, .. })),
            "{:?}",
            out[0]
        );
        assert!(
            matches!(out[2], Err(CommError::PeerGone { .. })),
            "{:?}",
            out[2]
        );
        assert!(start.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn abort_and_timeout() {
        let out = run(2, |c| {
            if c.rank() == 1 {
                c.abort("boom");
                thread::sleep(Duration::from_millis(200));
                return Ok(vec![]);
            }
            c.recv_bytes(1).map(|_| vec![])
        });
        assert!(
            matches!(&out[0], Err(CommError::PeerAborted { peer: 1, reason }) if reason == "boom")
        );
        let comms = ThreadComm::world(2, Duration::from_millis(100));
        let t0 = Instant::now();
        let e = comms[0].recv_bytes(1).unwrap_err();
        assert!(matches!(e, CommError::Timeout { peer: 1, .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        // A stale message of an earlier epoch is dropped.
        comms[1].send_bytes(Bytes::from_static(b"old"), 0).unwrap();
        comms[0].set_epoch(1);
        comms[1].set_epoch(1);
        comms[1].send_bytes(Bytes::from_static(b"new"), 0).unwrap();
        assert_eq!(&comms[0].recv_bytes(1).unwrap()[..], b"new");
    }
}
