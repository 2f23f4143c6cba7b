"""The GPU checks of issue 16, run by scripts/gpu/run.sh on the lent machine
(or on this machine's CPU for the dry run): the `flexmodel` CLI against
transformers on the same device, with the image's own torch.

    python3 check.py BUNDLE_DIR MODELS_DIR OUT_DIR DEVICE

Writes OUT_DIR/gpu-check.json (every check, its numbers, pass or fail) and
OUT_DIR/gpu-check.md (a table); exits 1 if any check failed."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file

bundle, models, out, device = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
flexmodel = str(bundle / "bin" / "flexmodel")
wasm = bundle / "wasm"
results = []
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
# f32: both sides run the same libtorch kernels, so only the order of
# operations differs. bf16/f16: both round every layer's output to 8/11 bits
# of mantissa; compared relative to the largest logit.
TOL = {"f32": ("abs", 1e-4), "bf16": ("rel", 3e-2), "f16": ("rel", 5e-3)}
IDS = [5, 17, 3, 99, 42, 8, 64, 2]


def record(name, ok, **numbers):
    results.append({"check": name, "ok": bool(ok), **numbers})
    print(("PASS " if ok else "FAIL ") + name + " " + json.dumps(numbers), flush=True)


def cli(*args):
    env = dict(os.environ, FLEXMODEL_COMPILER=str(bundle / "bin" / "flexmodel-compile"))
    p = subprocess.run([flexmodel, *args], capture_output=True, text=True, env=env)
    return p.returncode, p.stdout + p.stderr


def ids_for(model):
    """IDS within the model's vocabulary."""
    vocab = json.loads((Path(model) / "config.json").read_text())["vocab_size"]
    return [i % vocab for i in IDS]


def ours(model, dtype="f32", hooks=(), extra=()):
    f = out / "tmp.safetensors"
    args = ["run", "--model", str(model), "--device", device, "--dtype", dtype,
            "--token-ids", ",".join(map(str, ids_for(model))), "--save", str(f), *extra]
    for h in hooks:
        args += ["--hook", h]
    rc, text = cli(*args)
    if rc != 0:
        raise RuntimeError(text.strip().splitlines()[-1] if text.strip() else f"exit {rc}")
    return load_file(f, device="cpu")


def hf(model, dtype):
    m = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=DTYPES[dtype])
    m.ids = ids_for(model)
    return m.to(device).eval()


def layers(m):
    return m.transformer.h if hasattr(m, "transformer") else (m.gpt_neox.layers if hasattr(m, "gpt_neox") else m.model.layers)


def hf_run(m, edit=None):
    hs, got = [], {}
    for i, b in enumerate(layers(m)):
        def f(_m, _i, o, i=i):
            h = o[0] if isinstance(o, tuple) else o
            if edit is not None and edit(i, h) is not None:
                h = edit(i, h)
                o = (h,) + tuple(o[1:]) if isinstance(o, tuple) else h
            got[i] = h.detach().float().cpu()
            return o
        hs.append(b.register_forward_hook(f))
    try:
        with torch.no_grad():
            logits = m(torch.tensor([m.ids], device=device)).logits.float().cpu()
    finally:
        for h in hs:
            h.remove()
    return logits, got


def compare(a, b, dtype):
    kind, tol = TOL[dtype]
    d = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item() if kind == "rel" else 1.0
    return d <= tol * scale, {"max_abs_diff": d, "tolerance": tol * scale}


def fidelity():
    names = sorted(p.name for p in models.iterdir() if (p / "config.json").exists() and "bf16" not in p.name)
    for name in names:
        for dtype in ("f32", "bf16", "f16"):
            try:
                want, _ = hf_run(hf(models / name, dtype))
                ok, n = compare(ours(models / name, dtype)["logits"], want, dtype)
                record(f"fidelity {name} {dtype} logits vs transformers on {device}", ok, **n)
            except Exception as e:  # noqa: BLE001 - a failed check, reported
                record(f"fidelity {name} {dtype} logits vs transformers on {device}", False, error=str(e)[:300])


