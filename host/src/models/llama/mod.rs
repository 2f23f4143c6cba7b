//! The LLaMA family (`model_type` `llama`, `mistral`, `qwen2`), as
//! `transformers`' `modeling_llama.py` / `modeling_mistral.py` /
//! `modeling_qwen2.py` (eager attention), in its components:
//! [`Attention`] (grouped-query, rotary embeddings with `rope_theta` and
//! `llama3` scaling, optional q/k/v(/o) biases, sliding windows for Mistral
//! and Qwen2), [`Mlp`] (SwiGLU), [`Block`]; RMSNorm; tied or untied
//! embeddings. Weight names as in the checkpoint. Hook points: the tables
//! below, in forward order (`P` = `model.layers.{i}`); `hook_q`/`hook_k` are
//! before rotary, `hook_rot_q`/`hook_rot_k` after.

use tch::{Device, Kind, Tensor};

use crate::models::cache::{KvCache, with_cache};
use crate::models::error::ModelError;
use crate::models::hook_site::{HookSite, fire};
use crate::models::layers::{CorePoints, Linear, Par, Params, attention};
use crate::models::loader::Loader;
use crate::models::norm::{Norm, NormPoints};
use crate::models::pack::{Pack, PackedSite};
use crate::models::points::{Dims, PointInfo, hook_points};
use crate::models::rope::{inv_freq, rope_tables, rotate_half};
use crate::models::shard::{Shard, TpComm, embed};
use crate::models::stage::{
    Head, HeadPoints, PreNormPoints, Step, finish, masks, pre_norm_block, prologue,
};
use crate::models::weights::Weights;

mod config;

pub use crate::models::rope::RopeParams;
pub use config::LlamaConfig;

hook_points! {
    /// One decoder layer, under `model.layers.{i}` (aliases under `blocks.{i}`).
    struct BlockPoints {
        resid_pre: "hook_resid_pre", "hook_resid_pre", [B, S, D];
        ln1_scale: "input_layernorm.hook_scale", "ln1.hook_scale", [B, S, One];
        ln1_normalized: "input_layernorm.hook_normalized", "ln1.hook_normalized", [B, S, D];
        ln1: "input_layernorm", "", [B, S, D];
        q_proj: "self_attn.q_proj", "", [B, S, HDh], split(2, 1);
        k_proj: "self_attn.k_proj", "", [B, S, HkvDh], split(2, 1);
        v_proj: "self_attn.v_proj", "", [B, S, HkvDh], split(2, 1);
        q: "self_attn.hook_q", "attn.hook_q", [B, S, H, Dh], split(2, 1);
        k: "self_attn.hook_k", "attn.hook_k", [B, S, Hkv, Dh], split(2, 1);
        v: "self_attn.hook_v", "attn.hook_v", [B, S, Hkv, Dh], split(2, 1);
        rot_q: "self_attn.hook_rot_q", "attn.hook_rot_q", [B, S, H, Dh], split(2, 1);
        rot_k: "self_attn.hook_rot_k", "attn.hook_rot_k", [B, S, Hkv, Dh], split(2, 1);
        scores: "self_attn.hook_attn_scores", "attn.hook_attn_scores", [B, H, S, S], split(1, 1);
        pattern: "self_attn.hook_pattern", "attn.hook_pattern", [B, H, S, S], split(1, 1);
        z: "self_attn.hook_z", "attn.hook_z", [B, S, H, Dh], split(2, 1);
        o_proj: "self_attn.o_proj", "", [B, S, D];
        attn: "self_attn", "hook_attn_out", [B, S, D];
        resid_mid: "hook_resid_mid", "hook_resid_mid", [B, S, D];
        ln2_scale: "post_attention_layernorm.hook_scale", "ln2.hook_scale", [B, S, One];
        ln2_normalized: "post_attention_layernorm.hook_normalized", "ln2.hook_normalized", [B, S, D];
        ln2: "post_attention_layernorm", "", [B, S, D];
        gate: "mlp.gate_proj", "mlp.hook_pre", [B, S, I], split(2, 1);
        up: "mlp.up_proj", "mlp.hook_pre_linear", [B, S, I], split(2, 1);
        act: "mlp.act_fn", "", [B, S, I], split(2, 1);
        post: "mlp.hook_post", "mlp.hook_post", [B, S, I], split(2, 1);
        down: "mlp.down_proj", "", [B, S, D];
        mlp: "mlp", "hook_mlp_out", [B, S, D];
        block: "", "hook_resid_post", [B, S, D];
    }
}

