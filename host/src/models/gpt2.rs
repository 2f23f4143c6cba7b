//! GPT-2, as `transformers`' `modeling_gpt2.py` (eager attention), with hook
//! points. Weight names as in the checkpoint (`transformer.h.{i}.attn.c_attn.weight`,
//! Conv1D weights stored `[in, out]`); checkpoints without the `transformer.`
//! prefix load too.
//!
//! Hook points of block `i` (`P = transformer.h.{i}`), in forward order:
//! `P.hook_resid_pre` (block input), `P.ln_1`, `P.attn.c_attn`,
//! `P.attn.hook_q` / `hook_k` / `hook_v` (`[batch, pos, head, d_head]`),
//! `P.attn.hook_pattern` (post-softmax, `[batch, head, query, key]`),
//! `P.attn.hook_z` (`[batch, pos, head, d_head]`), `P.attn.c_proj`,
//! `P.attn.resid_dropout`, `P.attn`
//! (attention output), `P.hook_resid_mid`, `P.ln_2`, `P.mlp.c_fc`, `P.mlp.act`
//! (MLP hidden activation), `P.mlp.c_proj`, `P.mlp.dropout`, `P.mlp`, `P`
//! (block output). `P.attn.attn_dropout` exists in transformers but its
//! forward is never called (eager attention uses the functional dropout), so
//! it is not a hook point here either.
//! Around the blocks: `transformer.wte`, `transformer.wpe`, `transformer.drop`,
//! `transformer.ln_f`, `lm_head` (logits).

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::cache::{KvCache, with_cache};
use super::error::ModelError;
use super::hook_site::{HookSite, fire};
use super::layers::{LayerNorm, Params, attention, causal_mask};
use super::points::PointInfo;
use super::shard::{Shard, SingleRank, TpComm, embed, lm_head, reduce_bias, stage_input};
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

struct Linear {
    /// `[in, out]` as stored by Conv1D.
    w: Tensor,
    b: Tensor,
    /// The same in oneDNN's layout (f32 on CPU), see `onednn`.
    packed: Option<super::onednn::Packed>,
}

impl Linear {
    fn new(w: Tensor, b: Tensor) -> Linear {
        let packed = super::onednn::pack(&w.tr(), Some(&b));
        Linear { w, b, packed }
    }

    /// `b + x @ w` in one `addmm`, as Conv1D does (no separate bias pass).
    fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(p) = &self.packed
            && !self.w.requires_grad()
            && let Some(y) = super::onednn::linear(x, p)
        {
            return y;
        }
        let mut shape = x.size();
        let inner = shape.pop().unwrap_or(0);
        shape.push(self.w.size()[1]);
        self.b
            .addmm(&x.reshape([-1, inner]), &self.w)
            .view(shape.as_slice())
    }

    /// `x @ w` without the bias (a row-parallel part, summed across ranks).
    fn partial(&self, x: &Tensor) -> Tensor {
        if let Some(p) = &self.packed
            && !self.w.requires_grad()
            && let Some(y) = super::onednn::matmul(x, p)
        {
            return y;
        }
        x.matmul(&self.w)
    }
}

/// Canonical names of one block's hook points, built once.
struct BlockNames {
    resid_pre: String,
    ln_1: String,
    c_attn: String,
    q: String,
    k: String,
    v: String,
    pattern: String,
    z: String,
    attn_c_proj: String,
    resid_dropout: String,
    mlp_dropout: String,
    attn: String,
    resid_mid: String,
    ln_2: String,
    c_fc: String,
    act: String,
    mlp_c_proj: String,
    mlp: String,
    block: String,
}

