//! GPT-2, as `transformers`' `modeling_gpt2.py` (eager attention), in its
//! components: [`Attention`], [`Mlp`], [`Block`], each with `load` (its own
//! weights, by checkpoint name: `transformer.h.{i}.attn.c_attn.weight`,
//! `Conv1D` weights stored `[in, out]`; checkpoints without the
//! `transformer.` prefix load too) and `forward`.
//!
//! Hook points: the tables below, in forward order (`P` =
//! `transformer.h.{i}`). `P.attn.attn_dropout` exists in transformers but
//! its forward is never called (eager attention uses the functional
//! dropout), so it is not a hook point here either.

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::cache::{KvCache, with_cache};
use super::error::ModelError;
use super::hook_site::{HookSite, fire};
use super::layers::{Conv1D, CorePoints, Par, Params, attention};
use super::loader::Loader;
use super::norm::{Norm, NormPoints};
use super::pack::{Pack, PackedSite};
use super::points::{Dims, PointInfo, hook_points};
use super::shard::{Shard, TpComm, embed};
use super::stage::{
    Head, HeadPoints, PreNormPoints, Step, finish, masks, pre_norm_block, prologue,
};
use super::weights::Weights;

/// `config.json` of a GPT-2 checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: i64,
    #[serde(alias = "max_position_embeddings")]
    pub n_positions: i64,
    #[serde(alias = "hidden_size")]
    pub n_embd: i64,
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: i64,
    #[serde(alias = "num_attention_heads")]
    pub n_head: i64,
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu_new".into()
}
fn yes() -> bool {
    true
}

hook_points! {
    /// Before the blocks (first stage).
    struct EmbedPoints {
        wte: "transformer.wte", "hook_embed", [B, S, D];
        wpe: "transformer.wpe", "", [One, S, D];
        pos_embed: "transformer.hook_pos_embed", "hook_pos_embed", [B, S, D];
        drop: "transformer.drop", "", [B, S, D];
    }
}

hook_points! {
    /// One block, under `transformer.h.{i}` (aliases under `blocks.{i}`).
    struct BlockPoints {
        resid_pre: "hook_resid_pre", "hook_resid_pre", [B, S, D];
        ln_1_scale: "ln_1.hook_scale", "ln1.hook_scale", [B, S, One];
        ln_1_normalized: "ln_1.hook_normalized", "ln1.hook_normalized", [B, S, D];
        ln_1: "ln_1", "", [B, S, D];
        c_attn: "attn.c_attn", "", [B, S, D3], split(2, 3);
        q: "attn.hook_q", "attn.hook_q", [B, S, H, Dh], split(2, 1);
        k: "attn.hook_k", "attn.hook_k", [B, S, H, Dh], split(2, 1);
        v: "attn.hook_v", "attn.hook_v", [B, S, H, Dh], split(2, 1);
        scores: "attn.hook_attn_scores", "attn.hook_attn_scores", [B, H, S, S], split(1, 1);
        pattern: "attn.hook_pattern", "attn.hook_pattern", [B, H, S, S], split(1, 1);
        z: "attn.hook_z", "attn.hook_z", [B, S, H, Dh], split(2, 1);
        attn_c_proj: "attn.c_proj", "", [B, S, D];
        resid_dropout: "attn.resid_dropout", "", [B, S, D];
        attn: "attn", "hook_attn_out", [B, S, D];
        resid_mid: "hook_resid_mid", "hook_resid_mid", [B, S, D];
        ln_2_scale: "ln_2.hook_scale", "ln2.hook_scale", [B, S, One];
        ln_2_normalized: "ln_2.hook_normalized", "ln2.hook_normalized", [B, S, D];
        ln_2: "ln_2", "", [B, S, D];
        c_fc: "mlp.c_fc", "mlp.hook_pre", [B, S, I], split(2, 1);
        act: "mlp.act", "mlp.hook_post", [B, S, I], split(2, 1);
        mlp_c_proj: "mlp.c_proj", "", [B, S, D];
        mlp_dropout: "mlp.dropout", "", [B, S, D];
        mlp: "mlp", "hook_mlp_out", [B, S, D];
        block: "", "hook_resid_post", [B, S, D];
    }
}

hook_points! {
    /// After the blocks (last stage).
    struct LastPoints {
        ln_f_scale: "transformer.ln_f.hook_scale", "ln_final.hook_scale", [B, S, One];
        ln_f_normalized: "transformer.ln_f.hook_normalized", "ln_final.hook_normalized", [B, S, D];
        ln_f: "transformer.ln_f", "unembed.hook_in", [B, S, D];
        lm_head: "lm_head", "unembed.hook_out|logits", [B, S, V], split(2, 1);
    }
}

