"""Build tiny random Hugging Face models and record what transformers computes.

For each model in MODELS: build it from a config with a fixed seed, save it
with `save_pretrained` (safetensors) into OUT/<name>/, and write
OUT/<name>/reference.safetensors holding
  - `input_ids`             [batch, seq] int64
  - `logits`                eager-attention forward in float32
  - `<hook point>`          the activation at every hook point FlexModel-rs
                            exposes, captured with PyTorch hooks (canonical
                            names, see host/src/models/<arch>.rs)
  - `edit_logits`           logits when a forward hook multiplies the output
                            of block `EDIT_LAYER` by 2 (`edit_point` in meta)
Nothing here is computed by FlexModel-rs.

Usage: python make_models.py OUT
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
    Qwen2Config, Qwen2ForCausalLM,
)
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as neox_rotary
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

BATCH, SEQ = 2, 7
GEN_TOKENS = 9


def gpt2_models():
    yield "gpt2-tiny", GPT2Config(
        vocab_size=101, n_positions=32, n_embd=64, n_layer=2, n_head=4, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0,
    )
    # Odd sizes, untied embeddings, explicit n_inner, scaled by layer index.
    yield "gpt2-odd", GPT2Config(
        vocab_size=97, n_positions=16, n_embd=36, n_layer=3, n_head=3, n_inner=50,
        tie_word_embeddings=False, scale_attn_by_inverse_layer_idx=True, bos_token_id=0, eos_token_id=0,
    )


def llama_models():
    common = dict(bos_token_id=0, eos_token_id=0, pad_token_id=None)
    # Grouped-query attention (6 heads, 2 KV heads), llama3 RoPE scaling with a
    # short original context so it changes the frequencies, untied embeddings.
    yield "llama-gqa", LlamaForCausalLM, LlamaConfig(
        vocab_size=113, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=64,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
        **common,
    )
    # Multi-head attention with q/k/v/o and MLP biases, odd hidden size, tied embeddings.
    yield "llama-bias-tied", LlamaForCausalLM, LlamaConfig(
        vocab_size=89, hidden_size=36, intermediate_size=58, num_hidden_layers=2, num_attention_heads=3,
        num_key_value_heads=3, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common,
    )
    # Qwen2: q/k/v bias, no o_proj bias, GQA, tied.
    yield "qwen2-tiny", Qwen2ForCausalLM, Qwen2Config(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        **common,
    )
    # For the distributed tests: 8 heads over 4 KV heads split over up to 4
    # tensor-parallel ranks; a vocabulary that does not divide evenly.
    yield "llama-mesh", LlamaForCausalLM, LlamaConfig(
        vocab_size=101, hidden_size=64, intermediate_size=88, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, tie_word_embeddings=False, attention_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common,
    )
    # Mistral: sliding-window attention (window 4 < 7 tokens), one KV head.
    yield "mistral-window", MistralForCausalLM, MistralConfig(
        vocab_size=83, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, sliding_window=4, tie_word_embeddings=False, **common,
    )


def neox_models():
    common = dict(bos_token_id=0, eos_token_id=0)
    # Pythia-style: parallel residual, partial rotary (25 %).
    yield "neox-parallel", GPTNeoXConfig(
        vocab_size=107, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False, **common,
    )
    # Sequential residual, half rotary, exact gelu, tied.
    yield "neox-sequential", GPTNeoXConfig(
        vocab_size=91, hidden_size=40, intermediate_size=70, num_hidden_layers=2, num_attention_heads=5,
        rotary_pct=0.5, use_parallel_residual=False, tie_word_embeddings=True, **common,
    )


def first(out):
    return out[0] if isinstance(out, tuple) else out


def norm_inputs(model, paths, handles):
    """Capture the input of each norm module in `paths` (forward pre-hooks)."""
    seen = {}
    for path in paths:
        def hook(_m, args, kwargs, path=path):
            seen[path] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        handles.append(model.get_submodule(path).register_forward_pre_hook(hook, with_kwargs=True))
    return seen


def add_norm_parts(acts, seen, model, rms):
    """TransformerLens' points inside each norm, from the norm's input:
    `hook_scale` = sqrt(mean((x - mean)^2) + eps) (RMS: no centring, in
    float32), `hook_normalized` = x / scale (before the weight and bias)."""
    for path, x in seen.items():
        mod = model.get_submodule(path)
        eps = getattr(mod, "eps", None) or getattr(mod, "variance_epsilon", None)
        if rms:
            h = x.float()
            scale = (h.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            normalized = (h / scale).to(x.dtype)
        else:
            c = x - x.mean(-1, keepdim=True)
            scale = (c.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            normalized = c / scale
        acts[f"{path}.hook_scale"] = scale.to(x.dtype).clone()
        acts[f"{path}.hook_normalized"] = normalized.clone()


def scores(q, k, scaling, window=None):
    """Attention scores as eager attention computes them: `q @ k^T *
    scaling` (`[batch, head, query, key]`; k repeated to q's heads) with
    masked positions (future keys; keys `window` or more positions back) at
    the dtype's minimum."""
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = q @ k.transpose(-1, -2) * scaling
    pos = torch.arange(q.shape[2])
    masked = pos[None, :] > pos[:, None]
    if window is not None:
        masked |= pos[None, :] <= pos[:, None] - window
    return s.masked_fill(masked, torch.finfo(s.dtype).min).clone()


def capture_gpt2(model, ids):
    cfg = model.config
    nh, d = cfg.n_head, cfg.n_embd
    hd = d // nh
    acts = {}
    handles = []

    def save(name, fn=lambda t: t):
        def hook(_m, _inp, out):
            acts[name] = fn(first(out)).detach().clone()
        return hook

    def save_input(name, fn=lambda t: t):
        def hook(_m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            acts[name] = fn(x).detach().clone()
        return hook

    t = model.transformer
    for mod, name in [(t.wte, "transformer.wte"), (t.wpe, "transformer.wpe"), (t.drop, "transformer.drop"),
                      (t.ln_f, "transformer.ln_f"), (model.lm_head, "lm_head")]:
        handles.append(mod.register_forward_hook(save(name)))
    for i, blk in enumerate(t.h):
        p = f"transformer.h.{i}"
        handles.append(blk.register_forward_pre_hook(save_input(f"{p}.hook_resid_pre"), with_kwargs=True))
        handles.append(blk.register_forward_hook(save(p)))
        for sub in ["ln_1", "attn.c_attn", "attn.c_proj", "attn.resid_dropout", "attn", "ln_2",
                    "mlp.c_fc", "mlp.act", "mlp.c_proj", "mlp.dropout", "mlp"]:
            handles.append(blk.get_submodule(sub).register_forward_hook(save(f"{p}.{sub}")))
        heads = lambda x: x.reshape(x.shape[0], x.shape[1], nh, hd)
        handles.append(blk.attn.c_proj.register_forward_pre_hook(save_input(f"{p}.attn.hook_z", heads), with_kwargs=True))
    norms = [f"transformer.h.{i}.{n}" for i in range(cfg.n_layer) for n in ("ln_1", "ln_2")] + ["transformer.ln_f"]
    seen = norm_inputs(model, norms, handles)
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    for h in handles:
        h.remove()
    add_norm_parts(acts, seen, model, rms=False)
    acts["transformer.hook_pos_embed"] = acts["transformer.wpe"].expand(BATCH, SEQ, d).clone()
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}"
        scaling = hd ** -0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scaling /= i + 1
        q, k, v = acts[f"{p}.attn.c_attn"].split(d, dim=2)
        acts[f"{p}.attn.hook_attn_scores"] = scores(q.reshape(BATCH, SEQ, nh, hd), k.reshape(BATCH, SEQ, nh, hd), scaling)
        acts[f"{p}.attn.hook_q"] = q.reshape(BATCH, SEQ, nh, hd).clone()
        acts[f"{p}.attn.hook_k"] = k.reshape(BATCH, SEQ, nh, hd).clone()
        acts[f"{p}.attn.hook_v"] = v.reshape(BATCH, SEQ, nh, hd).clone()
        acts[f"{p}.attn.hook_pattern"] = out.attentions[i].detach().clone()
        # The block adds the attention output to its input (HF: attn_output + residual).
        acts[f"{p}.hook_resid_mid"] = acts[f"{p}.attn"] + acts[f"{p}.hook_resid_pre"]
    return out.logits.detach().clone(), acts


def capture_llama(model, ids):
    cfg = model.config
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    acts = {}
    handles = []

    def save(name):
        def hook(_m, _inp, out):
            acts[name] = first(out).detach().clone()
        return hook

    def save_input(name):
        def hook(_m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            acts[name] = x.detach().clone()
        return hook

    m = model.model
    for mod, name in [(m.embed_tokens, "model.embed_tokens"), (m.norm, "model.norm"), (model.lm_head, "lm_head")]:
        handles.append(mod.register_forward_hook(save(name)))
    for i, layer in enumerate(m.layers):
        p = f"model.layers.{i}"
        handles.append(layer.register_forward_pre_hook(save_input(f"{p}.hook_resid_pre"), with_kwargs=True))
        handles.append(layer.register_forward_hook(save(p)))
        for sub in ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "self_attn", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.act_fn",
                    "mlp.down_proj", "mlp"]:
            handles.append(layer.get_submodule(sub).register_forward_hook(save(f"{p}.{sub}")))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(save_input(f"{p}.self_attn.hook_z"), with_kwargs=True))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(save_input(f"{p}.mlp.hook_post"), with_kwargs=True))
    norms = [f"model.layers.{i}.{n}" for i in range(cfg.num_hidden_layers)
             for n in ("input_layernorm", "post_attention_layernorm")] + ["model.norm"]
    seen = norm_inputs(model, norms, handles)
    with torch.no_grad():
        out = model(ids, output_attentions=True)
        pos = torch.arange(SEQ).unsqueeze(0)
        cos, sin = m.rotary_emb(acts["model.embed_tokens"], pos)
    for h in handles:
        h.remove()
    add_norm_parts(acts, seen, model, rms=True)
    window = getattr(cfg, "sliding_window", None) if cfg.model_type == "mistral" else None
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        a = f"{p}.self_attn"
        q = acts[f"{a}.q_proj"].reshape(BATCH, SEQ, nh, hd)
        k = acts[f"{a}.k_proj"].reshape(BATCH, SEQ, nkv, hd)
        acts[f"{a}.hook_q"] = q.clone()
        acts[f"{a}.hook_k"] = k.clone()
        acts[f"{a}.hook_v"] = acts[f"{a}.v_proj"].reshape(BATCH, SEQ, nkv, hd).clone()
        rq, rk = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        acts[f"{a}.hook_rot_q"] = rq.transpose(1, 2).clone()
        acts[f"{a}.hook_rot_k"] = rk.transpose(1, 2).clone()
        acts[f"{a}.hook_attn_scores"] = scores(acts[f"{a}.hook_rot_q"], acts[f"{a}.hook_rot_k"], hd ** -0.5, window)
        acts[f"{a}.hook_pattern"] = out.attentions[i].detach().clone()
        acts[f"{a}.hook_z"] = acts[f"{a}.hook_z"].reshape(BATCH, SEQ, nh, hd)
        acts[f"{p}.hook_resid_mid"] = acts[f"{a}"] + acts[f"{p}.hook_resid_pre"]
    return out.logits.detach().clone(), acts


