//! Hugging Face checkpoints run with tch, one file per architecture, with
//! named hook points.

pub mod cache;
pub mod cuda;
pub mod error;
mod generation_config;
pub mod gpt2;
pub mod gpt_neox;
pub mod hook_site;
mod layers;
pub mod llama;
mod loader;
mod norm;
mod onednn;
mod pack;
pub mod points;
mod rope;
pub mod shard;
mod stage;
pub mod tokenizer;
mod weight;
pub mod weights;

use std::path::Path;

use tch::{Device, Kind, Tensor};

pub use cache::KvCache;
pub use error::ModelError;
pub use generation_config::eos_tokens;
pub use hook_site::{HookSite, NoHooks};
pub use points::{PatternError, PointInfo, PointPattern, TpSplit};
pub use shard::{Shard, SingleRank, TpComm};
pub use tokenizer::Tokenizer;
pub use weights::Weights;

/// A loaded model of any supported architecture.
pub enum Model {
    Gpt2(gpt2::Gpt2),
    Llama(llama::Llama),
    GptNeoX(gpt_neox::GptNeoX),
}

/// The most negative finite value of `kind` (`torch.finfo(dtype).min`), used
/// to mask attention scores as transformers does.
pub(crate) fn mask_value(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => f64::from(half::bf16::MIN),
        Kind::Double => f64::MIN,
        _ => f64::from(f32::MIN),
    }
}

/// Parse a dtype name: `f32`/`float32`, `f16`/`float16`, `bf16`/`bfloat16`.
pub fn parse_dtype(s: &str) -> Result<Kind, ModelError> {
    match s {
        "f32" | "float32" | "float" => Ok(Kind::Float),
        "f16" | "float16" | "half" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        other => Err(ModelError::UnsupportedDtype(format!(
            "{other:?} (use f32, f16 or bf16)"
        ))),
    }
}

fn read_config(dir: &Path) -> Result<(serde_json::Value, String), ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: path.display().to_string(),
        message: e.to_string(),
    })?;
    let model_type = v
        .get("model_type")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string();
    Ok((v, model_type))
}

fn typed<T: serde::de::DeserializeOwned>(
    v: serde_json::Value,
    dir: &Path,
) -> Result<T, ModelError> {
    serde_json::from_value(v).map_err(|e| ModelError::Config {
        file: dir.join("config.json").display().to_string(),
        message: e.to_string(),
    })
}

impl Model {
    /// Load the model in folder `dir` (config.json + safetensors) as `kind`
    /// on `device`.
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Model, ModelError> {
        Self::load_shard(dir, kind, device, &Shard::FULL)
    }

    /// Load the part of the model in `dir` that `shard` runs: its pipeline
    /// stage's layers and, of each tensor-parallel weight, only its slice.
    pub fn load_shard(
        dir: &Path,
        kind: Kind,
        device: Device,
        shard: &Shard,
    ) -> Result<Model, ModelError> {
        if device.is_cuda() && !cuda::available() {
            return Err(ModelError::Input(format!(
                "{device:?}: libtorch sees no CUDA device here"
            )));
        }
        let (cfg, model_type) = read_config(dir)?;
        let weights = Weights::open(dir)?;
        match model_type.as_str() {
            "gpt2" => Ok(Model::Gpt2(gpt2::Gpt2::load_shard(
                typed(cfg, dir)?,
                &weights,
                kind,
                device,
                shard,
            )?)),
            "gpt_neox" => Ok(Model::GptNeoX(gpt_neox::GptNeoX::load_shard(
                typed(cfg, dir)?,
                &weights,
                kind,
                device,
                shard,
            )?)),
            "llama" | "mistral" | "qwen2" => Ok(Model::Llama(llama::Llama::load_shard(
                typed(cfg, dir)?,
                &weights,
                kind,
                device,
                shard,
            )?)),
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }

    /// Logits `[batch, seq, vocab]`, firing hooks through `hooks`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        hooks: &mut dyn HookSite,
    ) -> Result<Tensor, ModelError> {
        self.forward_stage(input_ids, None, hooks, &SingleRank, None, None)
    }

    /// The final norm and LM head on `x` (`[..., d_model]`): the logits a
    /// residual stream would give if the model ended there (the logit lens).
    /// No hooks fire. Only a stage with the LM head (a whole model) has it.
    pub fn unembed(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let head = match self {
            Model::Gpt2(m) => m.head.as_ref(),
            Model::Llama(m) => m.head.as_ref(),
            Model::GptNeoX(m) => m.head.as_ref(),
        }
        .ok_or_else(|| ModelError::Input("this stage has no LM head".into()))?;
        let _guard = tch::no_grad_guard();
        let points = stage::HeadPoints {
            norm: norm::NormPoints {
                scale: "",
                normalized: "",
            },
            normed: "",
            logits: "",
        };
        head.forward(&x.to_kind(self.kind()), &mut NoHooks, &SingleRank, &points)
    }

    /// The vocabulary size (the logits' last dimension).
    pub fn vocab_size(&self) -> i64 {
        match self {
            Model::Gpt2(m) => m.vocab_size(),
            Model::Llama(m) => m.vocab_size(),
            Model::GptNeoX(m) => m.vocab_size(),
        }
    }