/// `GPT2Attention`: fused q | k | v (`c_attn`, column-parallel by head),
/// the attention core, the output projection (`c_proj`, row-parallel).
struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    /// Heads on this rank, head width, score scaling.
    heads: i64,
    head_dim: i64,
    scaling: f64,
}

impl Attention {
    fn load(lb: &Loader, c: &Gpt2Config, layer: i64) -> Result<Attention, ModelError> {
        let d = c.n_embd;
        let head_dim = d / c.n_head;
        let mut scaling = if c.scale_attn_weights {
            (head_dim as f64).powf(-0.5)
        } else {
            1.0
        };
        if c.scale_attn_by_inverse_layer_idx {
            scaling /= (layer + 1) as f64;
        }
        Ok(Attention {
            c_attn: Conv1D::load(lb, "c_attn", d, 3 * d, 3, Par::Column)?,
            c_proj: Conv1D::load(lb, "c_proj", d, d, 1, Par::Row)?,
            heads: c.n_head / lb.shard.tp_size,
            head_dim,
            scaling,
        })
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
        let qkv = st.unpack(self.c_attn.forward(&h));
        let qkv = fire(st.hooks, &n.c_attn, qkv)?;
        let parts = qkv.split(nh * hd, 2);
        let q = fire(st.hooks, &n.q, parts[0].view([b, s, nh, hd]))?;
        let k = fire(st.hooks, &n.k, parts[1].view([b, s, nh, hd]))?;
        let v = fire(st.hooks, &n.v, parts[2].view([b, s, nh, hd]))?;
        let (q, k, v) = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));
        let (k, v) = with_cache(&mut st.cache, layer, k, v);
        let core = CorePoints {
            scores: &n.scores,
            pattern: &n.pattern,
        };
        let z = attention(
            &q,
            &k,
            &v,
            self.scaling,
            &st.mask,
            st.explicit,
            st.hooks,
            &core,
        )?;
        let z = fire(st.hooks, &n.z, z.transpose(1, 2).contiguous())?;
        let out = self
            .c_proj
            .forward_tp(&st.pack(z.reshape([b, s, nh * hd])), Par::Row, st.tp)?;
        let out = fire(st.hooks, &n.attn_c_proj, out)?;
        fire(st.hooks, &n.resid_dropout, out)
    }
}

/// `GPT2MLP`: `c_fc` (column-parallel), `gelu_new`, `c_proj` (row-parallel).
struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
}

impl Mlp {
    fn load(lb: &Loader, c: &Gpt2Config) -> Result<Mlp, ModelError> {
        let (d, inner) = (c.n_embd, c.n_inner.unwrap_or(4 * c.n_embd));
        Ok(Mlp {
            c_fc: Conv1D::load(lb, "c_fc", d, inner, 1, Par::Column)?,
            c_proj: Conv1D::load(lb, "c_proj", inner, d, 1, Par::Row)?,
        })
    }

    fn forward(&self, h: Tensor, st: &mut Step<'_>, n: &BlockPoints) -> Result<Tensor, ModelError> {
        let h = st.tp.copy_to_parallel(h)?;
        let h = fire(st.hooks, &n.c_fc, self.c_fc.forward(&h))?;
        let h = fire(st.hooks, &n.act, h.gelu("tanh"))?;
        let h = self.c_proj.forward_tp(&h, Par::Row, st.tp)?;
        let h = fire(st.hooks, &n.mlp_c_proj, h)?;
        fire(st.hooks, &n.mlp_dropout, h)
    }
}

/// `GPT2Block`: pre-norm attention and MLP, each added to the residual.
struct Block {
    ln_1: Norm,
    attn: Attention,
    ln_2: Norm,
    mlp: Mlp,
    names: BlockPoints,
}

impl Block {
    fn load(lb: &Loader, c: &Gpt2Config, layer: i64) -> Result<Block, ModelError> {
        let (d, eps) = (c.n_embd, c.layer_norm_epsilon);
        Ok(Block {
            ln_1: Norm::layer_norm(&lb.pp("ln_1"), d, eps)?,
            attn: Attention::load(&lb.pp("attn"), c, layer)?,
            ln_2: Norm::layer_norm(&lb.pp("ln_2"), d, eps)?,
            mlp: Mlp::load(&lb.pp("mlp"), c)?,
            names: BlockPoints::new(&format!("transformer.h.{layer}")),
        })
    }

