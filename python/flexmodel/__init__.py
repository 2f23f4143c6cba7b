"""FlexModel-rs from Python: load a Hugging Face model on one rank or a mesh
of ranks, read any hook point's activations as torch tensors, and edit them
with sandboxed WebAssembly plugins or plain Python callables.

    import flexmodel
    model = flexmodel.load("artifacts/smollm2-135m-instruct")
    logits, cache = model.run_with_cache("The Eiffel Tower is in")
    cache["blocks.3.hook_resid_post"]          # TransformerLens names work
    scale = flexmodel.Plugin("artifacts/wasm/scale.wasm", config={"factor": 0.5})
    logits = model.run_with_hooks("Hello", fwd_hooks=[("blocks.0.hook_resid_post", scale)])
    with model.hooks([("blocks.*.hook_resid_post", lambda t, hook: None)]):
        out = model.generate("The capital of France is", max_new_tokens=8)
    grads = model.backward("Hello world", loss=("logit_diff", -1, 42, 7))

The engine is the same as the `flexmodel` CLI's (tensors cross without
copies: the extension links the libtorch this interpreter's `torch` loaded).
Errors are ``flexmodel.FlexModelError`` with the host's message (plugin, hook
point, rank); the model stays usable after one. Ctrl-C interrupts a pass
(``KeyboardInterrupt``). ``flexmodel.remote(url, key).load()`` gives the same
API against a ``flexmodel serve`` server.
"""

import contextlib as _contextlib
import os as _os
from typing import NamedTuple as _NamedTuple

import torch  # (loads libtorch before the extension links to it)

# The plugin compile worker the package ships (a child process per compile).
_worker = _os.path.join(_os.path.dirname(__file__), "bin", "flexmodel-compile")
if "FLEXMODEL_COMPILER" not in _os.environ and _os.path.exists(_worker):
    _os.environ["FLEXMODEL_COMPILER"] = _worker

from . import _native
from ._native import FlexModelError, Plugin
from .cache import Cache, by_step
from .remote import remote

__all__ = [
    "Cache",
    "FlexModelError",
    "Generation",
    "Gradients",
    "Model",
    "Plugin",
    "load",
    "remote",
]


class Generation(_NamedTuple):
    """What ``Model.generate`` returns."""

    tokens: torch.Tensor
    """Prompt and new tokens, ``[batch, prompt + new]`` (prompts padded on the left)."""
    new_tokens: list
    """Each prompt's new tokens (ending with its end-of-sequence token when it produced one)."""
    text: list
    """Each prompt's new tokens as text (empty strings without a tokenizer)."""
    caches: list
    """Per step (0: the prompt), a ``Cache`` of the points ``names_filter`` selected."""
    outputs: dict
    """What the hooks emitted, keyed ``step{k}/<key>``."""


class Gradients(_NamedTuple):
    """What ``Model.backward`` returns."""

    loss: float
    logits: torch.Tensor
    grads: "Cache"
    """The gradient of the loss at every point ``grad_filter`` selected (and what backward plugins emitted)."""
    param_grads: dict
    """The gradient of every parameter, by checkpoint name (on a mesh: rank 0's shard)."""
    outputs: dict
    """What the forward hooks emitted."""


def _hooks(hooks):
    return None if hooks is None else list(hooks)


def _filter(names_filter):
    return [names_filter] if isinstance(names_filter, str) else names_filter


