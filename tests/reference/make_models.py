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
from transformers import GPT2Config, GPT2LMHeadModel

BATCH, SEQ = 2, 7


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


def first(out):
    return out[0] if isinstance(out, tuple) else out


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
        for sub in ["ln_1", "attn.c_attn", "attn.c_proj", "attn", "ln_2", "mlp.c_fc", "mlp.act", "mlp.c_proj", "mlp"]:
            handles.append(blk.get_submodule(sub).register_forward_hook(save(f"{p}.{sub}")))
        heads = lambda x: x.reshape(x.shape[0], x.shape[1], nh, hd)
        handles.append(blk.attn.c_proj.register_forward_pre_hook(save_input(f"{p}.attn.hook_z", heads), with_kwargs=True))
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    for h in handles:
        h.remove()
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}"
        q, k, v = acts[f"{p}.attn.c_attn"].split(d, dim=2)
        acts[f"{p}.attn.hook_q"] = q.reshape(BATCH, SEQ, nh, hd).clone()
        acts[f"{p}.attn.hook_k"] = k.reshape(BATCH, SEQ, nh, hd).clone()
        acts[f"{p}.attn.hook_v"] = v.reshape(BATCH, SEQ, nh, hd).clone()
        acts[f"{p}.attn.hook_pattern"] = out.attentions[i].detach().clone()
        # The block adds the attention output to its input (HF: attn_output + residual).
        acts[f"{p}.hook_resid_mid"] = acts[f"{p}.attn"] + acts[f"{p}.hook_resid_pre"]
    return out.logits.detach().clone(), acts


def edited_logits(model, ids, module):
    h = module.register_forward_hook(lambda _m, _i, out: (first(out) * 2,) + tuple(out[1:]) if isinstance(out, tuple) else out * 2)
    with torch.no_grad():
        logits = model(ids).logits.detach().clone()
    h.remove()
    return logits


def main(out_dir):
    out_dir = Path(out_dir)
    for name, cfg in gpt2_models():
        torch.manual_seed(1234)
        cfg._attn_implementation = "eager"
        model = GPT2LMHeadModel(cfg).eval()
        folder = out_dir / name
        model.save_pretrained(folder, safe_serialization=True)
        g = torch.Generator().manual_seed(99)
        ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=g)
        logits, acts = capture_gpt2(model, ids)
        edit_layer = cfg.n_layer - 2 if cfg.n_layer > 1 else 0
        edit_point = f"transformer.h.{edit_layer}"
        ref = {"input_ids": ids, "logits": logits,
               "edit_logits": edited_logits(model, ids, model.transformer.h[edit_layer])}
        for k, v in acts.items():
            ref[k] = v.contiguous().float()
        save_file({k: v.contiguous() for k, v in ref.items()}, str(folder / "reference.safetensors"),
                  metadata={"edit_point": edit_point, "torch": torch.__version__,
                            "transformers": __import__("transformers").__version__})
        (folder / "reference.json").write_text(json.dumps({"edit_point": edit_point, "points": sorted(acts)}, indent=1))
        print(f"{name}: {len(acts)} hook points, logits {tuple(logits.shape)} -> {folder}")


if __name__ == "__main__":
    main(sys.argv[1])
