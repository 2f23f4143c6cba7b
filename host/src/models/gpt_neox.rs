//! GPT-NeoX (Pythia), as `transformers`' `modeling_gpt_neox.py` (eager
//! attention), in its components: [`Attention`] (fused per-head q/k/v,
//! partial rotary embeddings: `rotary_pct` / `partial_rotary_factor`),
//! [`Mlp`], [`Block`] (parallel residual with `use_parallel_residual`);
//! LayerNorm. Weight names as in the checkpoint; the LM head loads from
//! `embed_out.weight` (transformers 4) or `lm_head.weight` (transformers 5).
//! Hook points: the tables below, in forward order (`P` =
//! `gpt_neox.layers.{i}`); `P.hook_resid_mid` only with a sequential
//! residual; `P.post_attention_dropout` / `P.post_mlp_dropout` are the
//! identity in eval, after the attention / MLP outputs.

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::cache::{KvCache, with_cache};
use super::error::ModelError;
use super::hook_site::{HookSite, fire};
use super::layers::{CorePoints, Linear, Par, Params, attention};
use super::loader::Loader;
use super::norm::{Norm, NormPoints};
use super::pack::{Pack, PackedSite};
use super::points::{Dims, PointInfo, hook_points};
use super::rope::{rope_tables, rotate_half};
use super::shard::{Shard, TpComm, embed};
use super::stage::{Head, HeadPoints, Step, finish, masks, prologue};
use super::weights::Weights;

/// `config.json` of a GPT-NeoX checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct GptNeoXConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "yes")]
    pub use_parallel_residual: bool,
    #[serde(default = "yes")]
    pub attention_bias: bool,
    /// transformers 4.
    #[serde(default)]
    pub rotary_pct: Option<f64>,
    /// transformers 4.
    #[serde(default)]
    pub rotary_emb_base: Option<f64>,
    /// transformers 5.
    #[serde(default)]
    pub rope_parameters: Option<NeoXRope>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// `rope_parameters` of a GPT-NeoX config.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct NeoXRope {
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu".into()
}
fn yes() -> bool {
    true
}

impl GptNeoXConfig {
    fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
    fn rotary_ndims(&self) -> i64 {
        let pct = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.partial_rotary_factor)
            .or(self.rotary_pct)
            .unwrap_or(1.0);
        (self.head_dim() as f64 * pct) as i64
    }
    fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rotary_emb_base)
            .unwrap_or(10_000.0)
    }
}

hook_points! {
    /// One layer, under `gpt_neox.layers.{i}` (aliases under `blocks.{i}`).
    struct BlockPoints {
        resid_pre: "hook_resid_pre", "hook_resid_pre", [B, S, D];
        ln1_scale: "input_layernorm.hook_scale", "ln1.hook_scale", [B, S, One];
        ln1_normalized: "input_layernorm.hook_normalized", "ln1.hook_normalized", [B, S, D];
        ln1: "input_layernorm", "", [B, S, D];
        qkv: "attention.query_key_value", "", [B, S, D3], split(2, 1);
        q: "attention.hook_q", "attn.hook_q", [B, S, H, Dh], split(2, 1);
        k: "attention.hook_k", "attn.hook_k", [B, S, H, Dh], split(2, 1);
        v: "attention.hook_v", "attn.hook_v", [B, S, H, Dh], split(2, 1);
        rot_q: "attention.hook_rot_q", "attn.hook_rot_q", [B, S, H, Dh], split(2, 1);
        rot_k: "attention.hook_rot_k", "attn.hook_rot_k", [B, S, H, Dh], split(2, 1);
        scores: "attention.hook_attn_scores", "attn.hook_attn_scores", [B, H, S, S], split(1, 1);
        pattern: "attention.hook_pattern", "attn.hook_pattern", [B, H, S, S], split(1, 1);
        z: "attention.hook_z", "attn.hook_z", [B, S, H, Dh], split(2, 1);
        dense: "attention.dense", "", [B, S, D];
        attn: "attention", "hook_attn_out", [B, S, D];
        post_attn_dropout: "post_attention_dropout", "", [B, S, D];
        resid_mid: "hook_resid_mid", "hook_resid_mid", [B, S, D];
        ln2_scale: "post_attention_layernorm.hook_scale", "ln2.hook_scale", [B, S, One];
        ln2_normalized: "post_attention_layernorm.hook_normalized", "ln2.hook_normalized", [B, S, D];
        ln2: "post_attention_layernorm", "", [B, S, D];
        fc_in: "mlp.dense_h_to_4h", "mlp.hook_pre", [B, S, I], split(2, 1);
        act: "mlp.act", "mlp.hook_post", [B, S, I], split(2, 1);
        fc_out: "mlp.dense_4h_to_h", "", [B, S, D];
        mlp: "mlp", "hook_mlp_out", [B, S, D];
        post_mlp_dropout: "post_mlp_dropout", "", [B, S, D];
        block: "", "hook_resid_post", [B, S, D];
    }
}

