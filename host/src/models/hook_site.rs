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

/// Fire `point` only if something is registered there. A hooked strided
/// view (q, k, v of a fused projection; a transposed head layout) is made
/// contiguous first: the hooks then work on it in place, and the forward
/// continues from it, instead of the hook runtime staging a copy and
/// writing it back into the view.
#[inline]
pub fn fire(hooks: &mut dyn HookSite, point: &str, t: Tensor) -> Result<Tensor, ModelError> {
    if hooks.active(point) {
        let t = if t.device() == tch::Device::Cpu && !t.is_contiguous() {
            t.contiguous()
        } else {
            t
        };
        hooks.fire(point, t)
    } else {
        Ok(t)
    }
}
