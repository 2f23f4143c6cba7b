"""The same API against a ``flexmodel serve`` server (HTTP/JSON, ``/v1``):

    m = flexmodel.remote("http://127.0.0.1:8080", "fm_...").load()
    logits, cache = m.run_with_cache("Hello", names_filter="blocks.0.hook_resid_post")
    logits = m.run_with_hooks("Hello", fwd_hooks=[("blocks.0.hook_resid_post", scale)])

Hooks run on the server, sandboxed: a ``flexmodel.Plugin`` is uploaded
(its component and config; the server's trust policy decides whether it
runs), a string ``"namespace:name@version"`` names a package the server
resolves. Python callables cannot run remotely (the server runs no
tenant's Python). Caching uses the ``retrieve`` plugin (the package ships
one; or pass ``retrieve=`` a ``Plugin`` or a package reference). Every call
is one job: submitted, waited for (Ctrl-C cancels it on the server), and
its result file (safetensors) read back as torch tensors.
"""

import base64
import json
import os
import time
import urllib.error
import urllib.request

from safetensors.torch import load as _load_safetensors

from ._native import FlexModelError, Plugin
from .cache import Cache

_SHIPPED_RETRIEVE = os.path.join(os.path.dirname(__file__), "plugins", "retrieve.wasm")


def remote(url, key, retrieve=None, timeout=600.0):
    """A client of the ``flexmodel serve`` server at ``url`` with the API key
    ``key`` (``flexmodel serve keys add``); ``timeout``: seconds a call waits
    for its job."""
    return Server(url, key, retrieve, timeout)