    /// One rank's part of a sharded forward: from the token ids (first
    /// pipeline stage) or the previous stage's `hidden` state, through this
    /// stage's layers, to the logits (last stage) or the hidden state for the
    /// next stage; tensor-parallel collectives go through `tp`. With a
    /// `cache`, the tokens continue the cached positions (incremental
    /// decoding) and their keys and values are appended to it. `valid`: in
    /// a padded batch, which of the cached and new positions hold real
    /// tokens (`[batch, cached + seq]`, transformers' `attention_mask`).
    pub fn forward_stage(
        &self,
        input_ids: &Tensor,
        hidden: Option<Tensor>,
        hooks: &mut dyn HookSite,
        tp: &dyn TpComm,
        cache: Option<&mut KvCache>,
        valid: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        self.run(input_ids, hidden, hooks, tp, cache, valid)
    }

    /// The forward with autograd recording (for a backward pass): tensors
    /// that require grad (parameters, hook-point leaves) get gradients.
    pub fn forward_with_grad(
        &self,
        input_ids: &Tensor,
        hooks: &mut dyn HookSite,
    ) -> Result<Tensor, ModelError> {
        tch::with_grad(|| self.run(input_ids, None, hooks, &SingleRank, None, None))
    }

    /// [`Self::forward_stage`] with autograd recording (one rank's part of
    /// a distributed backward pass).
    pub fn forward_stage_with_grad(
        &self,
        input_ids: &Tensor,
        hidden: Option<Tensor>,
        hooks: &mut dyn HookSite,
        tp: &dyn TpComm,
        valid: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        tch::with_grad(|| self.run(input_ids, hidden, hooks, tp, None, valid))
    }

    fn run(
        &self,
        input_ids: &Tensor,
        hidden: Option<Tensor>,
        hooks: &mut dyn HookSite,
        tp: &dyn TpComm,
        cache: Option<&mut KvCache>,
        valid: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        if input_ids.kind() != Kind::Int64 {
            return Err(ModelError::Input(format!(
                "input_ids must be int64, got {:?}",
                input_ids.kind()
            )));
        }
        // tch's infallible ops panic on a libtorch error; turn that into an error.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.forward_inner(input_ids, hidden, hooks, tp, cache, valid)
        }))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libtorch operation failed".into());
            Err(ModelError::Internal(
                msg.lines().next().unwrap_or("").to_string(),
            ))
        })
    }

    fn forward_inner(
        &self,
        input_ids: &Tensor,
        hidden: Option<Tensor>,
        hooks: &mut dyn HookSite,
        tp: &dyn TpComm,
        cache: Option<&mut KvCache>,
        valid: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        match self {
            Model::Gpt2(m) => m.forward_stage(input_ids, hidden, hooks, tp, cache, valid),
            Model::Llama(m) => m.forward_stage(input_ids, hidden, hooks, tp, cache, valid),
            Model::GptNeoX(m) => m.forward_stage(input_ids, hidden, hooks, tp, cache, valid),
        }
    }

    /// This rank's parameters, named as transformers' `named_parameters()`
    /// (handles to the model's own tensors; a tied LM head is listed once,
    /// as the embedding). Packed weights are materialised plain until
    /// [`Self::release_parameters`].
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        match self {
            Model::Gpt2(m) => m.parameters(),
            Model::Llama(m) => m.parameters(),
            Model::GptNeoX(m) => m.parameters(),
        }
    }

    /// Drop the plain copies of oneDNN-packed weights that [`Self::parameters`]
    /// materialised (f32 weights on the CPU are held once, packed; a
    /// backward pass needs them plain for its duration).
    pub fn release_parameters(&self) {
        match self {
            Model::Gpt2(m) => m.release_parameters(),
            Model::Llama(m) => m.release_parameters(),
            Model::GptNeoX(m) => m.release_parameters(),
        }
    }

    /// What this rank holds of the model.
    pub fn shard(&self) -> &Shard {
        match self {
            Model::Gpt2(m) => m.shard(),
            Model::Llama(m) => m.shard(),
            Model::GptNeoX(m) => m.shard(),
        }
    }

    /// The model's hidden size and layer count.
    pub fn dims(&self) -> (i64, i64) {
        match self {
            Model::Gpt2(m) => (m.config.n_embd, m.config.n_layer),
            Model::Llama(m) => (m.config.hidden_size, m.config.num_hidden_layers),
            Model::GptNeoX(m) => (m.config.hidden_size, m.config.num_hidden_layers),
        }
    }

    /// Every hook point with its shape for `batch` × `seq` tokens.
    pub fn points(&self, batch: i64, seq: i64) -> Vec<PointInfo> {
        match self {
            Model::Gpt2(m) => m.points(batch, seq),
            Model::Llama(m) => m.points(batch, seq),
            Model::GptNeoX(m) => m.points(batch, seq),
        }
    }

    /// The dtype of the model's weights.
    pub fn kind(&self) -> Kind {
        match self {
            Model::Gpt2(m) => m.kind(),
            Model::Llama(m) => m.kind(),
            Model::GptNeoX(m) => m.kind(),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Model::Gpt2(m) => m.device(),
            Model::Llama(m) => m.device(),
            Model::GptNeoX(m) => m.device(),
        }
    }

    pub fn architecture(&self) -> &'static str {
        match self {
            Model::Gpt2(_) => "gpt2",
            Model::GptNeoX(_) => "gpt_neox",
            Model::Llama(m) => match m.config.model_type.as_str() {
                "mistral" => "mistral",
                "qwen2" => "qwen2",
                _ => "llama",
            },
        }
    }
}