def capture_neox(model, ids):
    cfg = model.config
    nh = cfg.num_attention_heads
    hd = cfg.hidden_size // nh
    acts = {}
    handles = []

    def save(name):
        def hook(_m, _inp, out):
            acts[name] = first(out).detach().clone()
        return hook

    def save_input(name):
        def hook(_m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            acts[name] = x.detach().clone()
        return hook

    m = model.gpt_neox
    for mod, name in [(m.embed_in, "gpt_neox.embed_in"), (m.emb_dropout, "gpt_neox.emb_dropout"),
                      (m.final_layer_norm, "gpt_neox.final_layer_norm"), (model.lm_head, "lm_head")]:
        handles.append(mod.register_forward_hook(save(name)))
    for i, layer in enumerate(m.layers):
        p = f"gpt_neox.layers.{i}"
        handles.append(layer.register_forward_pre_hook(save_input(f"{p}.hook_resid_pre"), with_kwargs=True))
        handles.append(layer.register_forward_hook(save(p)))
        for sub in ["input_layernorm", "attention.query_key_value", "attention.dense", "attention",
                    "post_attention_dropout", "post_attention_layernorm", "mlp.dense_h_to_4h", "mlp.act",
                    "mlp.dense_4h_to_h", "mlp", "post_mlp_dropout"]:
            handles.append(layer.get_submodule(sub).register_forward_hook(save(f"{p}.{sub}")))
        handles.append(layer.attention.dense.register_forward_pre_hook(save_input(f"{p}.attention.hook_z"), with_kwargs=True))
    norms = [f"gpt_neox.layers.{i}.{n}" for i in range(cfg.num_hidden_layers)
             for n in ("input_layernorm", "post_attention_layernorm")] + ["gpt_neox.final_layer_norm"]
    seen = norm_inputs(model, norms, handles)
    with torch.no_grad():
        out = model(ids, output_attentions=True)
        cos, sin = m.rotary_emb(acts["gpt_neox.embed_in"], torch.arange(SEQ).unsqueeze(0))
    for h in handles:
        h.remove()
    add_norm_parts(acts, seen, model, rms=False)
    for i in range(cfg.num_hidden_layers):
        p = f"gpt_neox.layers.{i}"
        a = f"{p}.attention"
        qkv = acts[f"{a}.query_key_value"].view(BATCH, SEQ, nh, 3 * hd)
        q, k, v = qkv.chunk(3, dim=-1)
        acts[f"{a}.hook_q"], acts[f"{a}.hook_k"], acts[f"{a}.hook_v"] = q.clone(), k.clone(), v.clone()
        rq, rk = neox_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        acts[f"{a}.hook_rot_q"] = rq.transpose(1, 2).clone()
        acts[f"{a}.hook_rot_k"] = rk.transpose(1, 2).clone()
        acts[f"{a}.hook_attn_scores"] = scores(acts[f"{a}.hook_rot_q"], acts[f"{a}.hook_rot_k"], hd ** -0.5)
        acts[f"{a}.hook_pattern"] = out.attentions[i].detach().clone()
        acts[f"{a}.hook_z"] = acts[f"{a}.hook_z"].reshape(BATCH, SEQ, nh, hd)
        if not cfg.use_parallel_residual:
            acts[f"{p}.hook_resid_mid"] = acts[a] + acts[f"{p}.hook_resid_pre"]
    return out.logits.detach().clone(), acts


def edited_logits(model, ids, module):
    h = module.register_forward_hook(lambda _m, _i, out: (first(out) * 2,) + tuple(out[1:]) if isinstance(out, tuple) else out * 2)
    with torch.no_grad():
        logits = model(ids).logits.detach().clone()
    h.remove()
    return logits


DEMO_CORPUS = """
Interpretability researchers need to read and edit the insides of large language models that are split
across many GPUs or nodes, without becoming distributed systems experts. FlexModel wraps the model,
registers hook functions by module name, gathers each activation from all shards, runs the user's
function, and writes the edit back to the shards. Hooks are WebAssembly components: sandboxed, shareable,
deterministic. The residual stream carries information from layer to layer; attention heads move it
between positions; the MLP layers transform it. Ablating a head and watching the next-token predictions
change is the first experiment of many papers.
"""


def make_demo(out_dir):
    """A small GPT-2 with a byte-level BPE tokenizer trained on DEMO_CORPUS (random weights)."""
    from tokenizers import ByteLevelBPETokenizer
    folder = out_dir / "demo-gpt2"
    folder.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([DEMO_CORPUS] * 4, vocab_size=400, min_frequency=1, show_progress=False)
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(7)
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=128, n_embd=128, n_layer=4, n_head=4,
                     bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).eval().save_pretrained(folder, safe_serialization=True)
    print(f"demo-gpt2: vocab {tok.get_vocab_size()} -> {folder}")


