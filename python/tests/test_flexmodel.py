"""The Python package against independent references: transformers with
PyTorch forward hooks on the tiny random models (f32, <= 1e-4), a Python
callable hook against the WASM `scale` plugin, TP2 against one rank, a
padded batch against each prompt alone, and a failing hook."""

import os
from pathlib import Path

import pytest
import torch
import transformers

import flexmodel

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "artifacts" / "models"
WASM = Path(os.environ.get("FLEXMODEL_ARTIFACTS", ROOT / "artifacts" / "wasm"))
IDS = [[5, 17, 3, 99, 42, 8], [64, 2, 30, 7, 11, 90]]


def hf(name):
    m = transformers.AutoModelForCausalLM.from_pretrained(MODELS / name, torch_dtype=torch.float32)
    return m.eval()


def blocks(m):
    return m.transformer.h if hasattr(m, "transformer") else m.model.layers


def hf_resid_posts(m, ids, edit=None):
    """Logits and each block's output (resid_post), from PyTorch hooks;
    `edit(block, out)` may replace a block's output."""
    got = {}

    def hook(i):
        def f(_mod, _inp, out):
            h = out[0] if isinstance(out, tuple) else out
            if edit is not None:
                e = edit(i, h)
                if e is not None:
                    h = e
                    out = (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
            got[i] = h.detach().clone()
            return out

        return f

    hs = [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks(m))]
    try:
        with torch.no_grad():
            logits = m(torch.tensor(ids)).logits
    finally:
        for h in hs:
            h.remove()
    return logits, got


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-gqa"])
def test_run_with_cache_equals_transformers_with_pytorch_hooks(name):
    model = flexmodel.load(MODELS / name)
    logits, cache = model.run_with_cache(torch.tensor(IDS), names_filter="blocks.*.hook_resid_post")
    want, posts = hf_resid_posts(hf(name), IDS)
    assert torch.allclose(logits, want, atol=1e-4), (logits - want).abs().max()
    assert len(posts) > 1
    for i, h in posts.items():
        # The TransformerLens alias and the canonical name give the same tensor.
        got = cache[f"blocks.{i}.hook_resid_post"]
        assert got.shape == h.shape
        assert torch.allclose(got, h, atol=1e-4), (i, (got - h).abs().max())


def test_a_python_hook_and_the_wasm_scale_plugin_edit_alike_and_as_pytorch():
    model = flexmodel.load(MODELS / "gpt2-tiny")
    seen = []

    def halve(t, hook):
        seen.append((hook, tuple(t.shape)))
        return t * 0.5

    py = model.run_with_hooks(IDS, fwd_hooks=[("blocks.0.hook_resid_post", halve)])
    scale = flexmodel.Plugin(WASM / "scale.wasm", config={"factor": 0.5})
    wasm = model.run_with_hooks(IDS, fwd_hooks=[("blocks.0.hook_resid_post", scale)])
    want, _ = hf_resid_posts(hf("gpt2-tiny"), IDS, edit=lambda i, h: h * 0.5 if i == 0 else None)
    assert seen == [("transformer.h.0", (2, 6, 64))]
    assert torch.equal(py, wasm)
    assert torch.allclose(py, want, atol=1e-4)
    # In place counts too.
    inplace = model.run_with_hooks(IDS, fwd_hooks=[("blocks.0.hook_resid_post", lambda t, h: t.mul_(0.5))])
    assert torch.equal(inplace, py)
    # Without hooks, the clean logits again: nothing stays registered.
    clean = model.run_with_hooks(IDS)
    assert not torch.equal(clean, py)
    assert torch.allclose(clean, hf_resid_posts(hf("gpt2-tiny"), IDS)[0], atol=1e-4)


def test_tp2_from_python_equals_one_rank():
    one = flexmodel.load(MODELS / "gpt2-tiny")
    two = flexmodel.load(MODELS / "gpt2-tiny", tp=2)
    a, ca = one.run_with_cache(IDS, names_filter=["blocks.1.attn.hook_z", "blocks.*.hook_resid_post"])
    b, cb = two.run_with_cache(IDS, names_filter=["blocks.1.attn.hook_z", "blocks.*.hook_resid_post"])
    assert torch.allclose(a, b, atol=1e-5)
    assert set(ca) == set(cb)
    for k in ca:
        assert torch.allclose(ca[k], cb[k], atol=1e-5), k


def test_a_padded_batch_caches_real_tokens_equal_to_each_prompt_alone():
    model = flexmodel.load(MODELS / "gpt2-tiny")
    prompts = [[5, 17, 3, 99, 42, 8], [64, 2, 30]]
    _, cache = model.run_with_cache(prompts, names_filter="blocks.1.hook_resid_post", padding="left")
    alone = [model.run_with_cache([p], names_filter="blocks.1.hook_resid_post")[1] for p in prompts]
    want = torch.cat([c["blocks.1.hook_resid_post"][0] for c in alone])
    got = cache["blocks.1.hook_resid_post"]
    assert got.shape == want.shape == (9, 64)
    assert torch.allclose(got, want, atol=1e-5)


def test_stop_at_ends_the_forward_after_a_point():
    model = flexmodel.load(MODELS / "gpt2-tiny")
    logits, cache = model.run_with_cache(IDS, stop_at="blocks.0.hook_resid_post")
    assert logits is None
    assert "blocks.0.hook_resid_post" in cache
    assert not any(k.startswith("transformer.h.1") for k in cache)


def test_a_failing_hook_raises_and_the_model_stays_usable():
    model = flexmodel.load(MODELS / "gpt2-tiny")
    clean = model.run_with_hooks(IDS)

    def broken(t, hook):
        raise ValueError("no")

    with pytest.raises(flexmodel.FlexModelError, match="transformer.h.0"):
        model.run_with_hooks(IDS, fwd_hooks=[("blocks.0.hook_resid_post", broken)])
    with pytest.raises(flexmodel.FlexModelError, match="invalid config"):
        model.run_with_hooks(IDS, fwd_hooks=[("blocks.0.hook_resid_post", flexmodel.Plugin(WASM / "scale.wasm"))])
    with pytest.raises(TypeError):
        model.run_with_hooks(IDS, fwd_hooks=[("blocks.0.hook_resid_post", 3)])
    assert torch.equal(model.run_with_hooks(IDS), clean)


def test_hook_points_name_aliases_and_shapes():
    model = flexmodel.load(MODELS / "gpt2-tiny")
    points = {n: (a, s) for n, a, s in model.hook_points(seq_len=5)}
    aliases, shape = points["transformer.h.0"]
    assert "blocks.0.hook_resid_post" in aliases
    assert shape == [1, 5, 64]