hook_points! {
    /// Around the layers: the embedding (first stage), the final norm and
    /// the LM head (last stage).
    struct OuterPoints {
        embed: "model.embed_tokens", "hook_embed", [B, S, D];
        norm_scale: "model.norm.hook_scale", "ln_final.hook_scale", [B, S, One];
        norm_normalized: "model.norm.hook_normalized", "ln_final.hook_normalized", [B, S, D];
        norm: "model.norm", "unembed.hook_in", [B, S, D];
        lm_head: "lm_head", "unembed.hook_out|logits", [B, S, V], split(2, 1);
    }
}

/// `LlamaAttention`: q, k, v (column-parallel by head), rotary, grouped-query
/// attention, o (row-parallel).
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// Query and key/value heads on this rank, head width.
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    /// Sliding window: the mask needs the explicit path.
    windowed: bool,
}

impl Attention {
    fn load(lb: &Loader, c: &LlamaConfig) -> Result<Attention, ModelError> {
        let (d, nh, nkv, hd) = (
            c.hidden_size,
            c.num_attention_heads,
            c.kv_heads(),
            c.head_dim(),
        );
        let bias = c.qkv_bias();
        let tp = lb.shard.tp_size;
        Ok(Attention {
            q: Linear::load(lb, "q_proj", d, nh * hd, bias, Par::Column)?,
            k: Linear::load(lb, "k_proj", d, nkv * hd, bias, Par::Column)?,
            v: Linear::load(lb, "v_proj", d, nkv * hd, bias, Par::Column)?,
            o: Linear::load(lb, "o_proj", nh * hd, d, c.o_bias(), Par::Row)?,
            heads: nh / tp,
            kv_heads: nkv / tp,
            head_dim: hd,
            windowed: c.window().is_some(),
        })
    }

    fn forward(
        &self,
        h: Tensor,
        st: &mut Step<'_>,
        n: &BlockPoints,
        layer: usize,
    ) -> Result<Tensor, ModelError> {
        let (b, s, nh, nkv, hd) = (st.b, st.s, self.heads, self.kv_heads, self.head_dim);
        let h = st.tp.copy_to_parallel(h)?;
        let q = st.unpack(self.q.forward(&h));
        let q = fire(st.hooks, &n.q_proj, q)?;
        let k = st.unpack(self.k.forward(&h));
        let k = fire(st.hooks, &n.k_proj, k)?;
        let v = st.unpack(self.v.forward(&h));
        let v = fire(st.hooks, &n.v_proj, v)?;
        let q = fire(st.hooks, &n.q, q.view([b, s, nh, hd]))?.transpose(1, 2);
        let k = fire(st.hooks, &n.k, k.view([b, s, nkv, hd]))?.transpose(1, 2);
        let v = fire(st.hooks, &n.v, v.view([b, s, nkv, hd]))?.transpose(1, 2);
        let Some((cos, sin)) = &st.rope else {
            return Err(ModelError::Internal("no rotary tables".into()));
        };
        let q = &q * cos + rotate_half(&q) * sin;
        let k = &k * cos + rotate_half(&k) * sin;
        let q = fire(st.hooks, &n.rot_q, q.transpose(1, 2))?.transpose(1, 2);
        let k = fire(st.hooks, &n.rot_k, k.transpose(1, 2))?.transpose(1, 2);
        let (k, v) = with_cache(&mut st.cache, layer, k, v);
        let rep = nh / nkv;
        let (k, v) = if rep > 1 {
            (
                k.repeat_interleave_self_int(rep, 1, None),
                v.repeat_interleave_self_int(rep, 1, None),
            )
        } else {
            (k, v)
        };
        let core = CorePoints {
            scores: &n.scores,
            pattern: &n.pattern,
        };
        let scaling = (hd as f64).powf(-0.5);
        let explicit = self.windowed || st.explicit;
        let z = attention(&q, &k, &v, scaling, &st.mask, explicit, st.hooks, &core)?;
        let z = fire(st.hooks, &n.z, z.transpose(1, 2).contiguous())?;
        let o = self
            .o
            .forward_tp(&st.pack(z.reshape([b, s, nh * hd])), Par::Row, st.tp)?;
        fire(st.hooks, &n.o_proj, o)
    }
}

