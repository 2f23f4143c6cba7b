//! What TP ranks exchange to agree on hooks: read-only hooks add no round
//! (their errors and output hashes travel with the end-of-forward outcome
//! exchange), editing hooks add one per point; a read-only hook failing on
//! one TP rank fails every rank with its error, and the partial outputs are
//! those one rank keeps when the same hook fails there.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use flexmodel::api::{FlexError, FlexModel, FnHook, Groups, Options};
use flexmodel::distributed::{CommError, Communicator, ThreadComm};
use flexmodel::hooks::HookErrorKind;
use flexmodel_tests::{model_dir, runtime, wasm};
use tch::{Device, Kind, Tensor};

fn ids() -> Tensor {
    Tensor::from_slice(&[3i64, 17, 42, 5, 88, 9, 60, 1, 77, 23, 11, 50]).view([2, 6])
}

/// A communicator that counts the exchanges this rank takes part in (its
/// sub-groups count into the same counter).
struct Counting {
    inner: Box<dyn Communicator>,
    calls: Arc<AtomicU64>,
}

impl Counting {
    fn tick(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

impl Communicator for Counting {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn global_rank(&self, r: usize) -> usize {
        self.inner.global_rank(r)
    }
    fn timeout(&self) -> Duration {
        self.inner.timeout()
    }
    fn set_epoch(&self, epoch: u64) {
        self.inner.set_epoch(epoch)
    }
    fn barrier(&self) -> Result<(), CommError> {
        self.tick();
        self.inner.barrier()
    }
    fn all_gather_bytes(&self, b: Bytes) -> Result<Vec<Bytes>, CommError> {
        self.tick();
        self.inner.all_gather_bytes(b)
    }
    fn gather_bytes(&self, b: Bytes, root: usize) -> Result<Option<Vec<Bytes>>, CommError> {
        self.tick();
        self.inner.gather_bytes(b, root)
    }
    fn broadcast_bytes(&self, b: Option<Bytes>, root: usize) -> Result<Bytes, CommError> {
        self.tick();
        self.inner.broadcast_bytes(b, root)
    }
    fn send_bytes(&self, b: Bytes, dst: usize) -> Result<(), CommError> {
        self.tick();
        self.inner.send_bytes(b, dst)
    }
    fn recv_bytes(&self, src: usize) -> Result<Bytes, CommError> {
        self.tick();
        self.inner.recv_bytes(src)
    }
    fn split(&self, color: u32, key: u32) -> Result<Box<dyn Communicator>, CommError> {
        Ok(Box::new(Counting {
            inner: self.inner.split(color, key)?,
            calls: self.calls.clone(),
        }))
    }
    fn abort(&self, reason: &str) {
        self.inner.abort(reason)
    }
    fn bytes_received(&self) -> u64 {
        self.inner.bytes_received()
    }
}

type Setup = fn(&mut FlexModel);

/// Exchanges rank 0 of a TP2 mesh takes part in during one forward of
/// GPT-2 tiny with the hooks `setup` registers.
fn exchanges(setup: Setup) -> u64 {
    let mut o = Options::new(1, 1, 2).unwrap();
    o.timeout = Duration::from_secs(30);
    let handles: Vec<_> = ThreadComm::world(2, o.timeout)
        .into_iter()
        .map(|c| {
            let o = o.clone();
            std::thread::spawn(move || {
                let calls = Arc::new(AtomicU64::new(0));
                let world = Box::new(Counting {
                    inner: Box::new(c),
                    calls: calls.clone(),
                });
                let mut m = FlexModel::join(&model_dir("gpt2-tiny"), &o, world).unwrap();
                setup(&mut m);
                let before = calls.load(Ordering::SeqCst);
                m.forward_each(&ids(), &Groups::All)
                    .unwrap()
                    .remove(0)
                    .unwrap();
                calls.load(Ordering::SeqCst) - before
            })
        })
        .collect();
    let counts: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        counts[0], counts[1],
        "both TP ranks make the same exchanges"
    );
    counts[0]
}

fn retrieve_at(m: &mut FlexModel, point: &str) {
    let retrieve = runtime().load(&wasm("retrieve")).unwrap();
    m.register_wasm(&retrieve, point, "{}", &[]).unwrap();
}

#[test]
fn read_only_hooks_add_no_round_and_editing_hooks_one_per_point() {
    let bare = exchanges(|_| {});
    // Four replicated points (residual stream, both blocks), read-only.
    let replicated = exchanges(|m| {
        retrieve_at(m, "blocks.*.hook_resid_pre");
        retrieve_at(m, "blocks.*.hook_resid_post");
    });
    assert_eq!(replicated, bare, "read-only hooks: no agreement round");
    // A split point needs its gather, nothing more.
    let split = exchanges(|m| retrieve_at(m, "blocks.0.mlp.hook_post"));
    assert_eq!(split, bare + 1, "a split point: the gather only");
    // An editing hook agrees at once, at each of its two points.
    let editing = exchanges(|m| {
        let scale = runtime().load(&wasm("scale")).unwrap();
        m.register_wasm(&scale, "blocks.*.hook_resid_mid", r#"{"factor": 1.0}"#, &[])
            .unwrap();
    });
    assert_eq!(editing, bare + 2, "an editing hook: one round per point");
}

/// A read-only native hook that fails on `rank` (global) and emits nothing.
fn failing_on(rank: u32) -> Arc<FnHook> {
    Arc::new(FnHook::read_only("picky", move |ctx, _, _| {
        if ctx.rank.global_rank == rank {
            Err("no".into())
        } else {
            Ok(())
        }
    }))
}

/// Retrievals before and after the failing point, and an editing hook
/// between them when `edit_after`; the error and the partial outputs' keys.
fn fail_run(m: &mut FlexModel, fail_rank: u32, edit_after: bool) -> (String, u32, Vec<String>) {
    retrieve_at(m, "blocks.0.hook_resid_pre");
    retrieve_at(m, "blocks.0.attn.hook_pattern");
    m.register(failing_on(fail_rank), "blocks.0.hook_resid_mid", &["risky"])
        .unwrap();
    retrieve_at(m, "blocks.0.hook_resid_post");
    retrieve_at(m, "blocks.1.mlp.hook_post");
    if edit_after {
        let scale = runtime().load(&wasm("scale")).unwrap();
        m.register_wasm(&scale, "blocks.1.hook_resid_pre", r#"{"factor": 2.0}"#, &[])
            .unwrap();
    }
    match m.forward(&ids(), &Groups::All) {
        Err(FlexError::Hook { error, partial }) => {
            assert!(matches!(error.kind, HookErrorKind::Plugin(_)), "{error}");
            let keys = partial.into_inner().unwrap().into_keys().collect();
            (error.hook_point.clone(), error.rank, keys)
        }
        other => panic!("expected the hook's error, got {other:?}"),
    }
}

#[test]
fn a_read_only_failure_on_one_tp_rank_is_every_rank_s_error_with_one_rank_s_partial_outputs() {
    let mut one = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
    let (point, rank, reference) = fail_run(&mut one, 0, false);
    assert_eq!(
        (point.as_str(), rank),
        ("transformer.h.0.hook_resid_mid", 0)
    );
    assert_eq!(
        reference,
        [
            "transformer.h.0.attn.hook_pattern",
            "transformer.h.0.hook_resid_pre"
        ],
        "one rank keeps what came before the failure"
    );
    for (layout, fail_rank, edit_after) in [
        ((1, 1, 2), 1, false),
        ((1, 1, 2), 1, true),
        ((2, 1, 2), 1, false),
        ((1, 2, 2), 3, true),
    ] {
        let (pp, dp, tp) = layout;
        let mut o = Options::new(pp, dp, tp).unwrap();
        o.timeout = Duration::from_secs(30);
        let mut m = FlexModel::load_with(&model_dir("gpt2-tiny"), &o).unwrap();
        let (p, r, keys) = fail_run(&mut m, fail_rank, edit_after);
        assert_eq!(
            (p.as_str(), r, &keys),
            ("transformer.h.0.hook_resid_mid", fail_rank, &reference),
            "{layout:?}, editing hook after: {edit_after}"
        );
        // The model keeps working, the same on the next forward.
        assert!(m.forward(&ids(), &Groups::except(["risky"])).is_ok());
    }
}

#[test]
fn read_only_outputs_that_differ_between_tp_ranks_fail_every_rank_with_diverged() {
    let mut o = Options::new(1, 1, 2).unwrap();
    o.timeout = Duration::from_secs(30);
    assert!(o.check_edits);
    let mut m = FlexModel::load_with(&model_dir("gpt2-tiny"), &o).unwrap();
    retrieve_at(&mut m, "blocks.0.hook_resid_pre");
    m.register(
        Arc::new(FnHook::read_only("rank-dependent", |ctx, t, out| {
            out.push(("x".into(), t.sum(Kind::Float) + ctx.rank.tp_rank as f64));
            Ok(())
        })),
        "blocks.0.hook_resid_mid",
        &[],
    )
    .unwrap();
    retrieve_at(&mut m, "blocks.1.hook_resid_post");
    let each = m.forward_each(&ids(), &Groups::All).unwrap();
    let mut texts = Vec::new();
    for (rank, r) in each.into_iter().enumerate() {
        match r {
            Err(FlexError::Hook { error, partial }) => {
                assert!(
                    matches!(&error.kind, HookErrorKind::Diverged { message } if message.contains("output")),
                    "{error}"
                );
                assert_eq!(
                    (error.plugin.as_str(), error.hook_point.as_str(), error.rank),
                    ("rank-dependent", "transformer.h.0.hook_resid_mid", 1)
                );
                if rank == 0 {
                    let keys: Vec<String> = partial.into_inner().unwrap().into_keys().collect();
                    assert_eq!(keys, ["transformer.h.0.hook_resid_pre"]);
                }
                texts.push(error.to_string());
            }
            other => panic!("rank {rank}: expected Diverged, got {other:?}"),
        }
    }
    assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
}
