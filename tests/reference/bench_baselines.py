"""PyTorch baselines for `model-bench` (issue 3, P1-P3), timed in the same run.

Builds (once) a GPT-2-small-sized model with random weights (seed 0) in
MODEL_DIR, so the Rust side loads the very same weights, then times, with
`torch.set_num_threads(THREADS)` and the same input ids (seed 0):
  eager        HF transformers eager forward, no hooks            (P1 baseline)
  identity     + a forward hook returning None on every block     (P2, PyTorch hooks)
  detach_cpu   + forward hooks doing out[0].detach().cpu() on every block (P3 baseline)
  nnsight      nnsight trace writing every block output back to itself (P2 anchor)
Prints one JSON object: {name: median seconds}.

Usage: python bench_baselines.py MODEL_DIR BATCH SEQ THREADS REPS
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main(model_dir, batch, seq, threads, reps):
    torch.set_num_threads(threads)
    model_dir = Path(model_dir)
    if not (model_dir / "model.safetensors").exists():
        torch.manual_seed(0)
        cfg = GPT2Config(bos_token_id=0, eos_token_id=0)  # GPT-2 small: 12 x 768, 50257 tokens
        GPT2LMHeadModel(cfg).save_pretrained(model_dir, safe_serialization=True)
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    torch.save(ids, model_dir / "bench_ids.pt")
    (model_dir / "bench_ids.json").write_text(json.dumps(ids.tolist()))
    def plain():
        with torch.no_grad():
            model(ids)

    saved = []

    def with_hooks(fn):
        def run():
            handles = [b.register_forward_hook(fn) for b in model.transformer.h]
            try:
                saved.clear()
                plain()
            finally:
                for h in handles:
                    h.remove()
        return run

    configs = {
        "eager": plain,
        "identity": with_hooks(lambda m, i, o: None),
        "detach_cpu": with_hooks(lambda m, i, o: saved.append((o[0] if isinstance(o, tuple) else o).detach().cpu())),
    }
    out = {}
    try:
        from nnsight import NNsight
        lm = NNsight(model)

        def nn_identity():
            with torch.no_grad(), lm.trace(ids):
                for blk in lm.transformer.h:
                    o = blk.output
                    h = o[0] if isinstance(o, tuple) else o
                    h[:] = h

        configs["nnsight"] = nn_identity
    except Exception as e:  # reported, not hidden
        out["nnsight_error"] = f"{type(e).__name__}: {e}"

    # Round-robin over the configurations (after one warm-up round), so that
    # drift of the machine affects them alike; medians.
    times = {k: [] for k in configs}
    for r in range(reps + 1):
        for k, fn in configs.items():
            t = time.perf_counter()
            fn()
            if r > 0:
                times[k].append(time.perf_counter() - t)
    out.update({k: statistics.median(v) for k, v in times.items()})
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
