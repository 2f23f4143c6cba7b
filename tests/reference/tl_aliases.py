"""TransformerLens' own activations, to check FlexModel-rs' aliases against.

For a GPT-2 and a LLaMA-family (grouped-query) model with random weights,
norm weights and biases included (so that an activation before a norm's
weight differs from one after it): save the Hugging Face model into
OUT/<name>/, build TransformerLens' `HookedTransformer` offline from a
manual config with TransformerLens' own weight converters (no folding, no
centring: the model as it is), check its logits equal transformers', and
write every activation of `run_with_cache` to OUT/<name>/tl.safetensors
(keys: TransformerLens hook names; plus `input_ids`). Nothing here is
computed by FlexModel-rs.

Usage: python tl_aliases.py OUT
"""

import sys
from pathlib import Path

import torch
import transformer_lens
from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_llama_weights
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

BATCH, SEQ = 2, 7


def randomize_norms(model):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if name.endswith("weight") else 0.0))


def gpt2():
    cfg = GPT2Config(vocab_size=101, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0,
                     eos_token_id=0, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    hf = GPT2LMHeadModel(cfg).eval()
    tl = HookedTransformerConfig(
        n_layers=2, d_model=64, d_head=16, n_heads=4, d_mlp=256, d_vocab=101, n_ctx=32, act_fn="gelu_new",
        normalization_type="LN", eps=cfg.layer_norm_epsilon, positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel", default_prepend_bos=False,
    )
    return "gpt2-tl", hf, tl, convert_gpt2_weights


def llama():
    cfg = LlamaConfig(vocab_size=103, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg._attn_implementation = "eager"
    hf = LlamaForCausalLM(cfg).eval()
    tl = HookedTransformerConfig(
        n_layers=2, d_model=64, d_head=16, n_heads=4, n_key_value_heads=2, d_mlp=96, d_vocab=103, n_ctx=64,
        act_fn="silu", normalization_type="RMS", eps=cfg.rms_norm_eps, positional_embedding_type="rotary",
        rotary_dim=16, rotary_base=10000, rotary_adjacent_pairs=False, gated_mlp=True, final_rms=True,
        original_architecture="LlamaForCausalLM", default_prepend_bos=False,
    )
    return "llama-tl", hf, tl, convert_llama_weights


def main(out_dir):
    out = Path(out_dir)
    for make in (gpt2, llama):
        torch.manual_seed(2024)
        name, hf, tl_cfg, convert = make()
        randomize_norms(hf)
        folder = out / name
        hf.save_pretrained(folder, safe_serialization=True)
        model = HookedTransformer(tl_cfg)
        model.load_state_dict(convert(hf, tl_cfg), strict=False)
        model.eval()
        ids = torch.randint(0, tl_cfg.d_vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(11))
        with torch.no_grad():
            want = hf(ids).logits
            logits, cache = model.run_with_cache(ids)
        d = (want - logits).abs().max().item()
        if d > 1e-4:
            sys.exit(f"{name}: TransformerLens' logits differ from transformers' by {d}")
        acts = {k: v.detach().float().clone().contiguous() for k, v in cache.items()}
        acts["input_ids"] = ids.contiguous()
        save_file(acts, str(folder / "tl.safetensors"),
                  metadata={"transformer_lens": transformer_lens.__version__ if hasattr(transformer_lens, "__version__") else "",
                            "logits_vs_transformers": f"{d:.3g}"})
        print(f"{name}: {len(cache)} TransformerLens hooks, logits within {d:.2g} of transformers -> {folder}")


if __name__ == "__main__":
    main(sys.argv[1])