class Model:
    """A loaded model (see ``flexmodel.load``)."""

    def __init__(self, native, path=None):
        self._m = native
        self._path = path
        self._aliases = {}
        for name, aliases, _shape in native.hook_points(1):
            for a in aliases:
                self._aliases.setdefault(a, name)

    def __repr__(self):
        return f"flexmodel.Model({str(self._path)!r}, {self._m.layout})"

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
        one after another (``[tokens, ...]``). Hooks of open ``with
        model.hooks(...)`` blocks run first: the cache holds their edits."""
        logits, tensors = self._m.run_with_cache(inputs, _filter(names_filter), stop_at, padding)
        return logits, Cache(tensors, self._aliases)

    def run_with_hooks(
        self, inputs, fwd_hooks=(), bwd_hooks=(), loss=None, padding="right", return_outputs=False
    ):
        """The logits with ``fwd_hooks``: ``(pattern, hook)`` pairs where a hook
        is a ``flexmodel.Plugin`` (sandboxed WebAssembly) or a Python callable
        ``fn(tensor, hook_point) -> tensor | None`` that runs natively (trusted,
        as TransformerLens hooks: the tensor is the live activation, edits in
        place count, a returned tensor replaces it). With ``loss`` (see
        ``backward``) a backward pass runs too and ``bwd_hooks`` are called on
        the gradients. With ``return_outputs``, also what the plugins emitted."""
        if loss is not None or bwd_hooks:
            if loss is None:
                raise ValueError("bwd_hooks need a loss to differentiate")
            g = self.backward(inputs, loss, fwd_hooks, bwd_hooks, padding=padding)
            outputs = dict(g.outputs)
            outputs.update(g.grads)
            return (g.logits, outputs) if return_outputs else g.logits
        logits, outputs = self._m.run_with_hooks(inputs, _hooks(fwd_hooks), padding)
        return (logits, outputs) if return_outputs else logits

    def backward(self, inputs, loss, fwd_hooks=(), bwd_hooks=(), grad_filter=None, padding="right"):
        """A forward and a backward pass of ``loss``: ``("cross_entropy",
        targets)`` (int64 ``[batch, seq]``, averaged over real tokens) or
        ``("logit_diff", position, plus, minus)`` (``position`` -1: each
        prompt's last token). ``bwd_hooks`` (as ``fwd_hooks``) are called on
        the gradient at their points and their edits flow further back.
        Returns ``Gradients``: the loss, logits, the gradient at every point
        ``grad_filter`` selects, and every parameter's gradient. The model's
        weights do not change."""
        loss_value, logits, outputs, grads, params = self._m.backward(
            inputs, tuple(loss), _hooks(fwd_hooks), _hooks(bwd_hooks), _filter(grad_filter), padding
        )
        return Gradients(loss_value, logits, Cache(grads, self._aliases), params, outputs)

    def generate(
        self,
        inputs,
        max_new_tokens=16,
        hooks=(),
        names_filter=None,
        do_sample=False,
        temperature=1.0,
        top_k=None,
        seed=0,
        ignore_eos=False,
    ):
        """Generate up to ``max_new_tokens`` after each prompt (a padded batch
        is padded on the left), greedily or sampled (``do_sample``,
        ``temperature``, ``top_k``, ``seed``), stopping at the model's
        end-of-sequence tokens unless ``ignore_eos``, as transformers does.
        ``hooks`` (as ``fwd_hooks``) fire at every step; ``names_filter``
        keeps a cache per step. Returns a ``Generation``."""
        tokens, new, outputs = self._m.generate(
            inputs,
            max_new_tokens,
            _hooks(hooks),
            _filter(names_filter),
            do_sample,
            temperature,
            top_k,
            seed,
            ignore_eos,
        )
        caches = by_step(outputs, self._aliases) if names_filter is not None else []
        return Generation(tokens, new, [self._text(n) for n in new], caches, outputs)

    @_contextlib.contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=()):
        """``with model.hooks([(pattern, hook), ...]):`` the hooks fire in
        every pass inside the block (forward, backward, generation) and are
        removed when it ends, also on an error."""
        handle = self._m.add_hooks(_hooks(fwd_hooks), _hooks(bwd_hooks))
        try:
            yield self
        finally:
            self._m.remove_hooks(handle)

    def to_tokens(self, text):
        """The token ids of ``text``."""
        return self._m.to_tokens(text)

    def to_string(self, ids):
        """The text of token ids (a list or a 1-D tensor)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._m.to_string(list(ids))

    def _text(self, ids):
        try:
            return self._m.to_string(ids)
        except FlexModelError:
            return ""

    @property
    def eos_tokens(self):
        """The model's end-of-sequence token ids."""
        return self._m.eos_tokens

    @property
    def vocab_size(self):
        return self._m.vocab_size


def load(path, dtype="f32", device="cpu", tp=1, pp=1, dp=1):
    """Load the Hugging Face model folder ``path`` (config.json,
    *.safetensors, tokenizer.json) as ``dtype`` (f32, f16, bf16) on ``device``
    (cpu, cuda, cuda:N), on ``tp`` x ``pp`` x ``dp`` ranks (threads in this
    process): results are those of one rank."""
    return Model(_native.load(str(path), dtype, device, tp, pp, dp), path)
