"""PyTorch baseline for `gen-bench` (issue 5): transformers' greedy `generate`
(KV cache) on the GPT-2-small-sized random model `model-bench` saves, with
`torch.set_num_threads(THREADS)`. Prints one JSON object with the median
seconds and the generated tokens (the Rust side checks it produces the same).

Usage: python gen_baseline.py MODEL_DIR PROMPT_LEN NEW_TOKENS THREADS REPS
"""

import json
import statistics
import sys
import time

import torch
from transformers import GPT2LMHeadModel


def main(model_dir, prompt_len, new_tokens, threads, reps):
    torch.set_num_threads(threads)
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ids = torch.load(f"{model_dir}/bench_ids.pt")[:1, :prompt_len]
    times, out = [], None
    for r in range(reps + 1):
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                                 attention_mask=torch.ones_like(ids))
        if r > 0:
            times.append(time.perf_counter() - t)
    print(json.dumps({"secs": statistics.median(times), "tokens": out[0].tolist(), "prompt": ids[0].tolist()}))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]))