def record(folder, model, ids, logits, acts, block):
    edit_point = block[0]
    ref = {"input_ids": ids, "logits": logits, "edit_logits": edited_logits(model, ids, block[1])}
    for k, v in acts.items():
        ref[k] = v.contiguous().float()
    save_file({k: v.contiguous() for k, v in ref.items()}, str(folder / "reference.safetensors"),
              metadata={"edit_point": edit_point, "torch": torch.__version__,
                        "transformers": __import__("transformers").__version__})
    (folder / "reference.json").write_text(json.dumps({"edit_point": edit_point, "points": sorted(acts)}, indent=1))
    # Greedy generation with transformers' `generate` (KV cache), no early stop.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=GEN_TOKENS, do_sample=False, attention_mask=torch.ones_like(ids))
    save_file({"prompt": ids.contiguous(), "greedy": greedy.contiguous()}, str(folder / "generate.safetensors"))
    record_backward(folder, model, ids)
    record_padded(folder, model, model.config.vocab_size)
    print(f"{folder.name}: {len(acts)} hook points, logits {tuple(logits.shape)} -> {folder}")


def blocks_of(model):
    """(canonical hook-point name, module) of every transformer block."""
    if hasattr(model, "transformer"):
        return [(f"transformer.h.{i}", b) for i, b in enumerate(model.transformer.h)]
    if hasattr(model, "gpt_neox"):
        return [(f"gpt_neox.layers.{i}", b) for i, b in enumerate(model.gpt_neox.layers)]
    return [(f"model.layers.{i}", b) for i, b in enumerate(model.model.layers)]