    fn forward(&self, x: Tensor, st: &mut Step<'_>, layer: usize) -> Result<Tensor, ModelError> {
        let n = &self.names;
        let points = PreNormPoints {
            resid_pre: &n.resid_pre,
            ln1: NormPoints {
                scale: &n.ln_1_scale,
                normalized: &n.ln_1_normalized,
            },
            ln1_out: &n.ln_1,
            attn: &n.attn,
            resid_mid: &n.resid_mid,
            ln2: NormPoints {
                scale: &n.ln_2_scale,
                normalized: &n.ln_2_normalized,
            },
            ln2_out: &n.ln_2,
            mlp: &n.mlp,
            resid_post: &n.block,
        };
        pre_norm_block(
            x,
            st,
            &points,
            (&self.ln_1, &self.ln_2),
            |h, st| self.attn.forward(h, st, n, layer),
            |h, st| self.mlp.forward(h, st, n),
        )
    }

    fn release(&self) {
        for w in [
            &self.attn.c_attn.w,
            &self.attn.c_proj.w,
            &self.mlp.c_fc.w,
            &self.mlp.c_proj.w,
        ] {
            w.release();
        }
    }

    fn parameters(&self, p: &mut Params) {
        let n = &self.names.block;
        p.norm(&format!("{n}.ln_1"), &self.ln_1);
        p.conv1d(&format!("{n}.attn.c_attn"), &self.attn.c_attn);
        p.conv1d(&format!("{n}.attn.c_proj"), &self.attn.c_proj);
        p.norm(&format!("{n}.ln_2"), &self.ln_2);
        p.conv1d(&format!("{n}.mlp.c_fc"), &self.mlp.c_fc);
        p.conv1d(&format!("{n}.mlp.c_proj"), &self.mlp.c_proj);
    }
}

/// A loaded GPT-2 (or one rank's shard of it: see [`Shard`]).
pub struct Gpt2 {
    pub config: Gpt2Config,
    shard: Shard,
    /// This rank's rows of the token embedding (first stage, or the last
    /// one when tied to the LM head), starting at vocabulary row `vocab_offset`.
    wte: Option<Tensor>,
    vocab_offset: i64,
    wpe: Option<Tensor>,
    blocks: Vec<Block>,
    pub(crate) head: Option<Head>,
    kind: Kind,
    device: Device,
}

fn check_config(c: &Gpt2Config) -> Result<(), ModelError> {
    let bad = |message: String| {
        Err(ModelError::Config {
            file: "config.json".into(),
            message,
        })
    };
    if c.activation_function != "gelu_new" && c.activation_function != "gelu_pytorch_tanh" {
        return bad(format!(
            "GPT-2 activation {:?} is not supported (gelu_new is)",
            c.activation_function
        ));
    }
    if c.n_head <= 0 || c.n_embd % c.n_head != 0 {
        return bad(format!(
            "n_embd {} is not divisible by n_head {}",
            c.n_embd, c.n_head
        ));
    }
    Ok(())
}

impl Gpt2 {
    pub fn load(
        config: Gpt2Config,
        w: &Weights,
        kind: Kind,
        device: Device,
    ) -> Result<Gpt2, ModelError> {
        Self::load_shard(config, w, kind, device, &Shard::FULL)
    }