def hooks():
    model = models / "gpt2-tiny"
    m = hf(model, "f32")
    clean, hidden = hf_run(m)
    # A read of the last token (emit of a slice) and of the whole activation.
    got = ours(model, hooks=[f'{wasm}/retrieve.wasm@blocks.0.hook_resid_post={{"slice": [null, -1]}}'])
    ok, n = compare(got["transformer.h.0"], hidden[0][:, -1:], "f32")
    record(f"hooks: retrieve a slice (last token) of a {device} activation", ok and got["transformer.h.0"].shape[1] == 1, **n)
    got = ours(model, hooks=[f"{wasm}/retrieve.wasm@blocks.1.hook_resid_post"])
    ok, n = compare(got["transformer.h.1"], hidden[1], "f32")
    record(f"hooks: retrieve a whole {device} activation", ok, **n)
    # An in-place edit through the host bulk op (scale).
    want, _ = hf_run(m, edit=lambda i, h: h * 0.5 if i == 0 else None)
    got = ours(model, hooks=[f'{wasm}/scale.wasm@blocks.0.hook_resid_post={{"factor": 0.5}}'])
    ok, n = compare(got["logits"], want, "f32")
    record(f"hooks: scale (host bulk op, in place) on {device} vs the same PyTorch hook", ok, **n)
    rc, text = cli("run", "--model", str(model), "--device", device, "--token-ids", "5,17,3",
                   "--hook", f"{wasm}/scale.wasm@blocks.0.hook_resid_post")
    record(f"hooks: a failing hook (bad config) fails the run with a typed error on {device}",
           rc != 0 and "invalid config" in text, exit=rc)
    # The run after it is whole again (a fresh process; in-process rollback
    # is tested on the CPU by tests/hostile.rs).
    got = ours(model)
    ok, n = compare(got["logits"], clean, "f32")
    record(f"hooks: clean logits after a failed run on {device}", ok, **n)


def generation():
    model = models / "gpt2-tiny"
    m = hf(model, "f32")
    edit = lambda i, h: h * 0.5 if i == 0 else None  # noqa: E731
    hs = []
    for i, b in enumerate(layers(m)):
        def f(_m, _i, o, i=i):
            h = o[0] if isinstance(o, tuple) else o
            e = edit(i, h)
            return o if e is None else ((e,) + tuple(o[1:]) if isinstance(o, tuple) else e)
        hs.append(b.register_forward_hook(f))
    ids = list(IDS[:4])
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(m(torch.tensor([ids], device=device)).logits[0, -1].argmax()))
    for h in hs:
        h.remove()
    f = out / "gen.safetensors"
    rc, text = cli("generate", "--model", str(model), "--device", device, "--token-ids", "5,17,3,99",
                   "--max-new-tokens", "6", "--ignore-eos", "--save", str(f),
                   "--hook", f'{wasm}/scale.wasm@blocks.0.hook_resid_post={{"factor": 0.5}}')
    got = load_file(f)["tokens"].reshape(-1).tolist() if rc == 0 else None
    record(f"generation with an editing hook on {device} = transformers greedy with the PyTorch hook",
           got == ids, ours=got, transformers=ids, error=None if rc == 0 else text[-300:])


def nccl():
    if device == "cpu":
        record("nccl: skipped on the CPU dry run", True)
        return
    rc, text = cli("run", "--model", str(models / "gpt2-tiny"), "--device", device, "--nccl",
                   "--token-ids", "5,17,3")
    record("nccl: a one-rank NCCL communicator runs a forward (multi-rank NCCL unverified: one GPU)",
           rc == 0, error=None if rc == 0 else text[-300:])


t0 = time.time()
out.mkdir(parents=True, exist_ok=True)
env = {"torch": torch.__version__, "transformers": transformers.__version__, "device": device,
       "gpu": torch.cuda.get_device_name(0) if device != "cpu" else None}
print(json.dumps(env), flush=True)
for step in (fidelity, hooks, generation, nccl):
    try:
        step()
    except Exception as e:  # noqa: BLE001
        record(f"{step.__name__}: crashed", False, error=str(e)[:300])
failed = [r for r in results if not r["ok"]]
(out / "gpu-check.json").write_text(json.dumps({"env": env, "seconds": time.time() - t0, "results": results}, indent=1))
with open(out / "gpu-check.md", "w") as f:
    f.write(f"GPU checks on {env['gpu'] or 'cpu (dry run)'} (torch {env['torch']}, transformers {env['transformers']})\n\n")
    f.write("| check | result | numbers |\n|---|---|---|\n")
    for r in results:
        nums = {k: v for k, v in r.items() if k not in ("check", "ok")}
        f.write(f"| {r['check']} | {'pass' if r['ok'] else 'FAIL'} | {json.dumps(nums)} |\n")
print(f"{len(results) - len(failed)} passed, {len(failed)} failed in {time.time() - t0:.0f} s")
sys.exit(1 if failed else 0)