def record_backward(folder, model, ids):
    """Gradients with PyTorch tensor hooks: the loss is the mean cross-entropy
    against fixed random targets; recorded: the gradient at every block output
    (no edit), then every parameter's gradient when a tensor hook scales the
    gradient at block 0's output by 0.5."""
    g = torch.Generator().manual_seed(7)
    targets = torch.randint(0, model.config.vocab_size, ids.shape, generator=g)
    blocks = blocks_of(model)

    def run(edit):
        model.zero_grad(set_to_none=True)
        grads, handles = {}, []
        for i, (name, mod) in enumerate(blocks):
            def fwd(m, inp, out, name=name, i=i):
                h = first(out)

                def th(grad):
                    grads[name] = grad.detach().clone()
                    return grad * 0.5 if (edit and i == 0) else None
                h.register_hook(th)
            handles.append(mod.register_forward_hook(fwd))
        logits = first(model(ids).logits)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        for h in handles:
            h.remove()
        params = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, params

    with torch.enable_grad():
        loss, grads, _ = run(False)
        _, _, params = run(True)
    out = {"targets": targets, "loss": loss.reshape(1)}
    out.update({f"grad:{k}": v.contiguous() for k, v in grads.items()})
    out.update({f"param:{k}": v.contiguous() for k, v in params.items()})
    save_file(out, str(folder / "backward.safetensors"), metadata={"edit_point": blocks[0][0]})
    model.zero_grad(set_to_none=True)