    /// Load the part of the model `shard` runs: its pipeline stage's layers,
    /// and of each tensor-parallel weight only this rank's slice.
    pub fn load_shard(
        config: Gpt2Config,
        w: &Weights,
        kind: Kind,
        device: Device,
        shard: &Shard,
    ) -> Result<Gpt2, ModelError> {
        check_config(&config)?;
        shard.check(&[("attention heads", config.n_head)], config.n_layer)?;
        let root = Loader::new(w, shard, kind, device, "GPT-2");
        let lb = if w.contains("transformer.wte.weight") {
            root.pp("transformer")
        } else {
            root.clone()
        };
        let blocks = shard
            .layers(config.n_layer)
            .map(|i| Block::load(&lb.pp(format!("h.{i}")), &config, i))
            .collect::<Result<Vec<_>, _>>()?;
        let (v, d) = (config.vocab_size, config.n_embd);
        let tied = config.tie_word_embeddings || !w.contains("lm_head.weight");
        let (vocab_offset, wte) = if shard.first_stage() || (shard.last_stage() && tied) {
            let (o, t) = lb.vocab_rows("wte.weight", v, d)?;
            (o, Some(t))
        } else {
            (shard.part(v).0, None)
        };
        let head = if shard.last_stage() {
            let weight = match &wte {
                Some(e) if tied => e.shallow_clone(),
                _ => root.vocab_rows("lm_head.weight", v, d)?.1,
            };
            let norm = Norm::layer_norm(&lb.pp("ln_f"), d, config.layer_norm_epsilon)?;
            Some(Head::new(norm, weight, tied))
        } else {
            None
        };
        let wpe = if shard.first_stage() {
            Some(lb.get("wpe.weight", &[config.n_positions, d])?)
        } else {
            None
        };
        Ok(Gpt2 {
            wte: if shard.first_stage() || tied {
                wte
            } else {
                None
            },
            wpe,
            vocab_offset,
            head,
            blocks,
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

    /// This rank's parameters, named as in the checkpoint (`transformer.`
    /// prefix; a tied LM head is the embedding, listed once).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut p = Params::default();
        if let Some(w) = &self.wte {
            p.add("transformer.wte.weight", w);
        }
        if let Some(w) = &self.wpe {
            p.add("transformer.wpe.weight", w);
        }
        for b in &self.blocks {
            b.parameters(&mut p);
        }
        if let Some(h) = &self.head {
            let tied = self.config.tie_word_embeddings;
            h.parameters(
                &mut p,
                "transformer.ln_f",
                "transformer.wte.weight",
                tied,
                self.wte.as_ref(),
            );
        }
        p.0
    }

    /// Drop the plain weights `parameters` materialised.
    pub fn release_parameters(&self) {
        self.blocks.iter().for_each(Block::release);
        if let Some(h) = &self.head {
            h.weight.release();
        }
    }

    /// The token and position embeddings of the first stage.
    fn embed(&self, ids: &Tensor, st: &mut Step<'_>) -> Result<Tensor, ModelError> {
        let (Some(wte), Some(wpe)) = (&self.wte, &self.wpe) else {
            return Err(ModelError::Internal(
                "first stage without embeddings".into(),
            ));
        };
        let n = EmbedPoints::new("");
        let ids = ids.to_device(self.device);
        let tok = fire(
            st.hooks,
            &n.wte,
            embed(wte, &ids, self.vocab_offset, st.tp)?,
        )?;
        let pos = Tensor::embedding(wpe, &st.positions, -1, false, false);
        let pos = fire(st.hooks, &n.wpe, pos)?;
        // TransformerLens' hook_pos_embed is per batch row (the module's
        // output is one row, broadcast, unless the batch is padded).
        let pos = if st.hooks.active(&n.pos_embed) {
            let rows = pos.expand([st.b, st.s, self.config.n_embd], false);
            st.hooks.fire(&n.pos_embed, rows.contiguous())?
        } else {
            pos
        };
        fire(st.hooks, &n.drop, tok + pos)
    }

    /// This rank's part of the forward: from the token ids (first pipeline
    /// stage) or the previous stage's `hidden` state, through this stage's
    /// blocks, to the logits (last stage) or the hidden state to send on.
    /// With a `cache`, the tokens continue the cached positions.
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
            c.n_embd,
            self.kind,
            self.device,
            Some(c.n_positions),
        )?;
        let (mask, positions, explicit) = masks(valid, (b, s, start), None, self.device)?;
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
            rope: None,
            pack,
        };
        let x = match hidden {
            Some(h) => h,
            None => self.embed(input_ids, &mut st)?,
        };
        let mut x = st.pack(x);
        for (li, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(x, &mut st, li)?;
        }
        let n = LastPoints::new("");
        let points = HeadPoints {
            norm: NormPoints {
                scale: &n.ln_f_scale,
                normalized: &n.ln_f_normalized,
            },
            normed: &n.ln_f,
            logits: &n.lm_head,
        };
        finish(x, st, self.head.as_ref(), &points)
    }

    /// Every hook point with its shape for `batch` × `seq` tokens, in forward
    /// order, with its TransformerLens alias.
    pub fn points(&self, batch: i64, seq: i64) -> Vec<PointInfo> {
        let c = &self.config;
        let dims = Dims {
            batch,
            seq,
            width: c.n_embd,
            heads: c.n_head,
            kv_heads: c.n_head,
            head_dim: c.n_embd / c.n_head,
            inner: c.n_inner.unwrap_or(4 * c.n_embd),
            vocab: c.vocab_size,
        };
        let mut v = EmbedPoints::infos("", "", &dims);
        for i in 0..c.n_layer {
            v.extend(BlockPoints::infos(
                &format!("transformer.h.{i}"),
                &format!("blocks.{i}"),
                &dims,
            ));
        }
        v.extend(LastPoints::infos("", "", &dims));
        v
    }
}