hook_points! {
    /// Around the layers.
    struct OuterPoints {
        embed: "gpt_neox.embed_in", "hook_embed", [B, S, D];
        emb_dropout: "gpt_neox.emb_dropout", "", [B, S, D];
        norm_scale: "gpt_neox.final_layer_norm.hook_scale", "ln_final.hook_scale", [B, S, One];
        norm_normalized: "gpt_neox.final_layer_norm.hook_normalized", "ln_final.hook_normalized", [B, S, D];
        norm: "gpt_neox.final_layer_norm", "unembed.hook_in", [B, S, D];
        lm_head: "lm_head", "unembed.hook_out|logits", [B, S, V], split(2, 1);
    }
}

/// `GPTNeoXAttention`: query_key_value (rows per head, `[head, q|k|v,
/// d_head]`: a contiguous run of rows is a run of whole heads, so it is
/// column-parallel as stored), partial rotary, dense (row-parallel).
struct Attention {
    qkv: Linear,
    dense: Linear,
    heads: i64,
    head_dim: i64,
}

impl Attention {
    fn load(lb: &Loader, c: &GptNeoXConfig) -> Result<Attention, ModelError> {
        let (d, bias) = (c.hidden_size, c.attention_bias);
        Ok(Attention {
            qkv: Linear::load(lb, "query_key_value", d, 3 * d, bias, Par::Column)?,
            dense: Linear::load(lb, "dense", d, d, bias, Par::Row)?,
            heads: c.num_attention_heads / lb.shard.tp_size,
            head_dim: c.head_dim(),
        })
    }

    fn rope(&self, t: &Tensor, st: &Step<'_>) -> Result<Tensor, ModelError> {
        let Some((cos, sin)) = &st.rope else {
            return Err(ModelError::Internal("no rotary tables".into()));
        };
        // The rotary width as transformers applies it: the cos/sin width.
        let rd = *cos.size().last().unwrap_or(&0);
        let r = t.narrow(3, 0, rd);
        let rest = t.narrow(3, rd, self.head_dim - rd);
        Ok(Tensor::cat(&[&r * cos + rotate_half(&r) * sin, rest], 3))
    }

    fn forward(
        &self,
        h: Tensor,
        st: &mut Step<'_>,
        n: &BlockPoints,
        layer: usize,
    ) -> Result<Tensor, ModelError> {
        let (b, s, nh, hd) = (st.b, st.s, self.heads, self.head_dim);
        let h = st.tp.copy_to_parallel(h)?;
        let qkv = st.unpack(self.qkv.forward(&h));
        let qkv = fire(st.hooks, &n.qkv, qkv)?;
        // Per-head fused layout: [b, s, h, 3 * hd] -> q | k | v.
        let parts = qkv.view([b, s, nh, 3 * hd]).chunk(3, -1);
        let q = fire(st.hooks, &n.q, parts[0].contiguous())?.transpose(1, 2);
        let k = fire(st.hooks, &n.k, parts[1].contiguous())?.transpose(1, 2);
        let v = fire(st.hooks, &n.v, parts[2].contiguous())?.transpose(1, 2);
        let q = self.rope(&q, st)?.transpose(1, 2);
        let q = fire(st.hooks, &n.rot_q, q)?.transpose(1, 2);
        let k = self.rope(&k, st)?.transpose(1, 2);
        let k = fire(st.hooks, &n.rot_k, k)?.transpose(1, 2);
        let (k, v) = with_cache(&mut st.cache, layer, k, v);
        let core = CorePoints {
            scores: &n.scores,
            pattern: &n.pattern,
        };
        let scaling = (hd as f64).powf(-0.5);
        let z = attention(&q, &k, &v, scaling, &st.mask, st.explicit, st.hooks, &core)?;
        let z = fire(st.hooks, &n.z, z.transpose(1, 2).contiguous())?;
        let o = self
            .dense
            .forward_tp(&st.pack(z.reshape([b, s, nh * hd])), Par::Row, st.tp)?;
        fire(st.hooks, &n.dense, o)
    }
}