impl BlockNames {
    fn new(i: i64) -> Self {
        let p = format!("transformer.h.{i}");
        BlockNames {
            resid_pre: format!("{p}.hook_resid_pre"),
            ln_1: format!("{p}.ln_1"),
            c_attn: format!("{p}.attn.c_attn"),
            q: format!("{p}.attn.hook_q"),
            k: format!("{p}.attn.hook_k"),
            v: format!("{p}.attn.hook_v"),
            pattern: format!("{p}.attn.hook_pattern"),
            z: format!("{p}.attn.hook_z"),
            attn_c_proj: format!("{p}.attn.c_proj"),
            resid_dropout: format!("{p}.attn.resid_dropout"),
            mlp_dropout: format!("{p}.mlp.dropout"),
            attn: format!("{p}.attn"),
            resid_mid: format!("{p}.hook_resid_mid"),
            ln_2: format!("{p}.ln_2"),
            c_fc: format!("{p}.mlp.c_fc"),
            act: format!("{p}.mlp.act"),
            mlp_c_proj: format!("{p}.mlp.c_proj"),
            mlp: format!("{p}.mlp"),
            block: p,
        }
    }
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_c_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_c_proj: Linear,
    names: BlockNames,
    scaling: f64,
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
    ln_f: Option<LayerNorm>,
    lm_head: Option<Tensor>,
    /// The LM head in oneDNN's layout (f32 on CPU).
    head_packed: Option<super::onednn::Packed>,
    kind: Kind,
    device: Device,
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
        if config.activation_function != "gelu_new"
            && config.activation_function != "gelu_pytorch_tanh"
        {
            return Err(ModelError::Config {
                file: "config.json".into(),
                message: format!(
                    "GPT-2 activation {:?} is not supported (gelu_new is)",
                    config.activation_function
                ),
            });
        }
        if config.n_head <= 0 || config.n_embd % config.n_head != 0 {
            return Err(ModelError::Config {
                file: "config.json".into(),
                message: format!(
                    "n_embd {} is not divisible by n_head {}",
                    config.n_embd, config.n_head
                ),
            });
        }
        shard.check(&[("attention heads", config.n_head)], config.n_layer)?;
        let prefix = if w.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let d = config.n_embd;
        let inner = config.n_inner.unwrap_or(4 * d);
        let full = shard.tp_size == 1;
        let get = |name: &str, shape: &[i64]| {
            w.get_shaped(&format!("{prefix}{name}"), shape, kind, device, "GPT-2")
        };
        // Part of dimension `dim` of a weight stored with shape `shape`.
        let part = |name: &str, shape: &[i64], dim: usize, parts: &[(i64, i64)]| {
            w.get_parts(
                &format!("{prefix}{name}"),
                shape,
                dim,
                parts,
                kind,
                device,
                "GPT-2",
            )
        };
        let ln = |name: &str| -> Result<LayerNorm, ModelError> {
            Ok(LayerNorm {
                w: get(&format!("{name}.weight"), &[d])?,
                b: get(&format!("{name}.bias"), &[d])?,
                eps: config.layer_norm_epsilon,
            })
        };
        // Conv1D weights are [in, out]: column-parallel splits `out` (dim 1,
        // per section), row-parallel splits `in` (dim 0; the bias is whole).
        let column = |name: &str, i: i64, o: i64, sections: i64| -> Result<Linear, ModelError> {
            if full {
                return Ok(Linear::new(
                    get(&format!("{name}.weight"), &[i, o])?,
                    get(&format!("{name}.bias"), &[o])?,
                ));
            }
            let sec = o / sections;
            let (s, l) = shard.part(sec);
            let parts: Vec<(i64, i64)> = (0..sections).map(|g| (g * sec + s, l)).collect();
            Ok(Linear::new(
                part(&format!("{name}.weight"), &[i, o], 1, &parts)?,
                part(&format!("{name}.bias"), &[o], 0, &parts)?,
            ))
        };
        let row = |name: &str, i: i64, o: i64| -> Result<Linear, ModelError> {
            if full {
                return Ok(Linear::new(
                    get(&format!("{name}.weight"), &[i, o])?,
                    get(&format!("{name}.bias"), &[o])?,
                ));
            }
            Ok(Linear::new(
                part(&format!("{name}.weight"), &[i, o], 0, &[shard.part(i)])?,
                get(&format!("{name}.bias"), &[o])?,
            ))
        };
        let head_dim = d / config.n_head;
        let mut blocks = Vec::new();
        for i in shard.layers(config.n_layer) {
            let p = format!("h.{i}");
            let mut scaling = if config.scale_attn_weights {
                (head_dim as f64).powf(-0.5)
            } else {
                1.0
            };
            if config.scale_attn_by_inverse_layer_idx {
                scaling /= (i + 1) as f64;
            }
            blocks.push(Block {
                ln_1: ln(&format!("{p}.ln_1"))?,
                c_attn: column(&format!("{p}.attn.c_attn"), d, 3 * d, 3)?,
                attn_c_proj: row(&format!("{p}.attn.c_proj"), d, d)?,
                ln_2: ln(&format!("{p}.ln_2"))?,
                c_fc: column(&format!("{p}.mlp.c_fc"), d, inner, 1)?,
                mlp_c_proj: row(&format!("{p}.mlp.c_proj"), inner, d)?,
                names: BlockNames::new(i),
                scaling,
            });
        }
        let v = config.vocab_size;
        let (vocab_offset, vocab_rows) = shard.part(v);
        let tied = config.tie_word_embeddings || !w.contains("lm_head.weight");
        let wte = if shard.first_stage() || (shard.last_stage() && tied) {
            Some(part(
                "wte.weight",
                &[v, d],
                0,
                &[(vocab_offset, vocab_rows)],
            )?)
        } else {
            None
        };
        let lm_head = match (shard.last_stage(), tied) {
            (false, _) => None,
            (true, true) => wte.as_ref().map(Tensor::shallow_clone),
            (true, false) => Some(w.get_part(
                "lm_head.weight",
                &[v, d],
                0,
                vocab_offset,
                vocab_rows,
                kind,
                device,
                "GPT-2 lm_head",
            )?),
        };
        Ok(Gpt2 {
            wpe: if shard.first_stage() {
                Some(get("wpe.weight", &[config.n_positions, d])?)
            } else {
                None
            },
            wte,
            vocab_offset,
            ln_f: if shard.last_stage() {
                Some(ln("ln_f")?)
            } else {
                None
            },
            head_packed: lm_head.as_ref().and_then(|h| super::onednn::pack(h, None)),
            lm_head,
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
            let n = &b.names.block;
            p.layer_norm(&format!("{n}.ln_1"), &b.ln_1);
            for (name, l) in [
                ("attn.c_attn", &b.c_attn),
                ("attn.c_proj", &b.attn_c_proj),
                ("mlp.c_fc", &b.c_fc),
                ("mlp.c_proj", &b.mlp_c_proj),
            ] {
                p.add(format!("{n}.{name}.weight"), &l.w);
                p.add(format!("{n}.{name}.bias"), &l.b);
            }
            p.layer_norm(&format!("{n}.ln_2"), &b.ln_2);
        }
        if let Some(l) = &self.ln_f {
            p.layer_norm("transformer.ln_f", l);
        }
        p.head("lm_head.weight", self.lm_head.as_ref(), self.wte.as_ref());
        p.0
    }

