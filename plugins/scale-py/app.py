"""`scale-py`: the `scale` HookFunction written in Python (componentize-py).

Same configuration as the Rust `scale` plugin:
    {"factor": 2.0, "slice": [null, -1]}     # slice optional
plus `"via_guest": true`, which reads the values into Python as raw bytes,
multiplies them there and writes them back (instead of asking the host to
scale), to exercise data movement in a second guest language.

Build: componentize-py -d wit -w hook-plugin componentize -p plugins/scale-py app -o scale-py.wasm
"""

import json
import math
from array import array

import wit_world
from wit_world.exports import Plugin as _PluginProtocol  # noqa: F401 (documents the contract)
from wit_world.imports import types, log
from componentize_py_types import Err

_state = {"factor": 1.0, "slice": [], "via_guest": False}


def _dim(spec):
    """One JSON slice entry -> types.DimRange (see the Rust SliceSpec)."""
    if spec is None:
        return types.DimRange(start=0, stop=None, step=1)
    if isinstance(spec, bool):
        raise ValueError(f"bad slice entry {spec!r}")
    if isinstance(spec, int):
        return types.DimRange(start=spec, stop=None if spec == -1 else spec + 1, step=1)
    if isinstance(spec, list) and len(spec) in (2, 3):
        start = spec[0] if spec[0] is not None else 0
        step = spec[2] if len(spec) == 3 and spec[2] is not None else 1
        if step < 1:
            raise ValueError(f"slice step {step} must be >= 1")
        return types.DimRange(start=start, stop=spec[1], step=step)
    raise ValueError(f"bad slice entry {spec!r}")


class Plugin(wit_world.exports.Plugin):
    def metadata(self) -> types.PluginInfo:
        return types.PluginInfo(
            name="scale-py",
            version="0.1.0",
            description="Multiply the activation by a factor (Python guest)",
            hook_points=[],
            edits=True,
        )

    def init(self, config: str) -> types.Access:
        try:
            c = json.loads(config or "{}")
            allowed = {"factor", "slice", "via_guest"}
            unknown = set(c) - allowed
            if unknown:
                raise ValueError(f"unknown field(s) {sorted(unknown)}")
            factor = float(c["factor"])
            if not math.isfinite(factor):
                raise ValueError("factor must be finite")
            _state["factor"] = factor
            _state["slice"] = [_dim(d) for d in c.get("slice", [])]
            _state["via_guest"] = bool(c.get("via_guest", False))
        except (ValueError, KeyError, TypeError) as e:
            raise Err(types.HookError_InvalidConfig(f"{type(e).__name__}: {e}"))
        return types.Access(mode=types.EditMode.IN_PLACE, reads=None)

    def on_forward(self, ctx: types.CallContext, act) -> None:
        factor = _state["factor"]
        if not _state["via_guest"]:
            act.scale(_state["slice"], factor)
            return
        if _state["slice"]:
            raise Err(types.HookError_Unsupported("via_guest works on the whole tensor"))
        if ctx.dtype != types.Dtype.F32:
            raise Err(types.HookError_Unsupported("via_guest needs an f32 activation"))
        n = act.numel()
        chunk = 16384
        off = 0
        while off < n:
            length = min(chunk, n - off)
            vals = array("f")
            vals.frombytes(act.read_bytes(off, length))
            for i in range(length):
                vals[i] *= factor
            act.write_bytes(off, vals.tobytes())
            off += length
        log.log(log.Level.DEBUG, f"scaled {n} values in Python at {ctx.hook_point}")
