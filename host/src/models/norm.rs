//! The norms, `nn.LayerNorm` and LLaMA's `RMSNorm`, computed as
//! transformers does, with TransformerLens' two hook points inside:
//! `hook_scale` (the divisor, `[batch, pos, 1]`) and `hook_normalized`
//! (`x / scale`, before the norm's weight and bias). When neither is hooked
//! the fused kernel runs.

use tch::{Kind, Tensor};

use super::error::ModelError;
use super::hook_site::{HookSite, fire};
use super::loader::Loader;

/// The hook points inside a norm.
pub(crate) struct NormPoints<'a> {
    pub scale: &'a str,
    pub normalized: &'a str,
}

pub(crate) enum Norm {
    /// `nn.LayerNorm` over the last dimension.
    Layer { w: Tensor, b: Tensor, eps: f64 },
    /// LLaMA's RMSNorm (in float32, weight applied in the model's dtype).
    Rms { w: Tensor, eps: f64 },
}

impl Norm {
    pub fn layer_norm(lb: &Loader, d: i64, eps: f64) -> Result<Norm, ModelError> {
        Ok(Norm::Layer {
            w: lb.get("weight", &[d])?,
            b: lb.get("bias", &[d])?,
            eps,
        })
    }

    pub fn rms_norm(lb: &Loader, d: i64, eps: f64) -> Result<Norm, ModelError> {
        Ok(Norm::Rms {
            w: lb.get("weight", &[d])?,
            eps,
        })
    }

    pub fn weight(&self) -> &Tensor {
        match self {
            Norm::Layer { w, .. } | Norm::Rms { w, .. } => w,
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        match self {
            Norm::Layer { b, .. } => Some(b),
            Norm::Rms { .. } => None,
        }
    }

    /// The norm of `x`, firing `points` when they are hooked.
    pub fn forward(
        &self,
        x: &Tensor,
        hooks: &mut dyn HookSite,
        points: &NormPoints<'_>,
    ) -> Result<Tensor, ModelError> {
        if !hooks.active(points.scale) && !hooks.active(points.normalized) {
            return Ok(self.fused(x));
        }
        match self {
            Norm::Layer { w, b, eps } => {
                let centred = x - x.mean_dim(-1, true, x.kind());
                let var = centred.pow_tensor_scalar(2).mean_dim(-1, true, x.kind());
                let scale = fire(hooks, points.scale, (var + *eps).sqrt())?;
                let normalized = fire(hooks, points.normalized, centred / scale)?;
                Ok(normalized * w + b)
            }
            Norm::Rms { w, eps } => {
                let kind = x.kind();
                let h = x.to_kind(Kind::Float);
                let var = h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
                let scale = fire(hooks, points.scale, (var + *eps).sqrt().to_kind(kind))?;
                let normalized = (h / scale.to_kind(Kind::Float)).to_kind(kind);
                let normalized = fire(hooks, points.normalized, normalized)?;
                Ok(w * normalized)
            }
        }
    }

    fn fused(&self, x: &Tensor) -> Tensor {
        match self {
            Norm::Layer { w, b, eps } => {
                let d = *x.size().last().unwrap_or(&0);
                x.layer_norm([d], Some(w), Some(b), *eps, false)
            }
            Norm::Rms { w, eps } => {
                let kind = x.kind();
                let h = x.to_kind(Kind::Float);
                let var = h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
                let h = &h * (var + *eps).rsqrt();
                w * h.to_kind(kind)
            }
        }
    }
}
