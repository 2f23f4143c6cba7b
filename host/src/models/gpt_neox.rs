//! GPT-NeoX (Pythia), as `transformers`' `modeling_gpt_neox.py` (eager
//! attention): fused per-head q/k/v, partial rotary embeddings
//! (`rotary_pct` / `partial_rotary_factor`), parallel residual
//! (`use_parallel_residual`), LayerNorm. Weight names as in the checkpoint;
//! the LM head loads from `embed_out.weight` (transformers 4) or
//! `lm_head.weight` (transformers 5).
//!
//! Hook points of layer `i` (`P = gpt_neox.layers.{i}`): `P.hook_resid_pre`,
//! `P.input_layernorm`, `P.attention.query_key_value`, `P.attention.hook_q` /
//! `hook_k` / `hook_v`, `P.attention.hook_rot_q` / `hook_rot_k`,
//! `P.attention.hook_pattern`, `P.attention.hook_z`, `P.attention.dense`,
//! `P.attention`, `P.hook_resid_mid` (sequential residual only),
//! `P.post_attention_layernorm`, `P.mlp.dense_h_to_4h`, `P.mlp.act`,
//! `P.mlp.dense_4h_to_h`, `P.mlp`, `P.post_attention_dropout` /
//! `P.post_mlp_dropout` (identity in eval, after the attention / MLP
//! outputs), `P`. Around them: `gpt_neox.embed_in`,
//! `gpt_neox.emb_dropout`, `gpt_neox.final_layer_norm`, `lm_head`.

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::cache::{KvCache, with_cache};
use super::error::ModelError;
use super::hook_site::{HookSite, fire};
use super::layers::{
    LayerNorm, Linear, Par, Params, attention, causal_mask, rope_tables, rotate_half,
};
use super::points::PointInfo;
use super::shard::{Shard, SingleRank, TpComm, embed, lm_head, stage_input};
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

struct Names {
    resid_pre: String,
    ln1: String,
    qkv: String,
    q: String,
    k: String,
    v: String,
    rot_q: String,
    rot_k: String,
    pattern: String,
    z: String,
    dense: String,
    post_attn_dropout: String,
    post_mlp_dropout: String,
    attn: String,
    resid_mid: String,
    ln2: String,
    fc_in: String,
    act: String,
    fc_out: String,
    mlp: String,
    block: String,
}

impl Names {
    fn new(i: i64) -> Self {
        let p = format!("gpt_neox.layers.{i}");
        let a = format!("{p}.attention");
        let m = format!("{p}.mlp");
        Names {
            resid_pre: format!("{p}.hook_resid_pre"),
            ln1: format!("{p}.input_layernorm"),
            qkv: format!("{a}.query_key_value"),
            q: format!("{a}.hook_q"),
            k: format!("{a}.hook_k"),
            v: format!("{a}.hook_v"),
            rot_q: format!("{a}.hook_rot_q"),
            rot_k: format!("{a}.hook_rot_k"),
            pattern: format!("{a}.hook_pattern"),
            z: format!("{a}.hook_z"),
            dense: format!("{a}.dense"),
            post_attn_dropout: format!("{p}.post_attention_dropout"),
            post_mlp_dropout: format!("{p}.post_mlp_dropout"),
            resid_mid: format!("{p}.hook_resid_mid"),
            ln2: format!("{p}.post_attention_layernorm"),
            fc_in: format!("{m}.dense_h_to_4h"),
            act: format!("{m}.act"),
            fc_out: format!("{m}.dense_4h_to_h"),
            attn: a,
            mlp: m,
            block: p,
        }
    }
}

struct Layer {
    ln1: LayerNorm,
    qkv: Linear,
    dense: Linear,
    ln2: LayerNorm,
    fc_in: Linear,
    fc_out: Linear,
    names: Names,
}

