"""The PyTorch side of `model-bench`, driven step by step so that its runs
interleave with FlexModel-rs' in one session (the machine's drift then hits
both alike, and each of our runs is paired with the PyTorch run next to it).

Builds (once) a model with random weights (seed 0) in MODEL_DIR, so the
Rust side loads the very same weights, and the input ids (seed 0): GPT-2
small (12 x 768, 50257 tokens) unless the folder is named `llama-135m`,
then a LLaMA shaped as SmolLM2-135M (30 x 576, GQA 9:3, 49152 tokens, tied
embeddings). A folder that already holds a checkpoint is loaded as it is. Then, with `torch.set_num_threads(THREADS)`, reads one command per
line on stdin and answers one JSON line on stdout:
  eager        HF transformers eager forward, no hooks            (P1 baseline)
  identity     + a forward hook returning None on every block     (P2, PyTorch hooks)
  detach_cpu   + forward hooks doing out[0].detach().cpu() on every block (P3 baseline)
  nnsight      nnsight trace writing every block output back to itself (P2 anchor)
  -> {"config": NAME, "secs": SECONDS} (or {"config": NAME, "error": ...})
  generate P N transformers' greedy `generate` (KV cache) of N tokens after
               the first P ids of the first row (gen-bench)
  -> {"config": "generate", "secs": SECONDS, "prompt": [...], "tokens": [...]}
  quit         exit
With --rss: load, run one eager forward, print {"peak_rss_bytes": N} (VmHWM), exit.
A folder named `llama-1b` gets a ~1.1B-parameter LLaMA (22 x 2048, GQA 32:4,
32000 tokens; TinyLlama's shape) for the GPU numbers. FLEXMODEL_BENCH_DEVICE
(cpu, cuda) and FLEXMODEL_BENCH_DTYPE (f32, bf16, f16) say where and how the
model runs (each timed run then ends with a device synchronize).

Usage: python bench_worker.py MODEL_DIR BATCH SEQ THREADS [--rss]
"""

import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


DEVICE = os.environ.get("FLEXMODEL_BENCH_DEVICE", "cpu")
DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[
    os.environ.get("FLEXMODEL_BENCH_DTYPE", "f32")
]


def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def build(model_dir):
    torch.manual_seed(0)
    if model_dir.name == "llama-1b":
        cfg = LlamaConfig(
            vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
            num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
            rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2,
        )
        model = LlamaForCausalLM(cfg)
    elif model_dir.name == "llama-135m":
        cfg = LlamaConfig(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
            rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
            bos_token_id=0, eos_token_id=0,
        )
        model = LlamaForCausalLM(cfg)
    else:
        model = GPT2LMHeadModel(GPT2Config(bos_token_id=0, eos_token_id=0))
    model.save_pretrained(model_dir, safe_serialization=True)


def blocks(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def load(model_dir, batch, seq):
    model_dir = Path(model_dir)
    if not (model_dir / "model.safetensors").exists():
        build(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=DTYPE)
    model = model.to(DEVICE).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    (model_dir / "bench_ids.json").write_text(json.dumps(ids.tolist()))
    return model, ids.to(DEVICE)


def configs(model, ids):
    def plain():
        with torch.no_grad():
            model(ids)

    saved = []

    def with_hooks(fn):
        def run():
            handles = [b.register_forward_hook(fn) for b in blocks(model)]
            try:
                saved.clear()
                plain()
            finally:
                for h in handles:
                    h.remove()
        return run

    out = {
        "eager": plain,
        "identity": with_hooks(lambda m, i, o: None),
        "detach_cpu": with_hooks(lambda m, i, o: saved.append((o[0] if isinstance(o, tuple) else o).detach().cpu())),
    }
    try:
        from nnsight import NNsight
        lm = NNsight(model)

        def nn_identity():
            with torch.no_grad(), lm.trace(ids):
                for blk in (lm.transformer.h if hasattr(model, "transformer") else lm.model.layers):
                    o = blk.output
                    h = o[0] if isinstance(o, tuple) else o
                    h[:] = h

        out["nnsight"] = nn_identity
    except Exception as e:  # reported, not hidden
        err = f"{type(e).__name__}: {e}"
        out["nnsight"] = err
    return out


def generate(model, ids, prompt_len, new_tokens):
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    prompt = ids[:1, :prompt_len]
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False,
                             attention_mask=torch.ones_like(prompt))
    sync()
    secs = time.perf_counter() - t
    return {"config": "generate", "secs": secs, "prompt": prompt[0].tolist(), "tokens": out[0].tolist()}


def main(model_dir, batch, seq, threads, rss):
    torch.set_num_threads(threads)
    model, ids = load(model_dir, batch, seq)
    if rss:
        with torch.no_grad():
            model(ids)
        # VmHWM: this address space's peak (getrusage's ru_maxrss would
        # include the parent's resident set at fork).
        status = Path("/proc/self/status").read_text()
        kib = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:"))
        print(json.dumps({"peak_rss_bytes": kib * 1024}), flush=True)
        return
    runs = configs(model, ids)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        if name.startswith("generate "):
            print(json.dumps(generate(model, ids, *map(int, name.split()[1:3]))), flush=True)
            continue
        fn = runs.get(name)
        if not callable(fn):
            print(json.dumps({"config": name, "error": fn or "unknown configuration"}), flush=True)
            continue
        t = time.perf_counter()
        fn()
        sync()
        print(json.dumps({"config": name, "secs": time.perf_counter() - t}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), "--rss" in sys.argv[5:])