/// `LlamaMLP`: `down(silu(gate(x)) * up(x))`; gate and up column-parallel,
/// down row-parallel.
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn load(lb: &Loader, c: &LlamaConfig) -> Result<Mlp, ModelError> {
        let (d, inter, bias) = (c.hidden_size, c.intermediate_size, c.mlp_bias);
        Ok(Mlp {
            gate: Linear::load(lb, "gate_proj", d, inter, bias, Par::Column)?,
            up: Linear::load(lb, "up_proj", d, inter, bias, Par::Column)?,
            down: Linear::load(lb, "down_proj", inter, d, bias, Par::Row)?,
        })
    }

    fn forward(&self, h: Tensor, st: &mut Step<'_>, n: &BlockPoints) -> Result<Tensor, ModelError> {
        let h = st.tp.copy_to_parallel(h)?;
        let gate = fire(st.hooks, &n.gate, self.gate.forward(&h))?;
        let up = fire(st.hooks, &n.up, self.up.forward(&h))?;
        let act = fire(st.hooks, &n.act, gate.silu())?;
        let post = fire(st.hooks, &n.post, act * up)?;
        fire(
            st.hooks,
            &n.down,
            self.down.forward_tp(&post, Par::Row, st.tp)?,
        )
    }
}

/// `LlamaDecoderLayer`: pre-norm attention and MLP, each added to the residual.
struct Block {
    ln1: Norm,
    attn: Attention,
    ln2: Norm,
    mlp: Mlp,
    names: BlockPoints,
}

impl Block {
    fn load(lb: &Loader, c: &LlamaConfig, layer: i64) -> Result<Block, ModelError> {
        let (d, eps) = (c.hidden_size, c.rms_norm_eps);
        Ok(Block {
            ln1: Norm::rms_norm(&lb.pp("input_layernorm"), d, eps)?,
            attn: Attention::load(&lb.pp("self_attn"), c)?,
            ln2: Norm::rms_norm(&lb.pp("post_attention_layernorm"), d, eps)?,
            mlp: Mlp::load(&lb.pp("mlp"), c)?,
            names: BlockPoints::new(&format!("model.layers.{layer}")),
        })
    }

    fn forward(&self, x: Tensor, st: &mut Step<'_>, layer: usize) -> Result<Tensor, ModelError> {
        let n = &self.names;
        let points = PreNormPoints {
            resid_pre: &n.resid_pre,
            ln1: NormPoints {
                scale: &n.ln1_scale,
                normalized: &n.ln1_normalized,
            },
            ln1_out: &n.ln1,
            attn: &n.attn,
            resid_mid: &n.resid_mid,
            ln2: NormPoints {
                scale: &n.ln2_scale,
                normalized: &n.ln2_normalized,
            },
            ln2_out: &n.ln2,
            mlp: &n.mlp,
            resid_post: &n.block,
        };
        pre_norm_block(
            x,
            st,
            &points,
            (&self.ln1, &self.ln2),
            |h, st| self.attn.forward(h, st, n, layer),
            |h, st| self.mlp.forward(h, st, n),
        )
    }

    fn release(&self) {
        let (a, m) = (&self.attn, &self.mlp);
        for l in [&a.q, &a.k, &a.v, &a.o, &m.gate, &m.up, &m.down] {
            l.w.release();
        }
    }

    fn parameters(&self, p: &mut Params) {
        let n = &self.names.block;
        p.norm(&format!("{n}.input_layernorm"), &self.ln1);
        for (name, lin) in [
            ("self_attn.q_proj", &self.attn.q),
            ("self_attn.k_proj", &self.attn.k),
            ("self_attn.v_proj", &self.attn.v),
            ("self_attn.o_proj", &self.attn.o),
        ] {
            p.linear(&format!("{n}.{name}"), lin);
        }
        p.norm(&format!("{n}.post_attention_layernorm"), &self.ln2);
        for (name, lin) in [
            ("mlp.gate_proj", &self.mlp.gate),
            ("mlp.up_proj", &self.mlp.up),
            ("mlp.down_proj", &self.mlp.down),
        ] {
            p.linear(&format!("{n}.{name}"), lin);
        }
    }
}

