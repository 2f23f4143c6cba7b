//! A lane: what a registered hook is confined to when several independent
//! jobs share one batch (the service's co-tenancy batching). A hook in a
//! lane sees only its rows of every activation (a view of them: its edits
//! land in those rows and nowhere else), the real-token spans of those rows
//! only, and emits under the lane's key prefix, so that two jobs' outputs
//! never meet. A lane also carries its job's wall-clock deadline and a stop
//! flag (cancellation): past either, the hook's next call fails instead of
//! running; and the forward index its job began at, so that its hooks
//! count forwards from the job's first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tch::Tensor;

use crate::hooks::{HookError, HookErrorKind, Tokens};

/// Asked at every hook point of a pass on one rank (hooked or not):
/// `true` ends the pass with [`super::FlexError::Interrupted`] before that
/// point's hooks run (the Python package checks for Ctrl-C here). Cheap
/// calls only: it runs dozens of times per block.
pub type Interrupt = Arc<dyn Fn() -> bool + Send + Sync>;

/// When a job must stop: past its wall-clock deadline, or once its stop
/// flag is set (cancelled). Checked before each of its hooks' calls (in
/// its [`Lane`]) and, by global rank 0, after each generation step
/// ([`crate::engine::GenerateOptions::halt`]).
#[derive(Debug, Clone, Default)]
pub struct Halt {
    /// The job's deadline and its wall-time limit (for the message).
    pub deadline: Option<(Instant, Duration)>,
    /// Set to stop the job (cancelled).
    pub stop: Option<Arc<AtomicBool>>,
}

impl Halt {
    /// Why the job must stop now, if it must.
    pub fn reason(&self) -> Option<String> {
        if self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            return Some("the job was cancelled".into());
        }
        match self.deadline {
            Some((at, limit)) if Instant::now() >= at => Some(format!(
                "quota wall_ms: the job ran past its {} ms",
                limit.as_millis()
            )),
            _ => None,
        }
    }
}

/// Where a hook may act (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Lane {
    /// The batch rows `start..start + len` the hook sees (`None`: all).
    pub rows: Option<(i64, i64)>,
    /// Put before every key the hook emits (`""`: none).
    pub key_prefix: String,
    /// When the job must stop.
    pub halt: Halt,
    /// The model's forward count when the job began: its hooks see forward
    /// indices from 0 (their random streams then depend on the job alone,
    /// and nothing tells them how many forwards others ran).
    pub forward_offset: u64,
}

impl Lane {
    /// Refuse a call past the deadline or after the stop flag was set.
    pub(crate) fn check(&self, plugin: &str, point: &str, rank: u32) -> Result<(), HookError> {
        match self.halt.reason() {
            Some(message) => Err(HookError {
                plugin: plugin.to_string(),
                hook_point: point.to_string(),
                rank,
                kind: HookErrorKind::ForwardLimit { message },
            }),
            None => Ok(()),
        }
    }

    /// The lane's rows among a rank's `t`, whose row 0 is the batch's row
    /// `offset` (a data-parallel replica holds some rows only), in `t`'s
    /// own indices; `None` when none of them are here.
    fn local(&self, t: &Tensor, offset: i64) -> Option<(i64, i64)> {
        let here = t.size().first().copied().unwrap_or(0);
        let (start, len) = self.rows.unwrap_or((offset, here));
        let from = start.max(offset);
        let to = (start + len).min(offset + here);
        (to > from).then_some((from - offset, to - from))
    }

    /// The lane's view of `t` (its rows, see [`Self::local`]; `t` itself
    /// without a row range), `None` when it has no rows here.
    pub(crate) fn view(&self, t: &Tensor, offset: i64) -> Option<Tensor> {
        if self.rows.is_none() {
            return Some(t.shallow_clone());
        }
        if t.dim() == 0 {
            return None;
        }
        self.local(t, offset).map(|(s, n)| t.narrow(0, s, n))
    }

    /// `tokens` of the lane's rows of `t`.
    pub(crate) fn tokens(&self, t: &Tensor, offset: i64, tokens: Option<Tokens>) -> Option<Tokens> {
        let (Some((s, n)), Some(tk)) = (self.local(t, offset), &tokens) else {
            return tokens;
        };
        if self.rows.is_none() {
            return tokens;
        }
        let real = tk.real.as_ref().map(|r| {
            let (s, n) = (s as usize, n as usize);
            Arc::from(r.get(s..s + n).unwrap_or_default())
        });
        Some(Tokens { dim: tk.dim, real })
    }
}
