"""FlexModel-rs from Python: load a Hugging Face model on one rank or a mesh
of ranks, read any hook point's activations as torch tensors, and edit them
with sandboxed WebAssembly plugins or plain Python callables.

    import flexmodel
    model = flexmodel.load("artifacts/models/gpt2-tiny")
    logits, cache = model.run_with_cache("The Eiffel Tower is in")
    cache["blocks.0.hook_resid_post"]          # TransformerLens names work
    scale = flexmodel.Plugin("artifacts/wasm/scale.wasm", config={"factor": 0.5})
    logits, out = model.run_with_hooks("Hello", fwd_hooks=[("blocks.0.hook_resid_post", scale)])

The engine is the same as the `flexmodel` CLI's (tensors cross without
copies: the extension links the libtorch this interpreter's `torch` loaded).
Errors are ``flexmodel.FlexModelError`` with the host's message (plugin, hook
point, rank); the model stays usable after one.
"""

import os as _os

import torch  # noqa: F401  (loads libtorch before the extension links to it)

# The plugin compile worker the package ships (a child process per compile).
_worker = _os.path.join(_os.path.dirname(__file__), "bin", "flexmodel-compile")
if "FLEXMODEL_COMPILER" not in _os.environ and _os.path.exists(_worker):
    _os.environ["FLEXMODEL_COMPILER"] = _worker

from . import _native
from ._native import FlexModelError, Plugin

__all__ = ["Cache", "FlexModelError", "Model", "Plugin", "load"]


class Cache(dict):
    """Activations by canonical hook-point name; TransformerLens aliases
    (``blocks.3.hook_resid_post``) and other aliases index it too."""

    def __init__(self, tensors, aliases):
        super().__init__(tensors)
        self._aliases = aliases

    def __getitem__(self, key):
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        name = self._aliases.get(key)
        if name is not None and dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        raise KeyError(key)

    def __contains__(self, key):
        return dict.__contains__(self, key) or (
            key in self._aliases and dict.__contains__(self, self._aliases[key])
        )


class Model:
    """A loaded model (see ``flexmodel.load``)."""

    def __init__(self, native):
        self._m = native
        self._aliases = {}
        for name, aliases, _shape in native.hook_points(1):
            for a in aliases:
                self._aliases.setdefault(a, name)

    def hook_points(self, seq_len=8):
        """Every hook point for a batch of one and ``seq_len`` tokens: a list
        of ``(name, aliases, shape)``."""
        return [(n, list(a), list(s)) for n, a, s in self._m.hook_points(seq_len)]

    def run_with_cache(self, inputs, names_filter=None, stop_at=None, padding="right"):
        """``(logits, cache)``: the forward's logits (``None`` when
        ``stop_at`` ends it after a hook point) and a ``Cache`` of every
        point ``names_filter`` selects (a name, alias, pattern, or a list of
        them; all points by default). ``inputs``: a string, a list of strings
        (one padded batch), a tensor of ids or a list of id lists. In a padded
        batch a point's activation holds the real tokens only, the prompts'
        one after another (``[tokens, ...]``)."""
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        logits, tensors = self._m.run_with_cache(inputs, names_filter, stop_at, padding)
        return logits, Cache(tensors, self._aliases)

    def run_with_hooks(self, inputs, fwd_hooks=(), padding="right", return_outputs=False):
        """The logits with ``fwd_hooks``: ``(pattern, hook)`` pairs where a hook
        is a ``flexmodel.Plugin`` (sandboxed WebAssembly) or a Python callable
        ``fn(tensor, hook_point) -> tensor | None`` that runs natively (trusted,
        as TransformerLens hooks: the tensor is the live activation, edits in
        place count, a returned tensor replaces it). With ``return_outputs``,
        also what the plugins emitted."""
        logits, outputs = self._m.run_with_hooks(inputs, list(fwd_hooks), padding)
        return (logits, outputs) if return_outputs else logits


def load(path, dtype="f32", device="cpu", tp=1, pp=1, dp=1):
    """Load the Hugging Face model folder ``path`` (config.json,
    *.safetensors, tokenizer.json) as ``dtype`` (f32, f16, bf16) on ``device``
    (cpu, cuda, cuda:N), on ``tp`` x ``pp`` x ``dp`` ranks (threads in this
    process): results are those of one rank."""
    return Model(_native.load(str(path), dtype, device, tp, pp, dp))
