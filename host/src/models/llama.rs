//! The LLaMA family (`model_type` `llama`, `mistral`, `qwen2`), as
//! `transformers`' `modeling_llama.py` / `modeling_mistral.py` /
//! `modeling_qwen2.py` (eager attention): RMSNorm, rotary embeddings with
//! `rope_theta` and `llama3` scaling, grouped-query attention, optional
//! q/k/v(/o) biases, SwiGLU MLP, sliding-window attention (Mistral, Qwen2),
//! tied or untied embeddings. Weight names as in the checkpoint.
//!
//! Hook points of layer `i` (`P = model.layers.{i}`), in forward order:
//! `P.hook_resid_pre`, `P.input_layernorm`, `P.self_attn.q_proj` / `k_proj` /
//! `v_proj`, `P.self_attn.hook_q` / `hook_k` / `hook_v` (`[batch, pos, head,
//! d_head]`, before rotary), `P.self_attn.hook_rot_q` / `hook_rot_k` (after
//! rotary), `P.self_attn.hook_pattern` (`[batch, head, query, key]`),
//! `P.self_attn.hook_z`, `P.self_attn.o_proj`, `P.self_attn`,
//! `P.hook_resid_mid`, `P.post_attention_layernorm`, `P.mlp.gate_proj`,
//! `P.mlp.up_proj`, `P.mlp.act_fn`, `P.mlp.hook_post` (`act(gate) * up`),
//! `P.mlp.down_proj`, `P.mlp`, `P`. Around them: `model.embed_tokens`,
//! `model.norm`, `lm_head`.

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::cache::{KvCache, with_cache};
use super::error::ModelError;
use super::hook_site::{HookSite, fire};
use super::layers::{Linear, Par, Params, attention, causal_mask, rope_tables, rotate_half};
use super::points::PointInfo;
use super::shard::{Shard, SingleRank, TpComm, embed, lm_head, stage_input};
use super::weights::Weights;

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
    fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    fn rope(&self) -> RopeParams {
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
    fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias
    }
    fn o_bias(&self) -> bool {
        self.model_type != "qwen2" && self.attention_bias
    }
    /// Window of sliding-window attention, if used.
    fn window(&self) -> Option<i64> {
        match self.model_type.as_str() {
            "mistral" => self.sliding_window,
            "qwen2" if self.use_sliding_window == Some(true) => self.sliding_window,
            _ => None,
        }
    }
}

struct RmsNorm {
    w: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let h = x.to_kind(Kind::Float);
        let var = h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let h = &h * (var + self.eps).rsqrt();
        &self.w * h.to_kind(kind)
    }
}

struct Names {
    resid_pre: String,
    ln1: String,
    q_proj: String,
    k_proj: String,
    v_proj: String,
    q: String,
    k: String,
    v: String,
    rot_q: String,
    rot_k: String,
    pattern: String,
    z: String,
    o_proj: String,
    attn: String,
    resid_mid: String,
    ln2: String,
    gate: String,
    up: String,
    act: String,
    post: String,
    down: String,
    mlp: String,
    block: String,
}

impl Names {
    fn new(i: i64) -> Self {
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let m = format!("{p}.mlp");
        Names {
            resid_pre: format!("{p}.hook_resid_pre"),
            ln1: format!("{p}.input_layernorm"),
            q_proj: format!("{a}.q_proj"),
            k_proj: format!("{a}.k_proj"),
            v_proj: format!("{a}.v_proj"),
            q: format!("{a}.hook_q"),
            k: format!("{a}.hook_k"),
            v: format!("{a}.hook_v"),
            rot_q: format!("{a}.hook_rot_q"),
            rot_k: format!("{a}.hook_rot_k"),
            pattern: format!("{a}.hook_pattern"),
            z: format!("{a}.hook_z"),
            o_proj: format!("{a}.o_proj"),
            resid_mid: format!("{p}.hook_resid_mid"),
            ln2: format!("{p}.post_attention_layernorm"),
            gate: format!("{m}.gate_proj"),
            up: format!("{m}.up_proj"),
            act: format!("{m}.act_fn"),
            post: format!("{m}.hook_post"),
            down: format!("{m}.down_proj"),
            attn: a,
            mlp: m,
            block: p,
        }
    }
}

