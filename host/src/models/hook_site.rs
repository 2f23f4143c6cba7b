//! The seam between a model's forward pass and the hooks: at every named hook
//! point the forward hands its activation to a [`HookSite`] and continues
//! with what it gets back (the same tensor, edited in place, or a
//! replacement).

use tch::Tensor;

use super::error::ModelError;

pub trait HookSite {
    /// Whether anything is registered at `point` (lets the forward skip
    /// building views nobody looks at).
    fn active(&self, point: &str) -> bool;
    /// Run the hooks registered at `point` on `t`; returns the tensor the
    /// forward continues with.
    fn fire(&mut self, point: &str, t: Tensor) -> Result<Tensor, ModelError>;
}

/// No hooks: the plain forward.
pub struct NoHooks;

impl HookSite for NoHooks {
    fn active(&self, _point: &str) -> bool {
        false
    }
    fn fire(&mut self, _point: &str, t: Tensor) -> Result<Tensor, ModelError> {
        Ok(t)
    }
}

/// Fire `point` only if something is registered there.
#[inline]
pub fn fire(hooks: &mut dyn HookSite, point: &str, t: Tensor) -> Result<Tensor, ModelError> {
    if hooks.active(point) {
        hooks.fire(point, t)
    } else {
        Ok(t)
    }
}