    /// Logits `[batch, seq, vocab]` for `input_ids` `[batch, seq]` (int64),
    /// firing every hook point through `hooks`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        hooks: &mut dyn HookSite,
    ) -> Result<Tensor, ModelError> {
        self.forward_stage(input_ids, None, hooks, &SingleRank, None)
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
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor, ModelError> {
        let size = input_ids.size();
        let [b, s] = size[..] else {
            return Err(ModelError::Input(format!(
                "input_ids must be [batch, seq], got {size:?}"
            )));
        };
        let start = cache.as_ref().map_or(0, |c| c.len());
        if start + s > self.config.n_positions {
            return Err(ModelError::Input(format!(
                "sequence of {} tokens exceeds the model's {} positions",
                start + s,
                self.config.n_positions
            )));
        }
        let d = self.config.n_embd;
        let tp_size = self.shard.tp_size;
        let nh = self.config.n_head / tp_size;
        let hd = d / self.config.n_head;
        let dl = nh * hd;
        let full = tp_size == 1;
        let mut x = match stage_input(&self.shard, hidden, b, s, d, self.kind)? {
            Some(h) => h.to_device(self.device),
            None => {
                let (Some(wte), Some(wpe)) = (&self.wte, &self.wpe) else {
                    return Err(ModelError::Internal(
                        "first stage without embeddings".into(),
                    ));
                };
                let ids = input_ids.to_device(self.device);
                let tok = fire(
                    hooks,
                    "transformer.wte",
                    embed(wte, &ids, self.vocab_offset, tp)?,
                )?;
                let pos_ids =
                    Tensor::arange_start(start, start + s, (Kind::Int64, self.device)).unsqueeze(0);
                let pos = fire(
                    hooks,
                    "transformer.wpe",
                    Tensor::embedding(wpe, &pos_ids, -1, false, false),
                )?;
                fire(hooks, "transformer.drop", tok + pos)?
            }
        };
        // Causal mask, additive, as HF builds it.
        let mask = causal_mask(start, s, None, self.device);
        for (li, blk) in self.blocks.iter().enumerate() {
            let n = &blk.names;
            let resid_pre = fire(hooks, &n.resid_pre, x)?;
            let h = fire(hooks, &n.ln_1, blk.ln_1.forward(&resid_pre))?;
            let h = tp.copy_to_parallel(h)?;
            let qkv = fire(hooks, &n.c_attn, blk.c_attn.forward(&h))?;
            let parts = qkv.split(dl, 2);
            let q = fire(hooks, &n.q, parts[0].view([b, s, nh, hd]))?;
            let k = fire(hooks, &n.k, parts[1].view([b, s, nh, hd]))?;
            let v = fire(hooks, &n.v, parts[2].view([b, s, nh, hd]))?;
            let (q, k, v) = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));
            let (k, v) = with_cache(&mut cache, li, k, v);
            let z = attention(
                &q,
                &k,
                &v,
                blk.scaling,
                &mask,
                start > 0,
                hooks,
                &[&n.pattern],
            )?;
            let z = fire(hooks, &n.z, z.transpose(1, 2))?;
            let z = z.reshape([b, s, dl]);
            let attn = if full {
                blk.attn_c_proj.forward(&z)
            } else {
                reduce_bias(blk.attn_c_proj.partial(&z), Some(&blk.attn_c_proj.b), tp)?
            };
            let attn = fire(hooks, &n.attn_c_proj, attn)?;
            let attn = fire(hooks, &n.resid_dropout, attn)?;
            let attn = fire(hooks, &n.attn, attn)?;
            let resid_mid = fire(hooks, &n.resid_mid, resid_pre + attn)?;
            let h = fire(hooks, &n.ln_2, blk.ln_2.forward(&resid_mid))?;
            let h = tp.copy_to_parallel(h)?;
            let h = fire(hooks, &n.c_fc, blk.c_fc.forward(&h))?;
            let h = fire(hooks, &n.act, h.gelu("tanh"))?;
            let h = if full {
                blk.mlp_c_proj.forward(&h)
            } else {
                reduce_bias(blk.mlp_c_proj.partial(&h), Some(&blk.mlp_c_proj.b), tp)?
            };
            let h = fire(hooks, &n.mlp_c_proj, h)?;
            let h = fire(hooks, &n.mlp_dropout, h)?;
            let mlp = fire(hooks, &n.mlp, h)?;
            x = fire(hooks, &n.block, resid_mid + mlp)?;
        }
        if let Some(c) = cache {
            c.advance(s);
        }
        let (Some(ln_f), Some(head)) = (&self.ln_f, &self.lm_head) else {
            return Ok(x);
        };
        let x = fire(hooks, "transformer.ln_f", ln_f.forward(&x))?;
        let x = tp.copy_to_parallel(x)?;
        fire(
            hooks,
            "lm_head",
            lm_head(&x, head, self.head_packed.as_ref()),
        )
    }

    /// Every hook point with its shape for `batch` × `seq` tokens, in forward
    /// order, with its TransformerLens-style alias.
    pub fn points(&self, batch: i64, seq: i64) -> Vec<PointInfo> {
        let c = &self.config;
        let (d, nh) = (c.n_embd, c.n_head);
        let hd = d / nh;
        let inner = c.n_inner.unwrap_or(4 * d);
        let bsd = vec![batch, seq, d];
        let mut v = vec![
            PointInfo::new("transformer.wte", bsd.clone(), "hook_embed"),
            PointInfo::new("transformer.wpe", vec![1, seq, d], "hook_pos_embed"),
            PointInfo::new("transformer.drop", bsd.clone(), ""),
        ];
        for i in 0..c.n_layer {
            let n = BlockNames::new(i);
            let tl = format!("blocks.{i}");
            let heads = vec![batch, seq, nh, hd];
            v.extend([
                PointInfo::new(&n.resid_pre, bsd.clone(), &format!("{tl}.hook_resid_pre")),
                PointInfo::new(&n.ln_1, bsd.clone(), &format!("{tl}.ln1.hook_normalized")),
                PointInfo::new(&n.c_attn, vec![batch, seq, 3 * d], "").split_groups(2, 3),
                PointInfo::new(&n.q, heads.clone(), &format!("{tl}.attn.hook_q")).split(2),
                PointInfo::new(&n.k, heads.clone(), &format!("{tl}.attn.hook_k")).split(2),
                PointInfo::new(&n.v, heads.clone(), &format!("{tl}.attn.hook_v")).split(2),
                PointInfo::new(
                    &n.pattern,
                    vec![batch, nh, seq, seq],
                    &format!("{tl}.attn.hook_pattern"),
                )
                .split(1),
                PointInfo::new(&n.z, heads, &format!("{tl}.attn.hook_z")).split(2),
                PointInfo::new(&n.attn_c_proj, bsd.clone(), ""),
                PointInfo::new(&n.resid_dropout, bsd.clone(), ""),
                PointInfo::new(&n.attn, bsd.clone(), &format!("{tl}.hook_attn_out")),
                PointInfo::new(&n.resid_mid, bsd.clone(), &format!("{tl}.hook_resid_mid")),
                PointInfo::new(&n.ln_2, bsd.clone(), &format!("{tl}.ln2.hook_normalized")),
                PointInfo::new(
                    &n.c_fc,
                    vec![batch, seq, inner],
                    &format!("{tl}.mlp.hook_pre"),
                )
                .split(2),
                PointInfo::new(
                    &n.act,
                    vec![batch, seq, inner],
                    &format!("{tl}.mlp.hook_post"),
                )
                .split(2),
                PointInfo::new(&n.mlp_c_proj, bsd.clone(), ""),
                PointInfo::new(&n.mlp_dropout, bsd.clone(), ""),
                PointInfo::new(&n.mlp, bsd.clone(), &format!("{tl}.hook_mlp_out")),
                PointInfo::new(&n.block, bsd.clone(), &format!("{tl}.hook_resid_post")),
            ]);
        }
        v.push(PointInfo::new(
            "transformer.ln_f",
            bsd,
            "ln_final.hook_normalized",
        ));
        v.push(PointInfo::new("lm_head", vec![batch, seq, c.vocab_size], "logits").split(2));
        v
    }
}