class Server:
    """A ``flexmodel serve`` server, as one tenant."""

    def __init__(self, url, key, retrieve=None, timeout=600.0):
        self.url = url.rstrip("/")
        self._key = key
        self._retrieve = retrieve
        self.timeout = timeout

    def __repr__(self):
        return f"flexmodel.remote({self.url!r})"

    def _request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except urllib.error.URLError as e:
            raise FlexModelError(f"{self.url}: {e.reason}") from None

    def _json(self, method, path, body=None, ok=(200,)):
        status, raw = self._request(method, path, body)
        if status not in ok:
            try:
                msg = json.loads(raw).get("error", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                msg = raw.decode(errors="replace")
            raise FlexModelError(f"{method} {path}: HTTP {status}: {msg}")
        return json.loads(raw)

    def load(self, path=None, **_layout):
        """The server's model (it serves one, loaded once in its layout:
        ``path`` and the layout arguments of ``flexmodel.load`` are
        accepted for the same call to work, and not needed)."""
        return RemoteModel(self, self._json("GET", "/v1/model"))

    def run(self, body):
        """Submit the job ``body``, wait for it, and return its result
        tensors (Ctrl-C or the timeout cancel it on the server)."""
        job = self._json("POST", "/v1/jobs", body, ok=(200, 202))["id"]
        deadline = time.monotonic() + self.timeout
        try:
            pause = 0.005
            while True:
                st = self._json("GET", f"/v1/jobs/{job}")
                if st["state"] == "done":
                    break
                if st["state"] in ("failed", "cancelled"):
                    raise FlexModelError(f"job {job} {st['state']}: {st.get('error', '')}")
                if time.monotonic() > deadline:
                    raise FlexModelError(f"job {job} did not end within {self.timeout} s")
                time.sleep(pause)
                pause = min(pause * 2, 0.2)
        except BaseException:
            self._request("DELETE", f"/v1/jobs/{job}")
            raise
        status, raw = self._request("GET", f"/v1/jobs/{job}/result")
        if status != 200:
            raise FlexModelError(f"job {job}: result: HTTP {status}")
        return _load_safetensors(raw)

    def hook(self, pattern, hook):
        """A job's hook entry for ``(pattern, hook)``."""
        if isinstance(hook, Plugin):
            with open(hook.path, "rb") as f:
                component = base64.b64encode(f.read()).decode()
            return {"component": component, "at": pattern, "config": json.loads(hook.config)}
        if isinstance(hook, str):
            return {"plugin": hook, "at": pattern}
        if callable(hook):
            raise FlexModelError(
                "a Python callable cannot run on a remote server (it runs no tenant's Python): "
                "use a WASM plugin (flexmodel.Plugin)"
            )
        raise TypeError("a hook is a flexmodel.Plugin or a package reference")

    def retrieve(self):
        r = self._retrieve
        if r is None:
            if not os.path.exists(_SHIPPED_RETRIEVE):
                raise FlexModelError("no retrieve plugin shipped with the package: pass retrieve=")
            r = self._retrieve = Plugin(_SHIPPED_RETRIEVE)
        return r


def _token_body(inputs):
    import torch

    if isinstance(inputs, str):
        return {"prompts": [inputs]}
    if isinstance(inputs, torch.Tensor):
        t = inputs if inputs.dim() == 2 else inputs.unsqueeze(0)
        return {"token_ids": t.tolist()}
    inputs = list(inputs)
    if inputs and all(isinstance(p, str) for p in inputs):
        return {"prompts": inputs}
    return {"token_ids": [list(map(int, p)) for p in inputs]}


def _rows(tensors, n):
    """A result's tensors per prompt: ``{i}/name`` for several prompts."""
    if n == 1:
        return [tensors]
    rows = [{} for _ in range(n)]
    for k, v in tensors.items():
        i, _, name = k.partition("/")
        rows[int(i)][name] = v
    return rows


def _together(parts):
    """Prompts' tensors as the local API returns them: stacked when their
    lengths are equal, otherwise real tokens one after another."""
    import torch

    if len(parts) == 1 or len({tuple(p.shape) for p in parts}) == 1:
        return torch.cat(parts, 0)
    return torch.cat([p.reshape(p.shape[1:]) if p.shape[0] == 1 else p for p in parts], 0)


class RemoteModel:
    """The model a ``flexmodel serve`` server holds, with ``flexmodel.Model``'s
    calls (those a server offers: no backward pass, no Python hooks)."""

    def __init__(self, server, info):
        self._s = server
        self.info = info
        self._aliases = {}
        for p in info["hook_points"]:
            for a in [p.get("alias", "")] + p.get("aliases", []):
                if a:
                    self._aliases.setdefault(a, p["name"])

    def __repr__(self):
        return f"RemoteModel({self.info['architecture']} at {self._s.url})"

    @property
    def vocab_size(self):
        return self.info["vocab_size"]

    def hook_points(self, seq_len=1):
        """Every hook point as ``(name, aliases, shape)``; shapes for one
        token (the server reports those)."""
        return [
            (p["name"], [a for a in [p.get("alias", "")] + p.get("aliases", []) if a], p["shape"])
            for p in self.info["hook_points"]
        ]

    def _run(self, inputs, hooks, padding, **extra):
        body = dict(_token_body(inputs), hooks=hooks, padding=padding, **extra)
        n = len(body.get("prompts") or body.get("token_ids"))
        return _rows(self._s.run(body), n)

    def run_with_cache(self, inputs, names_filter=None, stop_at=None, padding="right"):
        """As ``flexmodel.Model.run_with_cache``, on the server (the
        ``retrieve`` plugin at every point ``names_filter`` selects). The
        server returns each prompt's own rows: for prompts of different
        lengths the logits, too, hold the real tokens one after another."""
        names = [names_filter] if isinstance(names_filter, str) else list(names_filter or ["**"])
        r = self._s.retrieve()
        hooks = [self._s.hook(p, r) for p in names]
        extra = {"stop_at": stop_at} if stop_at else {}
        rows = self._run(inputs, hooks, padding, **extra)
        logits = None if stop_at else _together([row["logits"] for row in rows])
        keys = [k for k in rows[0] if k != "logits"]
        cache = Cache({k: _together([row[k] for row in rows]) for k in keys}, self._aliases)
        return logits, cache

    def run_with_hooks(self, inputs, fwd_hooks=(), bwd_hooks=(), loss=None, padding="right", return_outputs=False):
        """As ``flexmodel.Model.run_with_hooks``, the hooks run on the server
        (forward hooks only: a server runs no backward pass)."""
        if bwd_hooks or loss is not None:
            raise FlexModelError("flexmodel serve runs forward passes and generation, not backward passes")
        hooks = [self._s.hook(p, h) for p, h in fwd_hooks]
        rows = self._run(inputs, hooks, padding)
        logits = _together([row.pop("logits") for row in rows])
        if not return_outputs:
            return logits
        keys = list(rows[0])
        return logits, {k: _together([row[k] for row in rows]) for k in keys}

    def backward(self, *args, **kwargs):
        raise FlexModelError("flexmodel serve runs forward passes and generation, not backward passes")

    def generate(self, inputs, max_new_tokens=16, hooks=(), ignore_eos=False, **_sampling):
        """Greedy generation on the server (as ``flexmodel.Model.generate``;
        a server generates greedily)."""
        from . import Generation

        body_hooks = [self._s.hook(p, h) for p, h in hooks]
        rows = self._run(inputs, body_hooks, "left", max_new_tokens=max_new_tokens, ignore_eos=ignore_eos)
        tokens = [row.pop("tokens") for row in rows]
        prompts = _token_body(inputs).get("token_ids")
        new = []
        for i, t in enumerate(tokens):
            t = t.reshape(-1).tolist()
            start = len(prompts[i]) if prompts else None
            # For prompts given as text, the client does not know where the
            # prompt ends (the server tokenizes): `None`.
            new.append(t[start:] if start is not None else None)
        outputs = {f"{i}/{k}" if len(rows) > 1 else k: v for i, row in enumerate(rows) for k, v in row.items()}
        return Generation(tokens, new, [""] * len(new), [], outputs)
