//! The hooks of one pass: which registrations are bound to each hook point
//! and enabled, calling them in registration order, collecting what they
//! emit against the per-forward caps ([`super::tp_site`] makes it the
//! models' [`crate::models::HookSite`] on any mesh).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tch::Tensor;

use super::deferred::Order;
use super::{Groups, Registration};
use crate::hooks::{
    CallContext, ForwardLimits, GenStep, HookError, HookErrorKind, LogLevel, RankInfo, Tokens,
};

/// What the hooks of one forward pass (or of a whole generation: the budget
/// is carried from step to step) have emitted and logged so far, against the
/// per-forward [`ForwardLimits`].
#[derive(Debug, Clone, Default)]
pub struct RunBudget {
    pub limits: ForwardLimits,
    pub output_bytes: u64,
    pub outputs: u64,
    pub log_messages: usize,
    pub logs_dropped: usize,
}

impl RunBudget {
    pub fn new(limits: ForwardLimits) -> Self {
        RunBudget {
            limits,
            ..Default::default()
        }
    }
}

pub(crate) struct Site<'a> {
    /// Hook point -> enabled registrations, in registration order.
    by_point: HashMap<&'a str, Vec<&'a Registration>>,
    forward_index: u64,
    rank: RankInfo,
    /// Set during generation.
    pub generation: Option<GenStep>,
    /// Calls backward hooks (on gradients) instead of forward hooks.
    backward: bool,
    /// Stop the forward after this point's hooks ran.
    stop: Option<String>,
    pub outputs: BTreeMap<String, Tensor>,
    /// Output key -> the hook that emitted it (`Hook::ident`).
    pub producers: BTreeMap<String, String>,
    pub logs: Vec<(String, String, LogLevel, String)>,
    /// Per-forward caps and what was used of them.
    pub budget: RunBudget,
    /// Keys emitted by the last `run_hooks` (for the TP ranks' agreement).
    pub last_emitted: Vec<String>,
    /// Hooked points run so far in this forward (forward order).
    pub point_seq: u64,
    /// Where each output and log line came from.
    pub order: Order,
    /// Hook point -> token dimension.
    pub token_dims: Option<&'a HashMap<String, usize>>,
    /// This pass's real tokens per row `(start, len)` in a padded batch.
    pub real: Option<Arc<[(u32, u32)]>>,
    /// The batch row of this rank's row 0 (a data-parallel replica's first).
    pub row_offset: i64,
    /// Asked at every hook point ([`super::Interrupt`]); latched once true.
    pub interrupt: Option<&'a super::Interrupt>,
    interrupted: std::cell::Cell<bool>,
}

impl<'a> Site<'a> {
    pub fn new(
        regs: &'a [Registration],
        groups: &Groups,
        forward_index: u64,
        stop: Option<String>,
        rank: RankInfo,
    ) -> Site<'a> {
        Self::with_direction(regs, groups, forward_index, stop, rank, false)
    }

    /// The site of the forward hooks (`backward` false) or of the backward
    /// hooks (true) among `regs`.
    pub fn with_direction(
        regs: &'a [Registration],
        groups: &Groups,
        forward_index: u64,
        stop: Option<String>,
        rank: RankInfo,
        backward: bool,
    ) -> Site<'a> {
        let mut by_point: HashMap<&str, Vec<&Registration>> = HashMap::new();
        for r in regs
            .iter()
            .filter(|r| r.backward == backward && groups.enables(&r.groups))
        {
            for p in &r.points {
                by_point.entry(p.as_str()).or_default().push(r);
            }
        }
        Site {
            by_point,
            forward_index,
            rank,
            generation: None,
            backward,
            stop,
            outputs: BTreeMap::new(),
            producers: BTreeMap::new(),
            logs: Vec::new(),
            budget: RunBudget::default(),
            last_emitted: Vec::new(),
            point_seq: 0,
            order: Order::default(),
            token_dims: None,
            real: None,
            row_offset: 0,
            interrupt: None,
            interrupted: std::cell::Cell::new(false),
        }
    }
}

