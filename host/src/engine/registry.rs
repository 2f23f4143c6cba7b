//! The registered hooks of a wrapped model (on any mesh): which hook, bound
//! to which canonical points, in which groups; and which groups a pass runs.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::FlexError;
use crate::hooks::{Hook, Plugin, WasmHook};
use crate::models::{PointInfo, PointPattern};

/// `plugin` initialised with `config`, after checking that `pattern`
/// selects something among `points` (a typo fails before the plugin runs).
pub(crate) fn wasm_hook(
    plugin: &Arc<Plugin>,
    pattern: &str,
    config: &str,
    points: &[PointInfo],
) -> Result<Arc<dyn Hook>, FlexError> {
    PointPattern::new(pattern)?.select(points)?;
    Ok(Arc::new(WasmHook::new(plugin.clone(), config)?))
}

/// Identifies a registered hook, to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookHandle(pub(crate) u64);

/// Which hooks run in a forward. Every hook is in group `all` and in the
/// groups it was tagged with at registration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Groups {
    /// Every registered hook.
    #[default]
    All,
    /// Only hooks in at least one of these groups.
    Only(BTreeSet<String>),
    /// Every hook except those in any of these groups.
    Except(BTreeSet<String>),
}

impl Groups {
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(g: I) -> Groups {
        Groups::Only(g.into_iter().map(Into::into).collect())
    }
    pub fn except<I: IntoIterator<Item = S>, S: Into<String>>(g: I) -> Groups {
        Groups::Except(g.into_iter().map(Into::into).collect())
    }
    pub(crate) fn enables(&self, tags: &BTreeSet<String>) -> bool {
        match self {
            Groups::All => true,
            Groups::Only(g) => g.contains("all") || tags.iter().any(|t| g.contains(t)),
            Groups::Except(g) => !g.contains("all") && !tags.iter().any(|t| g.contains(t)),
        }
    }
}

/// A hook bound to hook points.
#[derive(Clone)]
pub struct Registration {
    pub(crate) handle: HookHandle,
    pub(crate) hook: Arc<dyn Hook>,
    pub(crate) pattern: String,
    /// Canonical hook points it is bound to.
    pub(crate) points: BTreeSet<String>,
    pub(crate) groups: BTreeSet<String>,
    /// Called on the gradient in a backward pass instead of in the forward.
    pub(crate) backward: bool,
    /// The rows, key prefix and deadline it is confined to (`None`: free).
    pub(crate) lane: Option<Arc<super::Lane>>,
}

/// One entry of [`HookSet::list`]: handle, hook name, pattern, bound points, groups.
pub type HookListing = (HookHandle, String, String, Vec<String>, Vec<String>);

/// The hooks registered on a model, in registration (= call) order.
#[derive(Default, Clone)]
pub struct HookSet {
    pub(crate) regs: Vec<Registration>,
    next_handle: u64,
}

impl HookSet {
    /// Bind `hook` to the points of `points` that `pattern` selects (by
    /// canonical name, alias or glob), tagged with `groups`.
    pub fn add(
        &mut self,
        hook: Arc<dyn Hook>,
        pattern: &str,
        groups: &[&str],
        points: &[PointInfo],
    ) -> Result<HookHandle, FlexError> {
        self.add_directed(hook, pattern, groups, points, false)
    }

    /// Like [`Self::add`]; `backward`: a hook on gradients.
    pub fn add_directed(
        &mut self,
        hook: Arc<dyn Hook>,
        pattern: &str,
        groups: &[&str],
        points: &[PointInfo],
        backward: bool,
    ) -> Result<HookHandle, FlexError> {
        let pat = PointPattern::new(pattern)?;
        let bound: BTreeSet<String> = pat.select(points)?.into_iter().collect();
        let handle = HookHandle(self.next_handle);
        self.next_handle += 1;
        let mut tags: BTreeSet<String> = groups.iter().map(|g| g.to_string()).collect();
        tags.insert("all".into());
        self.regs.push(Registration {
            handle,
            hook,
            pattern: pattern.into(),
            points: bound,
            groups: tags,
            backward,
            lane: None,
        });
        Ok(handle)
    }

    /// Confine hook `h` to `lane` (`None`: free again); `false` if it is
    /// not registered.
    pub fn set_lane(&mut self, h: HookHandle, lane: Option<super::Lane>) -> bool {
        let lane = lane.map(Arc::new);
        let mut found = false;
        for r in self.regs.iter_mut().filter(|r| r.handle == h) {
            r.lane = lane.clone();
            found = true;
        }
        found
    }

    /// Remove a hook; `false` if it was not registered.
    pub fn remove(&mut self, h: HookHandle) -> bool {
        let n = self.regs.len();
        self.regs.retain(|r| r.handle != h);
        self.regs.len() != n
    }

    /// (handle, hook name, pattern, bound points, groups) of every hook.
    pub fn list(&self) -> Vec<HookListing> {
        self.regs
            .iter()
            .map(|r| {
                (
                    r.handle,
                    r.hook.name().to_string(),
                    r.pattern.clone(),
                    r.points.iter().cloned().collect(),
                    r.groups.iter().cloned().collect(),
                )
            })
            .collect()
    }
}
