"""P3 from Python: `run_with_cache` of every block's residual stream against
TransformerLens-style PyTorch forward hooks on the same model in the same
process, interleaved (ours, then theirs, per round; the median of per-round
ratios), and the per-call cost of a native Python hook against a PyTorch
forward hook. Peak memory: each side in a fresh process (ru_maxrss after
the same calls). Prints a markdown section; `--out BENCHMARKS.md` replaces
its section there.

    python python/bench/p3.py [--model artifacts/smollm2-135m-instruct] [--seq 128] [--rounds 9]
"""

import argparse
import json
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

import flexmodel


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()


def layers(m):
    return m.model.layers if hasattr(m, "model") else m.transformer.h


def theirs_cache(m, ids):
    """TransformerLens-style: a forward hook per block keeps its output."""
    cache = {}
    hs = [
        b.register_forward_hook(lambda mod, i, o, k=k: cache.__setitem__(f"blocks.{k}.hook_resid_post", (o[0] if isinstance(o, tuple) else o).detach()))
        for k, b in enumerate(layers(m))
    ]
    with torch.no_grad():
        logits = m(ids).logits
    for h in hs:
        h.remove()
    return logits, cache


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def peak(side, model, seq, batch=4):
    """Peak memory of three `side` calls on `batch` x `seq` tokens in a fresh
    process: the resident set's high-water mark during the calls (sampled
    every millisecond from /proc/self/statm) above where it stood before
    them, after one warm-up call, in MiB (loading the weights, which each
    side does its own way, is left out)."""
    code = f"""
import os, sys, threading, time, torch
sys.argv = ['p3']
sys.path.insert(0, {str(Path(__file__).parent)!r})
import p3
torch.set_num_threads(2)
ids = torch.randint(0, 1000, ({batch}, {seq}))
page = os.sysconf('SC_PAGE_SIZE')
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * page
if {side!r} == 'ours':
    import flexmodel
    m = flexmodel.load({model!r})
    call = lambda: m.run_with_cache(ids, names_filter='blocks.*.hook_resid_post')
else:
    m = p3.hf_model({model!r})
    call = lambda: p3.theirs_cache(m, ids)
out = call()  # once first: weights mapped lazily are resident from here on
del out
before = rss()
high = [before]
done = threading.Event()
def sample():
    while not done.is_set():
        high[0] = max(high[0], rss())
        time.sleep(0.001)
t = threading.Thread(target=sample)
t.start()
for _ in range(3):
    out = call()
    del out
done.set()
t.join()
print((high[0] - before) / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="artifacts/smollm2-135m-instruct")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (1, a.seq))
    ours = flexmodel.load(a.model)
    hf = hf_model(a.model)
    # Same answers first.
    lo, co = ours.run_with_cache(ids, names_filter="blocks.*.hook_resid_post")
    lt, ct = theirs_cache(hf, ids)
    assert torch.allclose(lo, lt, atol=1e-3), (lo - lt).abs().max()
    for k, v in ct.items():
        assert torch.allclose(co[k], v, atol=1e-3), k
    n = len(ct)
    for _ in range(2):
        ours.run_with_cache(ids, names_filter="blocks.*.hook_resid_post")
        theirs_cache(hf, ids)
    ratios, to, tt = [], [], []
    for _ in range(a.rounds):
        x = timed(lambda: ours.run_with_cache(ids, names_filter="blocks.*.hook_resid_post"))
        y = timed(lambda: theirs_cache(hf, ids))
        to.append(x)
        tt.append(y)
        ratios.append(x / y)
    # Per-call cost of a hook that does nothing, on every block: (with - without) / blocks.
    def ours_hooks(k):
        hooks = [("blocks.*.hook_resid_post", lambda t, h: None)] if k else []
        return lambda: ours.run_with_hooks(ids, fwd_hooks=hooks)

    def theirs_hooks(k):
        def run():
            hs = [b.register_forward_hook(lambda m_, i, o: None) for b in layers(hf)] if k else []
            with torch.no_grad():
                hf(ids)
            for h in hs:
                h.remove()
        return run

    # On a 4-token input (a forward of a few ms) so that the hooks' cost is
    # not lost in the noise; each side's four runs interleaved, many rounds.
    ids4 = ids[:, :4]
    ids_full, ids = ids, ids4
    per_o, per_t = [], []
    for _ in range(max(41, a.rounds)):
        per_o.append((timed(ours_hooks(1)) - timed(ours_hooks(0))) / n)
        per_t.append((timed(theirs_hooks(1)) - timed(theirs_hooks(0))) / n)
    ids = ids_full
    po, pt = statistics.median(per_o), statistics.median(per_t)
    mo, mt = peak("ours", a.model, a.seq), peak("theirs", a.model, a.seq)
    r = statistics.median(ratios)
    md = (
        "## Python package (issue 15) — `python/bench/p3.py`\n\n"
        f"Machine: {cpu_name()}, torch {torch.__version__}, 2 torch threads on both sides. Model: `{Path(a.model).name}` f32, "
        f"1 × {a.seq} tokens, every block's residual stream ({n} points). {a.rounds} interleaved rounds; "
        "ratios are medians of per-round ratios. Peak memory: see its row. "
        "Reproduce: `python python/bench/p3.py --out BENCHMARKS.md` (the venv's python).\n\n"
        "| measure | ours | PyTorch hooks | ratio | target |\n|---|---|---|---|---|\n"
        f"| P3 `run_with_cache` of every block's residual stream vs TransformerLens-style forward hooks | {statistics.median(to)*1e3:.1f} ms | {statistics.median(tt)*1e3:.1f} ms | {r:.3f}× | ≤ 1.05× ({'met' if r <= 1.05 else '**not met**'}) |\n"
        f"| peak memory of three such calls on 4 × {a.seq} tokens (resident high-water above the loaded model, fresh processes) | {mo:.0f} MiB | {mt:.0f} MiB | {mo/mt:.3f}× | ≤ 1.1× ({'met' if mo/mt <= 1.1 else '**not met**'}) |\n"
        f"| per-call cost of a no-op native Python hook vs a PyTorch forward hook (on every block, 1 × 4 tokens: (with − without) / blocks) | {po*1e6:.1f} µs | {pt*1e6:.1f} µs | {po/max(pt,1e-9):.2f}× | ≤ 1.5× ({'met' if po/max(pt,1e-9) <= 1.5 else '**not met**'}) |\n\n"
    )
    print(md)
    if a.out:
        p = Path(a.out)
        text = p.read_text() if p.exists() else ""
        begin, end = "<!-- python-bench:begin -->", "<!-- python-bench:end -->"
        block = f"{begin}\n{md}{end}\n"
        if begin in text:
            text = re.sub(re.escape(begin) + ".*?" + re.escape(end) + "\n?", lambda _: block, text, flags=re.S)
        else:
            text += "\n" + block
        p.write_text(text)


if __name__ == "__main__":
    main()