/// `GPTNeoXMLP`: dense_h_to_4h (column-parallel), GELU, dense_4h_to_h
/// (row-parallel).
struct Mlp {
    fc_in: Linear,
    fc_out: Linear,
    /// Exact GELU (`gelu`) or the tanh approximation.
    exact: bool,
}

impl Mlp {
    fn load(lb: &Loader, c: &GptNeoXConfig) -> Result<Mlp, ModelError> {
        let (d, inter) = (c.hidden_size, c.intermediate_size);
        Ok(Mlp {
            fc_in: Linear::load(lb, "dense_h_to_4h", d, inter, true, Par::Column)?,
            fc_out: Linear::load(lb, "dense_4h_to_h", inter, d, true, Par::Row)?,
            exact: c.hidden_act == "gelu",
        })
    }

    fn forward(&self, h: Tensor, st: &mut Step<'_>, n: &BlockPoints) -> Result<Tensor, ModelError> {
        let h = st.tp.copy_to_parallel(h)?;
        let h = fire(st.hooks, &n.fc_in, self.fc_in.forward(&h))?;
        let h = fire(
            st.hooks,
            &n.act,
            h.gelu(if self.exact { "none" } else { "tanh" }),
        )?;
        fire(
            st.hooks,
            &n.fc_out,
            self.fc_out.forward_tp(&h, Par::Row, st.tp)?,
        )
    }
}

/// `GPTNeoXLayer`: attention and MLP on the same input (parallel residual)
/// or one after the other.
struct Block {
    ln1: Norm,
    attn: Attention,
    ln2: Norm,
    mlp: Mlp,
    parallel: bool,
    names: BlockPoints,
}

impl Block {
    fn load(lb: &Loader, c: &GptNeoXConfig, layer: i64) -> Result<Block, ModelError> {
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        Ok(Block {
            ln1: Norm::layer_norm(&lb.pp("input_layernorm"), d, eps)?,
            attn: Attention::load(&lb.pp("attention"), c)?,
            ln2: Norm::layer_norm(&lb.pp("post_attention_layernorm"), d, eps)?,
            mlp: Mlp::load(&lb.pp("mlp"), c)?,
            parallel: c.use_parallel_residual,
            names: BlockPoints::new(&format!("gpt_neox.layers.{layer}")),
        })
    }

    fn forward(&self, x: Tensor, st: &mut Step<'_>, layer: usize) -> Result<Tensor, ModelError> {
        let n = &self.names;
        let resid_pre = fire(st.hooks, &n.resid_pre, x)?;
        let ln1 = NormPoints {
            scale: &n.ln1_scale,
            normalized: &n.ln1_normalized,
        };
        let h = self.ln1.forward(&resid_pre, st.hooks, &ln1)?;
        let h = fire(st.hooks, &n.ln1, h)?;
        let attn = self.attn.forward(h, st, n, layer)?;
        let attn = fire(st.hooks, &n.attn, attn)?;
        let attn = fire(st.hooks, &n.post_attn_dropout, attn)?;
        let mlp_in = if self.parallel {
            resid_pre.shallow_clone()
        } else {
            fire(st.hooks, &n.resid_mid, &resid_pre + &attn)?
        };
        let ln2 = NormPoints {
            scale: &n.ln2_scale,
            normalized: &n.ln2_normalized,
        };
        let h = self.ln2.forward(&mlp_in, st.hooks, &ln2)?;
        let h = fire(st.hooks, &n.ln2, h)?;
        let mlp = self.mlp.forward(h, st, n)?;
        let mlp = fire(st.hooks, &n.mlp, mlp)?;
        let mlp = fire(st.hooks, &n.post_mlp_dropout, mlp)?;
        let out = if self.parallel {
            mlp + attn + resid_pre
        } else {
            mlp + mlp_in
        };
        fire(st.hooks, &n.block, out)
    }

