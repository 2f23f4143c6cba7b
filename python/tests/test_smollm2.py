"""The real pretrained default, SmolLM2-135M-Instruct, from Python against
transformers with PyTorch hooks (f32), on a padded batch of text: logits
within 1e-4; every block's residual stream within 1e-4 of its largest
magnitude (SmolLM2 has massive activations, ~22,500 from block 11 on, where
f32's spacing is 0.002: 1e-4 absolute is below what f32 can hold there)."""

import torch
import transformers

import flexmodel


def test_smollm2_run_with_cache_equals_transformers_with_pytorch_hooks(smollm2, hf):
    model = flexmodel.load(smollm2)
    ref = hf(smollm2)
    tok = transformers.AutoTokenizer.from_pretrained(smollm2)
    prompts = ["The Eiffel Tower is in the city of", "Hello"]
    logits, cache = model.run_with_cache(prompts, names_filter="blocks.*.hook_resid_post")
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="right")
    assert model.to_tokens(prompts[0]) == enc.input_ids[0].tolist()
    got = {}
    hooks = [
        b.register_forward_hook(lambda _m, _i, out, i=i: got.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i, b in enumerate(ref.model.layers)
    ]
    with torch.no_grad():
        want = ref(**enc).logits
    for h in hooks:
        h.remove()
    real = enc.attention_mask.bool()
    assert len(got) == 30
    assert torch.allclose(logits[real], want[real], atol=1e-4), (logits[real] - want[real]).abs().max()
    for i, h in got.items():
        # A padded batch's cache: the real tokens, the prompts' one after another.
        mine = cache[f"blocks.{i}.hook_resid_post"]
        assert mine.shape == h[real].shape
        scale = h[real].abs().max()
        assert (mine - h[real]).abs().max() <= 1e-4 * scale, (i, (mine - h[real]).abs().max(), scale)
    top = logits[0, real[0].sum() - 1].argmax().item()
    assert model.to_string([top]) == " Paris"
