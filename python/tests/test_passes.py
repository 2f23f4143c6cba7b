"""Generation, backward passes, `with model.hooks(...)` and Ctrl-C from
Python, against transformers with PyTorch hooks and autograd (f32)."""

import os
import signal
import threading
import time

import pytest
import torch

import flexmodel

IDS = [[5, 17, 3, 99, 42, 8], [64, 2, 30, 7, 11, 90]]


def layers(m):
    return m.transformer.h if hasattr(m, "transformer") else m.model.layers


def greedy_reference(m, prompt, n, edit=None):
    """Greedy continuation by full forwards (no cache), an optional
    `edit(block, hidden)` on every block's output through PyTorch hooks."""
    hs = []
    if edit is not None:
        for i, b in enumerate(layers(m)):
            def f(_m, _i, out, i=i):
                h = out[0] if isinstance(out, tuple) else out
                e = edit(i, h)
                if e is None:
                    return out
                return (e,) + tuple(out[1:]) if isinstance(out, tuple) else e
            hs.append(b.register_forward_hook(f))
    ids = list(prompt)
    try:
        with torch.no_grad():
            for _ in range(n):
                ids.append(int(m(torch.tensor([ids])).logits[0, -1].argmax()))
    finally:
        for h in hs:
            h.remove()
    return ids[len(prompt):]


def test_greedy_generation_equals_transformers_and_a_padded_batch_each_prompt_alone(models, hf):
    model = flexmodel.load(models / "llama-gqa")
    ref = hf(models / "llama-gqa")
    prompts = [[5, 17, 3, 99, 42, 8], [64, 2, 30]]
    out = model.generate(prompts, max_new_tokens=6, ignore_eos=True)
    assert out.tokens.shape == (2, 6 + 6)
    for p, new in zip(prompts, out.new_tokens):
        assert new == greedy_reference(ref, p, 6)
        assert model.generate([p], max_new_tokens=6, ignore_eos=True).new_tokens == [new]


def test_generation_with_a_steering_hook_and_per_step_caches(models, hf):
    model = flexmodel.load(models / "gpt2-tiny")
    ref = hf(models / "gpt2-tiny")
    v = torch.randn(64, generator=torch.Generator().manual_seed(3))

    def steer(t, hook):
        t += 4.0 * v

    out = model.generate(
        [IDS[0]], max_new_tokens=5, hooks=[("blocks.0.hook_resid_post", steer)],
        names_filter="blocks.1.hook_resid_post", ignore_eos=True,
    )
    want = greedy_reference(ref, IDS[0], 5, edit=lambda i, h: h + 4.0 * v if i == 0 else None)
    assert out.new_tokens == [want]
    assert want != greedy_reference(ref, IDS[0], 5)
    # One cache per step: the prompt's 6 positions, then one new token each.
    assert len(out.caches) == 5
    assert out.caches[0]["blocks.1.hook_resid_post"].shape == (1, 6, 64)
    assert all(c["blocks.1.hook_resid_post"].shape == (1, 1, 64) for c in out.caches[1:])


def test_generation_stops_at_the_models_eos_as_transformers(smollm2):
    model = flexmodel.load(smollm2)
    out = model.generate("The capital of France is", max_new_tokens=4)
    assert out.text[0].startswith(" Paris")


def test_backward_gradients_equal_pytorch_autograd(models, hf):
    model = flexmodel.load(models / "gpt2-tiny")
    ref = hf(models / "gpt2-tiny")
    g = model.backward(IDS, loss=("logit_diff", -1, 42, 7), grad_filter="blocks.*.hook_resid_post")
    # The same with autograd: gradients of each block's output.
    got = {}
    hs = []
    for i, b in enumerate(layers(ref)):
        def f(_m, _i, out, i=i):
            h = out[0] if isinstance(out, tuple) else out
            h.retain_grad()
            got[i] = h
        hs.append(b.register_forward_hook(f))
    ref.zero_grad()
    logits = ref(torch.tensor(IDS)).logits
    loss = (logits[:, -1, 42] - logits[:, -1, 7]).mean()
    loss.backward()
    for h in hs:
        h.remove()
    assert abs(g.loss - loss.item()) < 1e-5
    assert torch.allclose(g.logits, logits.detach(), atol=1e-4)
    for i, h in got.items():
        assert torch.allclose(g.grads[f"blocks.{i}.hook_resid_post"], h.grad, atol=1e-5), i
    w = dict(ref.named_parameters())["transformer.h.0.mlp.c_fc.weight"]
    assert torch.allclose(g.param_grads["transformer.h.0.mlp.c_fc.weight"], w.grad, atol=1e-5)
    # The weights did not move.
    assert torch.allclose(model.run_with_hooks(IDS), logits.detach(), atol=1e-4)


