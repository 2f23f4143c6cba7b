"""The PyTorch side of `data-bench` (P8, P9), driven step by step so that its
runs alternate with FlexModel-rs' in one session.

Usage: python data_worker.py MODEL_DIR DTYPE THREADS   (DTYPE: f32 | bf16)
Reads one command per line, answers one JSON line:
  padded FILE        transformers eager forward of the padded batch in FILE
                     ({"ids": [[...]], "mask": [[...]]}) with its attention
                     mask and position ids from it -> {"secs": S}
  harvest FILE OUT LAYER BATCH SHARD
                     the SAELens-style baseline: rows of token ids in FILE
                     (a JSON list), BATCH at a time padded right, a forward
                     hook on layer LAYER taking its output's real tokens and
                     stopping the forward there, shards of SHARD tokens saved
                     with safetensors to OUT -> {"secs": S, "tokens": N}
  quit
"""

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


class Stop(Exception):
    pass


def positions(mask):
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def padded(model, path):
    b = json.loads(Path(path).read_text())
    ids, mask = torch.tensor(b["ids"]), torch.tensor(b["mask"])
    t = time.perf_counter()
    with torch.no_grad():
        model(ids, attention_mask=mask, position_ids=positions(mask))
    return {"secs": time.perf_counter() - t}


def harvest(model, rows_file, out, layer, batch, shard):
    rows = json.loads(Path(rows_file).read_text())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grabbed = []

    def hook(_m, _inp, output):
        grabbed.append(output[0] if isinstance(output, tuple) else output)
        raise Stop()

    h = model.model.layers[layer].register_forward_hook(hook)
    t = time.perf_counter()
    buf, n_buf, k, total = [], 0, 0, 0
    try:
        for i in range(0, len(rows), batch):
            part = rows[i:i + batch]
            n = max(len(r) for r in part)
            ids = torch.zeros(len(part), n, dtype=torch.long)
            mask = torch.zeros(len(part), n, dtype=torch.long)
            for r, row in enumerate(part):
                ids[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
            grabbed.clear()
            with torch.no_grad():
                try:
                    model(ids, attention_mask=mask, position_ids=positions(mask))
                except Stop:
                    pass
            acts = grabbed[0][mask.bool()]  # [real tokens, d]
            buf.append(acts)
            n_buf += acts.shape[0]
            total += acts.shape[0]
            while n_buf >= shard:
                x = torch.cat(buf)
                save_file({"acts": x[:shard].contiguous()}, str(out / f"shard-{k:05}.safetensors"))
                k += 1
                buf, n_buf = [x[shard:]], x.shape[0] - shard
        if n_buf:
            save_file({"acts": torch.cat(buf).contiguous()}, str(out / f"shard-{k:05}.safetensors"))
    finally:
        h.remove()
    return {"secs": time.perf_counter() - t, "tokens": total}


def main(model_dir, dtype, threads):
    torch.set_num_threads(threads)
    kind = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=kind).eval()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        a = line.split()
        if not a or a[0] == "quit":
            break
        try:
            if a[0] == "padded":
                r = padded(model, a[1])
            elif a[0] == "harvest":
                r = harvest(model, a[1], a[2], int(a[3]), int(a[4]), int(a[5]))
            else:
                r = {"error": f"unknown command {a[0]}"}
        except Exception as e:  # reported, not hidden
            r = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