struct Layer {
    ln1: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln2: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    names: Names,
}

/// A loaded LLaMA-family model (or one rank's shard of it: see [`Shard`]).
pub struct Llama {
    pub config: LlamaConfig,
    shard: Shard,
    /// This rank's rows of the embedding (first stage), from vocabulary row
    /// `vocab_offset`.
    embed: Option<Tensor>,
    vocab_offset: i64,
    layers: Vec<Layer>,
    norm: Option<RmsNorm>,
    lm_head: Option<Tensor>,
    /// The LM head in oneDNN's layout (f32 on CPU).
    head_packed: Option<super::onednn::Packed>,
    inv_freq: Tensor,
    kind: Kind,
    device: Device,
}

/// Inverse RoPE frequencies, computed as transformers does (float32 ops).
fn inv_freq(rope: &RopeParams, head_dim: i64) -> Result<Tensor, ModelError> {
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

impl Llama {
    pub fn load(
        config: LlamaConfig,
        w: &Weights,
        kind: Kind,
        device: Device,
    ) -> Result<Llama, ModelError> {
        Self::load_shard(config, w, kind, device, &Shard::FULL)
    }

    /// Load the part of the model `shard` runs (its stage's layers, its
    /// slice of each tensor-parallel weight).
    pub fn load_shard(
        config: LlamaConfig,
        w: &Weights,
        kind: Kind,
        device: Device,
        shard: &Shard,
    ) -> Result<Llama, ModelError> {
        if config.hidden_act != "silu" {
            return Err(ModelError::Config {
                file: "config.json".into(),
                message: format!(
                    "activation {:?} is not supported (silu is)",
                    config.hidden_act
                ),
            });
        }
        let (d, nh, nkv, hd, inter) = (
            config.hidden_size,
            config.num_attention_heads,
            config.kv_heads(),
            config.head_dim(),
            config.intermediate_size,
        );
        if nkv <= 0 || nh % nkv != 0 {
            return Err(ModelError::Config {
                file: "config.json".into(),
                message: format!(
                    "num_attention_heads {nh} is not a multiple of num_key_value_heads {nkv}"
                ),
            });
        }
        shard.check(
            &[("attention heads", nh), ("key/value heads", nkv)],
            config.num_hidden_layers,
        )?;
        let get = |name: &str, shape: &[i64]| w.get_shaped(name, shape, kind, device, "LLaMA");
        let lin = |name: &str, i: i64, o: i64, bias: bool, par: Par| {
            Linear::load(w, name, i, o, bias, par, shard, kind, device, "LLaMA")
        };
        let norm = |name: &str| -> Result<RmsNorm, ModelError> {
            Ok(RmsNorm {
                w: get(&format!("{name}.weight"), &[d])?,
                eps: config.rms_norm_eps,
            })
        };
        let mut layers = Vec::new();
        for i in shard.layers(config.num_hidden_layers) {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let m = format!("{p}.mlp");
            let qkv_bias = config.qkv_bias();
            layers.push(Layer {
                ln1: norm(&format!("{p}.input_layernorm"))?,
                q: lin(&format!("{a}.q_proj"), d, nh * hd, qkv_bias, Par::Column)?,
                k: lin(&format!("{a}.k_proj"), d, nkv * hd, qkv_bias, Par::Column)?,
                v: lin(&format!("{a}.v_proj"), d, nkv * hd, qkv_bias, Par::Column)?,
                o: lin(
                    &format!("{a}.o_proj"),
                    nh * hd,
                    d,
                    config.o_bias(),
                    Par::Row,
                )?,
                ln2: norm(&format!("{p}.post_attention_layernorm"))?,
                gate: lin(
                    &format!("{m}.gate_proj"),
                    d,
                    inter,
                    config.mlp_bias,
                    Par::Column,
                )?,
                up: lin(
                    &format!("{m}.up_proj"),
                    d,
                    inter,
                    config.mlp_bias,
                    Par::Column,
                )?,
                down: lin(
                    &format!("{m}.down_proj"),
                    inter,
                    d,
                    config.mlp_bias,
                    Par::Row,
                )?,
                names: Names::new(i),
            });
        }
        let v = config.vocab_size;
        let (vocab_offset, vocab_rows) = shard.part(v);
        let rows = |name: &str| {
            w.get_part(
                name,
                &[v, d],
                0,
                vocab_offset,
                vocab_rows,
                kind,
                device,
                "LLaMA",
            )
        };
        let tied = config.tie_word_embeddings;
        if !tied && !w.contains("lm_head.weight") {
            return Err(ModelError::MissingTensor {
                name: "lm_head.weight".into(),
                needed_by: "LLaMA (untied)".into(),
            });
        }
        let embed = if shard.first_stage() || (shard.last_stage() && tied) {
            Some(rows("model.embed_tokens.weight")?)
        } else {
            None
        };
        let lm_head = match (shard.last_stage(), tied) {
            (false, _) => None,
            (true, true) => embed.as_ref().map(Tensor::shallow_clone),
            (true, false) => Some(rows("lm_head.weight")?),
        };
        let inv_freq = inv_freq(&config.rope(), hd)?.to_device(device);
        Ok(Llama {
            norm: if shard.last_stage() {
                Some(norm("model.norm")?)
            } else {
                None
            },
            embed: if shard.first_stage() { embed } else { None },
            vocab_offset,
            layers,
            head_packed: lm_head.as_ref().and_then(|h| super::onednn::pack(h, None)),
            lm_head,
            inv_freq,
            config,
            shard: shard.clone(),
            kind,
            device,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// This rank's parameters, named as in the checkpoint.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut p = Params::default();
        if let Some(w) = &self.embed {
            p.add("model.embed_tokens.weight", w);
        }
        for l in &self.layers {
            let n = &l.names.block;
            p.add(format!("{n}.input_layernorm.weight"), &l.ln1.w);
            for (name, lin) in [
                ("self_attn.q_proj", &l.q),
                ("self_attn.k_proj", &l.k),
                ("self_attn.v_proj", &l.v),
                ("self_attn.o_proj", &l.o),
            ] {
                p.linear(&format!("{n}.{name}"), lin);
            }
            p.add(format!("{n}.post_attention_layernorm.weight"), &l.ln2.w);
            for (name, lin) in [
                ("mlp.gate_proj", &l.gate),
                ("mlp.up_proj", &l.up),
                ("mlp.down_proj", &l.down),
            ] {
                p.linear(&format!("{n}.{name}"), lin);
            }
        }
        if let Some(nm) = &self.norm {
            p.add("model.norm.weight", &nm.w);
        }
        if self.config.tie_word_embeddings && self.embed.is_none() {
            // A later pipeline stage's tied head: the embedding's parameter.
            if let Some(h) = &self.lm_head {
                p.add("model.embed_tokens.weight", h);
            }
        } else {
            p.head("lm_head.weight", self.lm_head.as_ref(), self.embed.as_ref());
        }
        p.0
    }

    pub fn forward(
        &self,
        input_ids: &Tensor,
        hooks: &mut dyn HookSite,
    ) -> Result<Tensor, ModelError> {
        self.forward_stage(input_ids, None, hooks, &SingleRank, None)
    }

    /// This rank's part of the forward (see `Gpt2::forward_stage`).
    pub fn forward_stage(
        &self,
        input_ids: &Tensor,
        hidden: Option<Tensor>,
        hooks: &mut dyn HookSite,
        tp: &dyn TpComm,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor, ModelError> {
        let start = cache.as_ref().map_or(0, |c| c.len());
        let size = input_ids.size();
        let [b, s] = size[..] else {
            return Err(ModelError::Input(format!(
                "input_ids must be [batch, seq], got {size:?}"
            )));
        };
        let c = &self.config;
        let tp_size = self.shard.tp_size;
        let (nh, nkv, hd) = (
            c.num_attention_heads / tp_size,
            c.kv_heads() / tp_size,
            c.head_dim(),
        );
        let mut x = match stage_input(&self.shard, hidden, b, s, c.hidden_size, self.kind)? {
            Some(h) => h.to_device(self.device),
            None => {
                let Some(table) = &self.embed else {
                    return Err(ModelError::Internal(
                        "first stage without embeddings".into(),
                    ));
                };
                let ids = input_ids.to_device(self.device);
                fire(
                    hooks,
                    "model.embed_tokens",
                    embed(table, &ids, self.vocab_offset, tp)?,
                )?
            }
        };
        // Rotary tables as LlamaRotaryEmbedding; causal (and sliding-window) mask.
        let (cos, sin) = rope_tables(&self.inv_freq, start, s, self.kind, self.device);
        let mask = causal_mask(start, s, c.window(), self.device);
        let scaling = (hd as f64).powf(-0.5);
        let rep = nh / nkv;
        for (li, l) in self.layers.iter().enumerate() {
            let n = &l.names;
            let resid_pre = fire(hooks, &n.resid_pre, x)?;
            let h = fire(hooks, &n.ln1, l.ln1.forward(&resid_pre))?;
            let h = tp.copy_to_parallel(h)?;
            let q = fire(hooks, &n.q_proj, l.q.forward(&h))?;
            let k = fire(hooks, &n.k_proj, l.k.forward(&h))?;
            let v = fire(hooks, &n.v_proj, l.v.forward(&h))?;
            let q = fire(hooks, &n.q, q.view([b, s, nh, hd]))?.transpose(1, 2);
            let k = fire(hooks, &n.k, k.view([b, s, nkv, hd]))?.transpose(1, 2);
            let v = fire(hooks, &n.v, v.view([b, s, nkv, hd]))?.transpose(1, 2);
            let q = &q * &cos + rotate_half(&q) * &sin;
            let k = &k * &cos + rotate_half(&k) * &sin;
            let q = fire(hooks, &n.rot_q, q.transpose(1, 2))?.transpose(1, 2);
            let k = fire(hooks, &n.rot_k, k.transpose(1, 2))?.transpose(1, 2);
            let (k, v) = with_cache(&mut cache, li, k, v);
            let (k, v) = if rep > 1 {
                (
                    k.repeat_interleave_self_int(rep, 1, None),
                    v.repeat_interleave_self_int(rep, 1, None),
                )
            } else {
                (k, v)
            };
            let z = attention(
                &q,
                &k,
                &v,
                scaling,
                &mask,
                c.window().is_some() || start > 0,
                hooks,
                &[&n.pattern],
            )?;
            let z = fire(hooks, &n.z, z.transpose(1, 2))?;
            let o = l.o.forward_tp(&z.reshape([b, s, nh * hd]), Par::Row, tp)?;
            let o = fire(hooks, &n.o_proj, o)?;
            let attn = fire(hooks, &n.attn, o)?;
            let resid_mid = fire(hooks, &n.resid_mid, resid_pre + attn)?;
            let h = fire(hooks, &n.ln2, l.ln2.forward(&resid_mid))?;
            let h = tp.copy_to_parallel(h)?;
            let gate = fire(hooks, &n.gate, l.gate.forward(&h))?;
            let up = fire(hooks, &n.up, l.up.forward(&h))?;
            let act = fire(hooks, &n.act, gate.silu())?;
            let post = fire(hooks, &n.post, act * up)?;
            let down = fire(hooks, &n.down, l.down.forward_tp(&post, Par::Row, tp)?)?;
            let mlp = fire(hooks, &n.mlp, down)?;
            x = fire(hooks, &n.block, resid_mid + mlp)?;
        }
        if let Some(c) = cache {
            c.advance(s);
        }
        let (Some(norm), Some(head)) = (&self.norm, &self.lm_head) else {
            return Ok(x);
        };
        let x = fire(hooks, "model.norm", norm.forward(&x))?;
        let x = tp.copy_to_parallel(x)?;
        fire(
            hooks,
            "lm_head",
            lm_head(&x, head, self.head_packed.as_ref()),
        )
    }

    pub fn points(&self, batch: i64, seq: i64) -> Vec<PointInfo> {
        let c = &self.config;
        let (d, nh, nkv, hd, inter) = (
            c.hidden_size,
            c.num_attention_heads,
            c.kv_heads(),
            c.head_dim(),
            c.intermediate_size,
        );
        let bsd = vec![batch, seq, d];
        let mut v = vec![PointInfo::new(
            "model.embed_tokens",
            bsd.clone(),
            "hook_embed",
        )];
        for i in 0..c.num_hidden_layers {
            let n = Names::new(i);
            let tl = format!("blocks.{i}");
            let qh = vec![batch, seq, nh, hd];
            let kh = vec![batch, seq, nkv, hd];
            v.extend([
                PointInfo::new(&n.resid_pre, bsd.clone(), &format!("{tl}.hook_resid_pre")),
                PointInfo::new(&n.ln1, bsd.clone(), &format!("{tl}.ln1.hook_normalized")),
                PointInfo::new(&n.q_proj, vec![batch, seq, nh * hd], "").split(2),
                PointInfo::new(&n.k_proj, vec![batch, seq, nkv * hd], "").split(2),
                PointInfo::new(&n.v_proj, vec![batch, seq, nkv * hd], "").split(2),
                PointInfo::new(&n.q, qh.clone(), &format!("{tl}.attn.hook_q")).split(2),
                PointInfo::new(&n.k, kh.clone(), &format!("{tl}.attn.hook_k")).split(2),
                PointInfo::new(&n.v, kh.clone(), &format!("{tl}.attn.hook_v")).split(2),
                PointInfo::new(&n.rot_q, qh.clone(), &format!("{tl}.attn.hook_rot_q")).split(2),
                PointInfo::new(&n.rot_k, kh, &format!("{tl}.attn.hook_rot_k")).split(2),
                PointInfo::new(
                    &n.pattern,
                    vec![batch, nh, seq, seq],
                    &format!("{tl}.attn.hook_pattern"),
                )
                .split(1),
                PointInfo::new(&n.z, qh, &format!("{tl}.attn.hook_z")).split(2),
                PointInfo::new(&n.o_proj, bsd.clone(), ""),
                PointInfo::new(&n.attn, bsd.clone(), &format!("{tl}.hook_attn_out")),
                PointInfo::new(&n.resid_mid, bsd.clone(), &format!("{tl}.hook_resid_mid")),
                PointInfo::new(&n.ln2, bsd.clone(), &format!("{tl}.ln2.hook_normalized")),
                PointInfo::new(
                    &n.gate,
                    vec![batch, seq, inter],
                    &format!("{tl}.mlp.hook_pre"),
                )
                .split(2),
                PointInfo::new(
                    &n.up,
                    vec![batch, seq, inter],
                    &format!("{tl}.mlp.hook_pre_linear"),
                )
                .split(2),
                PointInfo::new(&n.act, vec![batch, seq, inter], "").split(2),
                PointInfo::new(
                    &n.post,
                    vec![batch, seq, inter],
                    &format!("{tl}.mlp.hook_post"),
                )
                .split(2),
                PointInfo::new(&n.down, bsd.clone(), ""),
                PointInfo::new(&n.mlp, bsd.clone(), &format!("{tl}.hook_mlp_out")),
                PointInfo::new(&n.block, bsd.clone(), &format!("{tl}.hook_resid_post")),
            ]);
        }
        v.push(PointInfo::new(
            "model.norm",
            bsd,
            "ln_final.hook_normalized",
        ));
        v.push(PointInfo::new("lm_head", vec![batch, seq, c.vocab_size], "logits").split(2));
        v
    }
}