def test_backward_hooks_python_and_wasm_edit_gradients_alike(models, wasm):
    model = flexmodel.load(models / "gpt2-tiny")
    loss = ("cross_entropy", torch.tensor(IDS).roll(-1, 1))
    name = "transformer.h.0.mlp.c_fc.weight"
    clean = model.backward(IDS, loss)

    def double(grad, hook):
        return grad * 2

    py = model.backward(IDS, loss, bwd_hooks=[("blocks.0.hook_resid_post", double)])
    scale = flexmodel.Plugin(wasm / "scale.wasm", config={"factor": 2.0})
    w = model.backward(IDS, loss, bwd_hooks=[("blocks.0.hook_resid_post", scale)])
    assert torch.allclose(py.param_grads[name], 2 * clean.param_grads[name], atol=1e-6)
    assert torch.equal(py.param_grads[name], w.param_grads[name])
    # Later blocks' parameters are upstream of the edit: unchanged.
    late = "transformer.h.1.mlp.c_fc.weight"
    assert torch.equal(py.param_grads[late], clean.param_grads[late])
    assert py.loss == clean.loss
    # run_with_hooks with a loss runs the same backward pass.
    logits = model.run_with_hooks(IDS, bwd_hooks=[("blocks.0.hook_resid_post", double)], loss=loss)
    assert torch.equal(logits, py.logits)


def test_with_model_hooks_fires_in_every_pass_until_the_block_ends(models):
    model = flexmodel.load(models / "gpt2-tiny")
    _, clean = model.run_with_cache(IDS, names_filter="blocks.0.hook_resid_post")
    calls = []

    def zero(t, hook):
        calls.append(hook)
        t.zero_()

    with model.hooks([("blocks.0.hook_resid_post", zero)]):
        _, cache = model.run_with_cache(IDS, names_filter="blocks.0.hook_resid_post")
        model.generate([IDS[0]], max_new_tokens=2, ignore_eos=True)
    # The cache holds the edit; forward 1 and generation's 2 steps called it.
    assert torch.count_nonzero(cache["blocks.0.hook_resid_post"]) == 0
    assert len(calls) == 3
    with pytest.raises(RuntimeError):
        with model.hooks([("blocks.0.hook_resid_post", zero)]):
            raise RuntimeError("leaving the block")
    _, after = model.run_with_cache(IDS, names_filter="blocks.0.hook_resid_post")
    assert len(calls) == 3
    assert torch.equal(after["blocks.0.hook_resid_post"], clean["blocks.0.hook_resid_post"])
    # A bad hook in the list registers none of them.
    with pytest.raises(TypeError):
        with model.hooks([("blocks.0.hook_resid_post", zero), ("blocks.1.hook_resid_post", 3)]):
            pass
    model.run_with_hooks(IDS)
    assert len(calls) == 3


@pytest.mark.parametrize("layout", [{}, {"pp": 2}])
def test_ctrl_c_interrupts_a_long_forward_and_the_model_stays_usable(smollm2, layout):
    model = flexmodel.load(smollm2, **layout)
    small = [[1, 2, 3, 4]]
    before = model.run_with_hooks(small)
    long = torch.randint(0, 49152, (2, 512), generator=torch.Generator().manual_seed(0))
    t0 = time.monotonic()
    model.run_with_hooks(long)
    whole = time.monotonic() - t0

    def ctrl_c():
        time.sleep(0.15 * whole)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        model.run_with_hooks(long)
    took = time.monotonic() - t0
    assert took < 0.6 * whole, (took, whole)
    assert torch.equal(model.run_with_hooks(small), before)


def test_ctrl_c_inside_a_python_hook_is_a_keyboard_interrupt(models):
    model = flexmodel.load(models / "gpt2-tiny")
    clean = model.run_with_hooks(IDS)

    def pressed(t, hook):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.run_with_hooks(IDS, fwd_hooks=[("blocks.0.hook_resid_post", pressed)])
    assert torch.equal(model.run_with_hooks(IDS), clean)
