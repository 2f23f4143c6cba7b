//! Rotary position embeddings as transformers computes them: the inverse
//! frequencies (default, and LLaMA 3's scaling), the cos/sin tables of a
//! run of positions, `rotate_half`.

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::error::ModelError;

/// RoPE parameters: `rope_parameters` (transformers 5) or the older
/// `rope_scaling` object.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RopeParams {
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
}

/// `rotate_half` of transformers' rotary embeddings (last dimension, rank 4).
pub(crate) fn rotate_half(x: &Tensor) -> Tensor {
    let h = x.size()[3] / 2;
    Tensor::cat(&[-x.narrow(3, h, h), x.narrow(3, 0, h)], 3)
}

/// `(cos, sin)`, each `[rows, 1, seq, 2 * len(inv_freq)]`, for `positions`
/// (`[rows, seq]`, int64): float32 angles, then the model's dtype.
pub(crate) fn rope_tables(inv_freq: &Tensor, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
    let pos = positions.to_kind(Kind::Float);
    let inv_freq = inv_freq.to_device(pos.device());
    let freqs = pos.unsqueeze(-1) * inv_freq.unsqueeze(0).unsqueeze(0);
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    (
        emb.cos().to_kind(kind).unsqueeze(1),
        emb.sin().to_kind(kind).unsqueeze(1),
    )
}

/// Inverse RoPE frequencies, computed as transformers does (float32 ops).
pub(crate) fn inv_freq(rope: &RopeParams, head_dim: i64) -> Result<Tensor, ModelError> {
    let base = rope.rope_theta.unwrap_or(10_000.0);
    let exps = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, Device::Cpu))
        .to_kind(Kind::Float)
        / head_dim as f64;
    let inv = Tensor::pow_scalar(base, &exps).reciprocal();
    match rope.rope_type.as_deref().unwrap_or("default") {
        "default" => Ok(inv),
        "llama3" => {
            let need = |v: Option<f64>, what: &str| {
                v.ok_or_else(|| ModelError::Config {
                    file: "config.json".into(),
                    message: format!("llama3 rope scaling needs `{what}`"),
                })
            };
            let factor = need(rope.factor, "factor")?;
            let low = need(rope.low_freq_factor, "low_freq_factor")?;
            let high = need(rope.high_freq_factor, "high_freq_factor")?;
            let old = need(
                rope.original_max_position_embeddings,
                "original_max_position_embeddings",
            )?;
            let (low_wl, high_wl) = (old / low, old / high);
            let wavelen = inv.reciprocal() * (2.0 * std::f64::consts::PI);
            let scaled = &inv / factor;
            let inv_l = scaled.where_self(&wavelen.gt(low_wl), &inv);
            let smooth = ((wavelen.reciprocal() * old) - low) / (high - low);
            let one_minus: Tensor = -&smooth + 1.0;
            let smoothed: Tensor = &one_minus * &inv_l / factor + &smooth * &inv_l;
            let medium = wavelen.ge(high_wl).logical_and(&wavelen.le(low_wl));
            Ok(smoothed.where_self(&medium, &inv_l))
        }
        other => Err(ModelError::Config {
            file: "config.json".into(),
            message: format!("rope type {other:?} is not supported (default, llama3 are)"),
        }),
    }
}