/// A loaded GPT-NeoX model (or one rank's shard of it: see [`Shard`]).
pub struct GptNeoX {
    pub config: GptNeoXConfig,
    shard: Shard,
    embed: Option<Tensor>,
    vocab_offset: i64,
    layers: Vec<Layer>,
    final_ln: Option<LayerNorm>,
    lm_head: Option<Tensor>,
    /// The LM head in oneDNN's layout (f32 on CPU).
    head_packed: Option<super::onednn::Packed>,
    inv_freq: Tensor,
    kind: Kind,
    device: Device,
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
        if !matches!(
            config.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_fast"
        ) {
            return Err(ModelError::Config {
                file: "config.json".into(),
                message: format!(
                    "activation {:?} is not supported (gelu, gelu_new are)",
                    config.hidden_act
                ),
            });
        }
        if let Some(t) = config
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.as_deref())
            && t != "default"
        {
            return Err(ModelError::Config {
                file: "config.json".into(),
                message: format!("GPT-NeoX rope type {t:?} is not supported (default is)"),
            });
        }
        let (d, inter) = (config.hidden_size, config.intermediate_size);
        shard.check(
            &[("attention heads", config.num_attention_heads)],
            config.num_hidden_layers,
        )?;
        let get = |name: &str, shape: &[i64]| w.get_shaped(name, shape, kind, device, "GPT-NeoX");
        let lin = |name: &str, i: i64, o: i64, bias: bool, par: Par| {
            Linear::load(w, name, i, o, bias, par, shard, kind, device, "GPT-NeoX")
        };
        let ln = |name: &str| -> Result<LayerNorm, ModelError> {
            Ok(LayerNorm {
                w: get(&format!("{name}.weight"), &[d])?,
                b: get(&format!("{name}.bias"), &[d])?,
                eps: config.layer_norm_eps,
            })
        };
        let bias = config.attention_bias;
        let mut layers = Vec::new();
        for i in shard.layers(config.num_hidden_layers) {
            let p = format!("gpt_neox.layers.{i}");
            // query_key_value rows are per head ([head, q|k|v, d_head]): a
            // contiguous run of rows is a run of whole heads.
            layers.push(Layer {
                ln1: ln(&format!("{p}.input_layernorm"))?,
                qkv: lin(
                    &format!("{p}.attention.query_key_value"),
                    d,
                    3 * d,
                    bias,
                    Par::Column,
                )?,
                dense: lin(&format!("{p}.attention.dense"), d, d, bias, Par::Row)?,
                ln2: ln(&format!("{p}.post_attention_layernorm"))?,
                fc_in: lin(
                    &format!("{p}.mlp.dense_h_to_4h"),
                    d,
                    inter,
                    true,
                    Par::Column,
                )?,
                fc_out: lin(&format!("{p}.mlp.dense_4h_to_h"), inter, d, true, Par::Row)?,
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
                "GPT-NeoX",
            )
        };
        let tied = config.tie_word_embeddings;
        let embed = if shard.first_stage() || (shard.last_stage() && tied) {
            Some(rows("gpt_neox.embed_in.weight")?)
        } else {
            None
        };
        let lm_head = match (shard.last_stage(), tied) {
            (false, _) => None,
            (true, true) => embed.as_ref().map(Tensor::shallow_clone),
            (true, false) if w.contains("embed_out.weight") => Some(rows("embed_out.weight")?),
            (true, false) => Some(rows("lm_head.weight")?),
        };

        let dim = config.rotary_ndims();
        let exps = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu))
            .to_kind(Kind::Float)
            / dim as f64;
        let inv_freq = Tensor::pow_scalar(config.rope_theta(), &exps)
            .reciprocal()
            .to_device(device);
        Ok(GptNeoX {
            final_ln: if shard.last_stage() {
                Some(ln("gpt_neox.final_layer_norm")?)
            } else {
                None
            },
            embed: if shard.first_stage() { embed } else { None },
            vocab_offset,
            shard: shard.clone(),
            layers,
            head_packed: lm_head.as_ref().and_then(|h| super::onednn::pack(h, None)),
            lm_head,
            inv_freq,
            config,
            kind,
            device,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    fn act(&self, x: &Tensor) -> Tensor {
        match self.config.hidden_act.as_str() {
            "gelu" => x.gelu("none"),
            _ => x.gelu("tanh"),
        }
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
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
            let n = &l.names.block;
            p.layer_norm(&format!("{n}.input_layernorm"), &l.ln1);
            p.linear(&format!("{n}.attention.query_key_value"), &l.qkv);
            p.linear(&format!("{n}.attention.dense"), &l.dense);
            p.layer_norm(&format!("{n}.post_attention_layernorm"), &l.ln2);
            p.linear(&format!("{n}.mlp.dense_h_to_4h"), &l.fc_in);
            p.linear(&format!("{n}.mlp.dense_4h_to_h"), &l.fc_out);
        }
        if let Some(l) = &self.final_ln {
            p.layer_norm("gpt_neox.final_layer_norm", l);
        }
        if self.config.tie_word_embeddings && self.embed.is_none() {
            if let Some(h) = &self.lm_head {
                p.add("gpt_neox.embed_in.weight", h);
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
        // Rotary width as transformers applies it: the cos/sin width, i.e. twice
        // the number of frequencies (rounds an odd `rotary_ndims` up).
        let rd = 2 * self.inv_freq.size()[0];
        let nh = c.num_attention_heads / self.shard.tp_size;
        let hd = c.head_dim();
        let mut x = match stage_input(&self.shard, hidden, b, s, c.hidden_size, self.kind)? {
            Some(h) => h.to_device(self.device),
            None => {
                let Some(table) = &self.embed else {
                    return Err(ModelError::Internal(
                        "first stage without embeddings".into(),
                    ));
                };
                let ids = input_ids.to_device(self.device);
                let x = fire(
                    hooks,
                    "gpt_neox.embed_in",
                    embed(table, &ids, self.vocab_offset, tp)?,
                )?;
                fire(hooks, "gpt_neox.emb_dropout", x)?
            }
        };
        let (cos, sin) = rope_tables(&self.inv_freq, start, s, self.kind, self.device);
        let rope = |t: &Tensor| -> Tensor {
            let r = t.narrow(3, 0, rd);
            let rest = t.narrow(3, rd, hd - rd);
            Tensor::cat(&[&r * &cos + rotate_half(&r) * &sin, rest], 3)
        };
        let mask = causal_mask(start, s, None, self.device);
        let scaling = (hd as f64).powf(-0.5);
        for (li, l) in self.layers.iter().enumerate() {
            let n = &l.names;
            let resid_pre = fire(hooks, &n.resid_pre, x)?;
            let h = fire(hooks, &n.ln1, l.ln1.forward(&resid_pre))?;
            let h = tp.copy_to_parallel(h)?;
            let qkv = fire(hooks, &n.qkv, l.qkv.forward(&h))?;
            // Per-head fused layout: [b, s, h, 3 * hd] -> q | k | v.
            let parts = qkv.view([b, s, nh, 3 * hd]).chunk(3, -1);
            let q = fire(hooks, &n.q, parts[0].contiguous())?.transpose(1, 2);
            let k = fire(hooks, &n.k, parts[1].contiguous())?.transpose(1, 2);
            let v = fire(hooks, &n.v, parts[2].contiguous())?.transpose(1, 2);
            let q = fire(hooks, &n.rot_q, rope(&q).transpose(1, 2))?.transpose(1, 2);
            let k = fire(hooks, &n.rot_k, rope(&k).transpose(1, 2))?.transpose(1, 2);
            let (k, v) = with_cache(&mut cache, li, k, v);
            let z = attention(&q, &k, &v, scaling, &mask, start > 0, hooks, &[&n.pattern])?;
            let z = fire(hooks, &n.z, z.transpose(1, 2))?;
            let o = l
                .dense
                .forward_tp(&z.reshape([b, s, nh * hd]), Par::Row, tp)?;
            let o = fire(hooks, &n.dense, o)?;
            let attn = fire(hooks, &n.attn, o)?;
            let attn = fire(hooks, &n.post_attn_dropout, attn)?;
            let mlp_in = if c.use_parallel_residual {
                resid_pre.shallow_clone()
            } else {
                fire(hooks, &n.resid_mid, &resid_pre + &attn)?
            };
            let h = fire(hooks, &n.ln2, l.ln2.forward(&mlp_in))?;
            let h = tp.copy_to_parallel(h)?;
            let h = fire(hooks, &n.fc_in, l.fc_in.forward(&h))?;
            let h = fire(hooks, &n.act, self.act(&h))?;
            let h = fire(hooks, &n.fc_out, l.fc_out.forward_tp(&h, Par::Row, tp)?)?;
            let mlp = fire(hooks, &n.mlp, h)?;
            let mlp = fire(hooks, &n.post_mlp_dropout, mlp)?;
            let out = if c.use_parallel_residual {
                mlp + attn + resid_pre
            } else {
                mlp + mlp_in
            };
            x = fire(hooks, &n.block, out)?;
        }
        if let Some(c) = cache {
            c.advance(s);
        }
        let (Some(final_ln), Some(head)) = (&self.final_ln, &self.lm_head) else {
            return Ok(x);
        };
        let x = fire(hooks, "gpt_neox.final_layer_norm", final_ln.forward(&x))?;
        let x = tp.copy_to_parallel(x)?;
        fire(
            hooks,
            "lm_head",
            lm_head(&x, head, self.head_packed.as_ref()),
        )
    }

    pub fn points(&self, batch: i64, seq: i64) -> Vec<PointInfo> {
        let c = &self.config;
        let (d, nh, hd, inter) = (
            c.hidden_size,
            c.num_attention_heads,
            c.head_dim(),
            c.intermediate_size,
        );
        let bsd = vec![batch, seq, d];
        let mut v = vec![
            PointInfo::new("gpt_neox.embed_in", bsd.clone(), "hook_embed"),
            PointInfo::new("gpt_neox.emb_dropout", bsd.clone(), ""),
        ];
        for i in 0..c.num_hidden_layers {
            let n = Names::new(i);
            let tl = format!("blocks.{i}");
            let heads = vec![batch, seq, nh, hd];
            v.extend([
                PointInfo::new(&n.resid_pre, bsd.clone(), &format!("{tl}.hook_resid_pre")),
                PointInfo::new(&n.ln1, bsd.clone(), &format!("{tl}.ln1.hook_normalized")),
                PointInfo::new(&n.qkv, vec![batch, seq, 3 * d], "").split(2),
                PointInfo::new(&n.q, heads.clone(), &format!("{tl}.attn.hook_q")).split(2),
                PointInfo::new(&n.k, heads.clone(), &format!("{tl}.attn.hook_k")).split(2),
                PointInfo::new(&n.v, heads.clone(), &format!("{tl}.attn.hook_v")).split(2),
                PointInfo::new(&n.rot_q, heads.clone(), &format!("{tl}.attn.hook_rot_q")).split(2),
                PointInfo::new(&n.rot_k, heads.clone(), &format!("{tl}.attn.hook_rot_k")).split(2),
                PointInfo::new(
                    &n.pattern,
                    vec![batch, nh, seq, seq],
                    &format!("{tl}.attn.hook_pattern"),
                )
                .split(1),
                PointInfo::new(&n.z, heads, &format!("{tl}.attn.hook_z")).split(2),
                PointInfo::new(&n.dense, bsd.clone(), ""),
                PointInfo::new(&n.attn, bsd.clone(), &format!("{tl}.hook_attn_out")),
                PointInfo::new(&n.post_attn_dropout, bsd.clone(), ""),
            ]);
            if !c.use_parallel_residual {
                v.push(PointInfo::new(
                    &n.resid_mid,
                    bsd.clone(),
                    &format!("{tl}.hook_resid_mid"),
                ));
            }
            v.extend([
                PointInfo::new(&n.ln2, bsd.clone(), &format!("{tl}.ln2.hook_normalized")),
                PointInfo::new(
                    &n.fc_in,
                    vec![batch, seq, inter],
                    &format!("{tl}.mlp.hook_pre"),
                )
                .split(2),
                PointInfo::new(
                    &n.act,
                    vec![batch, seq, inter],
                    &format!("{tl}.mlp.hook_post"),
                )
                .split(2),
                PointInfo::new(&n.fc_out, bsd.clone(), ""),
                PointInfo::new(&n.mlp, bsd.clone(), &format!("{tl}.hook_mlp_out")),
                PointInfo::new(&n.post_mlp_dropout, bsd.clone(), ""),
                PointInfo::new(&n.block, bsd.clone(), &format!("{tl}.hook_resid_post")),
            ]);
        }
        v.push(PointInfo::new(
            "gpt_neox.final_layer_norm",
            bsd,
            "ln_final.hook_normalized",
        ));
        v.push(PointInfo::new("lm_head", vec![batch, seq, c.vocab_size], "logits").split(2));
        v
    }
}