/// A loaded LLaMA-family model (or one rank's shard of it: see [`Shard`]).
pub struct Llama {
    pub config: LlamaConfig,
    shard: Shard,
    /// This rank's rows of the embedding (first stage), from vocabulary row
    /// `vocab_offset`.
    embed: Option<Tensor>,
    vocab_offset: i64,
    layers: Vec<Block>,
    pub(crate) head: Option<Head>,
    inv_freq: Tensor,
    kind: Kind,
    device: Device,
}

fn check_config(c: &LlamaConfig) -> Result<(), ModelError> {
    let bad = |message: String| {
        Err(ModelError::Config {
            file: "config.json".into(),
            message,
        })
    };
    if c.hidden_act != "silu" {
        return bad(format!(
            "activation {:?} is not supported (silu is)",
            c.hidden_act
        ));
    }
    let (nh, nkv) = (c.num_attention_heads, c.kv_heads());
    if nkv <= 0 || nh % nkv != 0 {
        return bad(format!(
            "num_attention_heads {nh} is not a multiple of num_key_value_heads {nkv}"
        ));
    }
    Ok(())
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
        check_config(&config)?;
        shard.check(
            &[
                ("attention heads", config.num_attention_heads),
                ("key/value heads", config.kv_heads()),
            ],
            config.num_hidden_layers,
        )?;
        let root = Loader::new(w, shard, kind, device, "LLaMA");
        let lb = root.pp("model");
        let layers = shard
            .layers(config.num_hidden_layers)
            .map(|i| Block::load(&lb.pp(format!("layers.{i}")), &config, i))
            .collect::<Result<Vec<_>, _>>()?;
        let (v, d) = (config.vocab_size, config.hidden_size);
        let tied = config.tie_word_embeddings;
        if !tied && !w.contains("lm_head.weight") {
            return Err(ModelError::MissingTensor {
                name: "lm_head.weight".into(),
                needed_by: "LLaMA (untied)".into(),
            });
        }
        let need_embed = shard.first_stage() || (shard.last_stage() && tied);
        let (vocab_offset, embed) = if need_embed {
            let (o, t) = lb.vocab_rows("embed_tokens.weight", v, d)?;
            (o, Some(t))
        } else {
            (shard.part(v).0, None)
        };
        let head = if shard.last_stage() {
            let weight = match &embed {
                Some(e) if tied => e.shallow_clone(),
                _ => root.vocab_rows("lm_head.weight", v, d)?.1,
            };
            Some(Head::new(
                Norm::rms_norm(&lb.pp("norm"), d, config.rms_norm_eps)?,
                weight,
                tied,
            ))
        } else {
            None
        };
        let inv_freq = inv_freq(&config.rope(), config.head_dim())?.to_device(device);
        Ok(Llama {
            embed: if shard.first_stage() { embed } else { None },
            vocab_offset,
            layers,
            head,
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

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    pub fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    /// This rank's parameters, named as in the checkpoint.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut p = Params::default();
        if let Some(w) = &self.embed {
            p.add("model.embed_tokens.weight", w);
        }
        for l in &self.layers {
            l.parameters(&mut p);
        }
        if let Some(h) = &self.head {
            let tied = self.config.tie_word_embeddings;
            h.parameters(
                &mut p,
                "model.norm",
                "model.embed_tokens.weight",
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
                fire(hooks, &n.embed, embed(table, &ids, self.vocab_offset, tp)?)?
            }
        };
        // Rotary tables as LlamaRotaryEmbedding; causal (and sliding-window) mask.
        let (mask, positions, explicit) = masks(valid, (b, s, start), c.window(), self.device)?;
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
            kv_heads: c.kv_heads(),
            head_dim: c.head_dim(),
            inner: c.intermediate_size,
            vocab: c.vocab_size,
        };
        let outer = OuterPoints::infos("", "", &dims);
        let mut v = vec![outer[0].clone()];
        for i in 0..c.num_hidden_layers {
            v.extend(BlockPoints::infos(
                &format!("model.layers.{i}"),
                &format!("blocks.{i}"),
                &dims,
            ));
        }
        v.extend(outer.into_iter().skip(1));
        v
    }
}