impl<'a> Site<'a> {
    /// The enabled registrations at `point`, in call order.
    pub fn registrations(&self, point: &str) -> &[&'a Registration] {
        self.by_point.get(point).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether something is registered at `point` (ignoring the stop point).
    pub fn hooked(&self, point: &str) -> bool {
        self.by_point.contains_key(point)
    }

    /// Whether the pass must end now (its interrupt said so, now or
    /// before): the models' `active` answers true so that `fire` can end it.
    pub fn interrupted(&self) -> bool {
        if !self.interrupted.get() && self.interrupt.is_some_and(|i| i()) {
            self.interrupted.set(true);
        }
        self.interrupted.get()
    }

    /// Whether the forward stops after `point`.
    pub fn stops_at(&self, point: &str) -> bool {
        self.stop.as_deref() == Some(point)
    }

    /// Call the hooks at `point` on `t`; returns the tensor to continue with
    /// and whether any hook edited it. Stops at the first failure (with the
    /// failing hook's place in call order).
    pub fn run_hooks(
        &mut self,
        point: &str,
        mut t: Tensor,
    ) -> Result<(Tensor, bool), (usize, HookError)> {
        self.last_emitted.clear();
        let Some(regs) = self.by_point.get(point).cloned() else {
            return Ok((t, false));
        };
        let ctx = self.context(point);
        let mut edited = Ok(false);
        for (i, r) in regs.iter().enumerate() {
            match self.call_one(&ctx, i, r, &mut t) {
                Ok(e) => edited = edited.map(|x| x | e),
                Err(e) => {
                    edited = Err((i, e));
                    break;
                }
            }
        }
        self.point_seq += 1;
        edited.map(|e| (t, e))
    }

    /// Call every hook at a point whose hooks are all read-only, also after
    /// one of them failed (see [`super::deferred`]); the first failure, with
    /// the hook's place in call order.
    pub fn run_read_only(&mut self, point: &str, t: &Tensor) -> Option<(usize, HookError)> {
        self.last_emitted.clear();
        let regs = self.by_point.get(point).cloned()?;
        let ctx = self.context(point);
        let mut first = None;
        for (i, r) in regs.iter().enumerate() {
            let mut view = t.shallow_clone();
            if let Err(e) = self.call_one(&ctx, i, r, &mut view) {
                first.get_or_insert((i, e));
            }
        }
        self.point_seq += 1;
        first
    }

    fn context(&self, point: &str) -> CallContext {
        CallContext {
            hook_point: point.to_string(),
            rank: self.rank,
            forward_index: self.forward_index,
            generation: self.generation,
            backward: self.backward,
            tokens: self
                .token_dims
                .and_then(|m| m.get(point))
                .map(|&dim| Tokens {
                    dim,
                    real: self.real.clone(),
                }),
        }
    }

    /// Call the `index`-th hook at the context's point on `t` and take what
    /// it emitted and logged, within the caps; whether it edited `t`.
    fn call_one(
        &mut self,
        ctx: &CallContext,
        index: usize,
        r: &Registration,
        t: &mut Tensor,
    ) -> Result<bool, HookError> {
        let point = ctx.hook_point.as_str();
        let fail = |kind| HookError {
            plugin: r.hook.name().to_string(),
            hook_point: point.to_string(),
            rank: self.rank.global_rank,
            kind,
        };
        let mut report = match r.lane.as_deref() {
            None => r.hook.call(ctx, t)?,
            Some(lane) => {
                lane.check(r.hook.name(), point, self.rank.global_rank)?;
                let Some(mut view) = lane.view(t, self.row_offset) else {
                    return Ok(false); // none of its rows on this rank
                };
                let at = view.data_ptr();
                let mut own = ctx.clone();
                own.tokens = lane.tokens(t, self.row_offset, own.tokens);
                own.forward_index = own.forward_index.saturating_sub(lane.forward_offset);
                let report = r.hook.call(&own, &mut view)?;
                if report.edited && view.data_ptr() != at {
                    // A replacement: copy it into the lane's rows.
                    if let Some(mut rows) = lane.view(t, self.row_offset) {
                        rows.f_copy_(&view).map_err(|e| {
                            fail(HookErrorKind::ForwardLimit {
                                message: e.to_string(),
                            })
                        })?;
                    }
                }
                report
            }
        };
        if let Some(lane) = r.lane.as_deref().filter(|l| !l.key_prefix.is_empty()) {
            for e in &mut report.emitted {
                e.key = format!("{}{}", lane.key_prefix, e.key);
            }
        }
        // Check the whole report before taking any of it.
        let lim = self.budget.limits;
        let mut bytes = 0u64;
        for e in &report.emitted {
            if let Some(owner) = self.producers.get(&e.key) {
                return Err(fail(HookErrorKind::OutputConflict(Box::new(
                    crate::hooks::OutputConflict {
                        key: e.key.clone(),
                        owner: owner.clone(),
                    },
                ))));
            }
            let b = e.tensor.numel() as u64 * e.tensor.kind().elt_size_in_bytes() as u64;
            bytes += b.max(lim.min_output_charge) + e.key.len() as u64;
        }
        let n = self.budget.outputs + report.emitted.len() as u64;
        let total = self.budget.output_bytes.saturating_add(bytes);
        if n > lim.max_outputs || total > lim.max_output_bytes {
            return Err(fail(HookErrorKind::ForwardLimit {
                message: format!(
                    "outputs of this forward would reach {n} tensors and {total} bytes, over \
                     the caps of {} tensors and {} bytes",
                    lim.max_outputs, lim.max_output_bytes
                ),
            }));
        }
        self.budget.outputs = n;
        self.budget.output_bytes = total;
        let ident = r.hook.ident();
        let place = (self.point_seq, index);
        for e in report.emitted {
            self.producers.insert(e.key.clone(), ident.clone());
            self.last_emitted.push(e.key.clone());
            self.order.outputs.insert(e.key.clone(), place);
            self.outputs.insert(e.key, e.tensor);
        }
        for (level, msg) in report.logs {
            if self.budget.log_messages >= lim.max_log_messages {
                self.budget.logs_dropped += 1;
                continue;
            }
            self.budget.log_messages += 1;
            self.order.logs.push(place);
            self.logs
                .push((r.hook.name().to_string(), point.to_string(), level, msg));
        }
        Ok(report.edited)
    }
}