PAD_LENGTHS = [7, 4, 2, 6]


def positions_from(mask):
    """Position ids from the attention mask, as transformers' `generate`
    computes them (a padded batch needs them: without, a left-padded row's
    positions start at its pads)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def record_padded(folder, model, vocab):
    """A batch of prompts of lengths PAD_LENGTHS padded left and right:
    ids, attention_mask and transformers' logits and module outputs with
    that mask and position ids from it; and each prompt's greedy
    continuation run alone."""
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(1, vocab, (n,), generator=g) for n in PAD_LENGTHS]
    n = max(PAD_LENGTHS)
    ref = {}
    names = {m: name for name, m in model.named_modules() if name}
    for side in ["left", "right"]:
        ids = torch.zeros(len(prompts), n, dtype=torch.long)
        mask = torch.zeros(len(prompts), n, dtype=torch.long)
        for r, p in enumerate(prompts):
            sl = slice(n - len(p), n) if side == "left" else slice(0, len(p))
            ids[r, sl] = p
            mask[r, sl] = 1
        acts = {}
        handles = []
        for mod, name in names.items():
            def hook(_m, _inp, out, name=name):
                t = first(out)
                if torch.is_tensor(t) and t.dim() >= 2 and t.shape[:2] == ids.shape:
                    acts[name] = t.detach().float().clone()
            handles.append(mod.register_forward_hook(hook))
        with torch.no_grad():
            out = model(ids, attention_mask=mask, position_ids=positions_from(mask))
        for h in handles:
            h.remove()
        ref[f"{side}/input_ids"] = ids
        ref[f"{side}/attention_mask"] = mask
        ref[f"{side}/logits"] = out.logits.detach().float().clone()
        for k, v in acts.items():
            ref[f"{side}/{k}"] = v
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    for r, p in enumerate(prompts):
        with torch.no_grad():
            ref[f"alone/{r}/greedy"] = model.generate(p.unsqueeze(0), max_new_tokens=GEN_TOKENS, do_sample=False,
                                                      attention_mask=torch.ones(1, len(p), dtype=torch.long))[0]
    save_file({k: v.contiguous() for k, v in ref.items()}, str(folder / "padded.safetensors"))


def inputs(vocab):
    g = torch.Generator().manual_seed(99)
    return torch.randint(0, vocab, (BATCH, SEQ), generator=g)


def main(out_dir):
    out_dir = Path(out_dir)
    make_demo(out_dir)
    for name, cfg in gpt2_models():
        torch.manual_seed(1234)
        cfg._attn_implementation = "eager"
        model = GPT2LMHeadModel(cfg).eval()
        folder = out_dir / name
        model.save_pretrained(folder, safe_serialization=True)
        ids = inputs(cfg.vocab_size)
        logits, acts = capture_gpt2(model, ids)
        layer = cfg.n_layer - 2 if cfg.n_layer > 1 else 0
        record(folder, model, ids, logits, acts, (f"transformer.h.{layer}", model.transformer.h[layer]))
        if name == "gpt2-tiny":
            # The same weights as a sharded checkpoint (index + several files)...
            model.save_pretrained(out_dir / "gpt2-tiny-sharded", safe_serialization=True, max_shard_size="20KB")
            # ...and stored in bfloat16 (loaded by the Rust tests in several dtypes).
            model.to(torch.bfloat16).save_pretrained(out_dir / "gpt2-tiny-bf16", safe_serialization=True)
            model.float()
    for name, cls, cfg in llama_models():
        torch.manual_seed(1234)
        cfg._attn_implementation = "eager"
        model = cls(cfg).eval()
        folder = out_dir / name
        model.save_pretrained(folder, safe_serialization=True)
        ids = inputs(cfg.vocab_size)
        logits, acts = capture_llama(model, ids)
        record(folder, model, ids, logits, acts, ("model.layers.0", model.model.layers[0]))
    for name, cfg in neox_models():
        torch.manual_seed(1234)
        cfg._attn_implementation = "eager"
        model = GPTNeoXForCausalLM(cfg).eval()
        folder = out_dir / name
        model.save_pretrained(folder, safe_serialization=True)
        ids = inputs(cfg.vocab_size)
        logits, acts = capture_neox(model, ids)
        # Not the last layer: the final LayerNorm would undo a uniform scale.
        record(folder, model, ids, logits, acts, ("gpt_neox.layers.0", model.gpt_neox.layers[0]))


if __name__ == "__main__":
    main(sys.argv[1])
