//! `config.json` of a LLaMA-family checkpoint, and what follows from it.

use serde::Deserialize;

use crate::models::rope::RopeParams;

/// `config.json` of a LLaMA-family checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParams>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParams>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub sliding_window: Option<i64>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}
fn default_positions() -> i64 {
    2048
}

impl LlamaConfig {
    pub(crate) fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    pub(crate) fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub(crate) fn rope(&self) -> RopeParams {
        let mut r = self
            .rope_parameters
            .clone()
            .or_else(|| self.rope_scaling.clone())
            .unwrap_or_default();
        if r.rope_theta.is_none() {
            r.rope_theta = Some(self.rope_theta.unwrap_or(10_000.0));
        }
        r
    }
    /// Qwen2: q/k/v carry a bias, o_proj does not. Llama/Mistral: `attention_bias` for all four.
    pub(crate) fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias
    }
    pub(crate) fn o_bias(&self) -> bool {
        self.model_type != "qwen2" && self.attention_bias
    }
    /// Window of sliding-window attention, if used.
    pub(crate) fn window(&self) -> Option<i64> {
        match self.model_type.as_str() {
            "mistral" => self.sliding_window,
            "qwen2" if self.use_sliding_window == Some(true) => self.sliding_window,
            _ => None,
        }
    }
}