    fn release(&self) {
        for l in [
            &self.attn.qkv,
            &self.attn.dense,
            &self.mlp.fc_in,
            &self.mlp.fc_out,
        ] {
            l.w.release();
        }
    }

    fn parameters(&self, p: &mut Params) {
        let n = &self.names.block;
        p.norm(&format!("{n}.input_layernorm"), &self.ln1);
        p.linear(&format!("{n}.attention.query_key_value"), &self.attn.qkv);
        p.linear(&format!("{n}.attention.dense"), &self.attn.dense);
        p.norm(&format!("{n}.post_attention_layernorm"), &self.ln2);
        p.linear(&format!("{n}.mlp.dense_h_to_4h"), &self.mlp.fc_in);
        p.linear(&format!("{n}.mlp.dense_4h_to_h"), &self.mlp.fc_out);
    }
}

/// A loaded GPT-NeoX model (or one rank's shard of it: see [`Shard`]).
pub struct GptNeoX {
    pub config: GptNeoXConfig,
    shard: Shard,
    embed: Option<Tensor>,
    vocab_offset: i64,
    layers: Vec<Block>,
    pub(crate) head: Option<Head>,
    inv_freq: Tensor,
    kind: Kind,
    device: Device,
}

fn check_config(c: &GptNeoXConfig) -> Result<(), ModelError> {
    let bad = |message: String| {
        Err(ModelError::Config {
            file: "config.json".into(),
            message,
        })
    };
    if !matches!(c.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_fast") {
        return bad(format!(
            "activation {:?} is not supported (gelu, gelu_new are)",
            c.hidden_act
        ));
    }
    if let Some(t) = c
        .rope_parameters
        .as_ref()
        .and_then(|r| r.rope_type.as_deref())
        && t != "default"
    {
        return bad(format!(
            "GPT-NeoX rope type {t:?} is not supported (default is)"
        ));
    }
    Ok(())
}

impl GptNeoX {
    pub fn load(
        config: GptNeoXConfig,
        w: &Weights,
        kind: Kind,
        device: Device,
    ) -> Result<GptNeoX, ModelError> {
        Self::load_shard(config, w, kind, device, &Shard::FULL)
    }

