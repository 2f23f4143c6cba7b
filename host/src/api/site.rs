//! The [`HookSite`] a forward of the API runs with: which registrations are
//! bound to each hook point and enabled, calling them in registration order,
//! collecting what they emit.

use std::collections::{BTreeMap, HashMap};

use tch::Tensor;

use super::{Groups, Registration};
use crate::hooks::{CallContext, GenStep, HookError, LogLevel, RankInfo};
use crate::models::{HookSite, ModelError};

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
    pub logs: Vec<(String, String, LogLevel, String)>,
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
            logs: Vec::new(),
        }
    }
}

impl HookSite for Site<'_> {
    fn active(&self, point: &str) -> bool {
        self.by_point.contains_key(point) || self.stop.as_deref() == Some(point)
    }

    fn fire(&mut self, point: &str, t: Tensor) -> Result<Tensor, ModelError> {
        let (t, _) = self
            .run_hooks(point, t)
            .map_err(|e| ModelError::Hook(Box::new(e)))?;
        if self.stop.as_deref() == Some(point) {
            return Err(ModelError::Stopped(point.to_string()));
        }
        Ok(t)
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

    /// Call the hooks at `point` on `t`; returns the tensor to continue with
    /// and whether any hook edited it.
    pub fn run_hooks(&mut self, point: &str, mut t: Tensor) -> Result<(Tensor, bool), HookError> {
        let Some(regs) = self.by_point.get(point) else {
            return Ok((t, false));
        };
        let ctx = CallContext {
            hook_point: point.to_string(),
            rank: self.rank,
            forward_index: self.forward_index,
            generation: self.generation,
            backward: self.backward,
        };
        let mut edited = false;
        for r in regs {
            let report = r.hook.call(&ctx, &mut t)?;
            edited |= report.edited;
            for e in report.emitted {
                // Two hooks emitting under one key: keep both.
                let mut key = e.key;
                if self.outputs.contains_key(&key) {
                    let mut n = 2;
                    while self.outputs.contains_key(&format!("{key}#{n}")) {
                        n += 1;
                    }
                    key = format!("{key}#{n}");
                }
                self.outputs.insert(key, e.tensor);
            }
            for (level, msg) in report.logs {
                self.logs
                    .push((r.hook.name().to_string(), point.to_string(), level, msg));
            }
        }
        Ok((t, edited))
    }
}