    /// Load the part of the model `shard` runs (its stage's layers, its
    /// slice of each tensor-parallel weight).
    pub fn load_shard(
        config: GptNeoXConfig,
        w: &Weights,
        kind: Kind,
        device: Device,
        shard: &Shard,
    ) -> Result<GptNeoX, ModelError> {
        check_config(&config)?;
        shard.check(
            &[("attention heads", config.num_attention_heads)],
            config.num_hidden_layers,
        )?;
        let root = Loader::new(w, shard, kind, device, "GPT-NeoX");
        let lb = root.pp("gpt_neox");
        let layers = shard
            .layers(config.num_hidden_layers)
            .map(|i| Block::load(&lb.pp(format!("layers.{i}")), &config, i))
            .collect::<Result<Vec<_>, _>>()?;
        let (v, d) = (config.vocab_size, config.hidden_size);
        let tied = config.tie_word_embeddings;
        let (vocab_offset, embed) = if shard.first_stage() || (shard.last_stage() && tied) {
            let (o, t) = lb.vocab_rows("embed_in.weight", v, d)?;
            (o, Some(t))
        } else {
            (shard.part(v).0, None)
        };
        let head = if shard.last_stage() {
            let weight = match &embed {
                Some(e) if tied => e.shallow_clone(),
                _ if w.contains("embed_out.weight") => root.vocab_rows("embed_out.weight", v, d)?.1,
                _ => root.vocab_rows("lm_head.weight", v, d)?.1,
            };
            let norm = Norm::layer_norm(&lb.pp("final_layer_norm"), d, config.layer_norm_eps)?;
            Some(Head::new(norm, weight, tied))
        } else {
            None
        };
        let dim = config.rotary_ndims();
        let exps = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu))
            .to_kind(Kind::Float)
            / dim as f64;
        let inv_freq = Tensor::pow_scalar(config.rope_theta(), &exps)
            .reciprocal()
            .to_device(device);
        Ok(GptNeoX {
            embed: if shard.first_stage() { embed } else { None },
            vocab_offset,
            shard: shard.clone(),
            layers,
            head,
            inv_freq,
            config,
            kind,
            device,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    pub fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    /// This rank's parameters, named as transformers' `named_parameters()`
    /// (the LM head is `lm_head.weight`, stored as `embed_out.weight` by
    /// older checkpoints).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut p = Params::default();
        if let Some(w) = &self.embed {
            p.add("gpt_neox.embed_in.weight", w);
        }
        for l in &self.layers {
            l.parameters(&mut p);
        }
        if let Some(h) = &self.head {
            let tied = self.config.tie_word_embeddings;
            h.parameters(
                &mut p,
                "gpt_neox.final_layer_norm",
                "gpt_neox.embed_in.weight",
                tied,
                self.embed.as_ref(),
            );
        }
        p.0
    }

    /// Drop the plain weights `parameters` materialised.
    pub fn release_parameters(&self) {
        self.layers.iter().for_each(Block::release);
        if let Some(h) = &self.head {
            h.weight.release();
        }
    }

    /// This rank's part of the forward (see `Gpt2::forward_stage`).
    pub fn forward_stage(
        &self,
        input_ids: &Tensor,
        hidden: Option<Tensor>,
        hooks: &mut dyn HookSite,
        tp: &dyn TpComm,
        cache: Option<&mut KvCache>,
        valid: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let (b, s, start, hidden) = prologue(
            &self.shard,
            input_ids,
            hidden,
            &cache,
            c.hidden_size,
            self.kind,
            self.device,
            None,
        )?;
        let n = OuterPoints::new("");
        let mut x = match hidden {
            Some(h) => h,
            None => {
                let Some(table) = &self.embed else {
                    return Err(ModelError::Internal(
                        "first stage without embeddings".into(),
                    ));
                };
                let ids = input_ids.to_device(self.device);
                let x = fire(hooks, &n.embed, embed(table, &ids, self.vocab_offset, tp)?)?;
                fire(hooks, &n.emb_dropout, x)?
            }
        };
        let (mask, positions, explicit) = masks(valid, (b, s, start), None, self.device)?;
        let rope = rope_tables(&self.inv_freq, &positions, self.kind);
        let pack = Pack::of(valid, (b, s, start), self.device);
        let mut site = PackedSite::new(hooks, pack.as_ref());
        let mut st = Step {
            hooks: &mut site,
            tp,
            cache,
            b,
            s,
            mask,
            positions,
            explicit,
            rope: Some(rope),
            pack,
        };
        x = st.pack(x);
        for (li, l) in self.layers.iter().enumerate() {
            x = l.forward(x, &mut st, li)?;
        }
        let points = HeadPoints {
            norm: NormPoints {
                scale: &n.norm_scale,
                normalized: &n.norm_normalized,
            },
            normed: &n.norm,
            logits: &n.lm_head,
        };
        finish(x, st, self.head.as_ref(), &points)
    }

    pub fn points(&self, batch: i64, seq: i64) -> Vec<PointInfo> {
        let c = &self.config;
        let dims = Dims {
            batch,
            seq,
            width: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_attention_heads,
            head_dim: c.head_dim(),
            inner: c.intermediate_size,
            vocab: c.vocab_size,
        };
        let outer = OuterPoints::infos("", "", &dims);
        let mut v: Vec<PointInfo> = outer[..2].to_vec();
        for i in 0..c.num_hidden_layers {
            let prefix = format!("gpt_neox.layers.{i}");
            let mut block = BlockPoints::infos(&prefix, &format!("blocks.{i}"), &dims);
            if c.use_parallel_residual {
                // No residual between attention and MLP.
                let mid = BlockPoints::new(&prefix).resid_mid;
                block.retain(|p| p.name != mid);
            }
            v.extend(block);
        }
        v.extend(outer.into_iter().skip(2));
        v
    }
}
