"""A hook's JSON configuration, checked as the Rust SDK's serde derive
checks it: strict JSON (no NaN or Infinity), an object, no unknown or
duplicate field, each field of its type (null is a wrong type), defaults
for missing fields. Every failure is a ``ConfigError`` naming the field."""

import json
from typing import List, Optional

from .errors import ConfigError
from .slice import Dim, Slice, f32

_I64 = (-(2**63), 2**63 - 1)


def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def _pairs(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ConfigError(f"duplicate field `{k}`")
        out[k] = v
    return out


def _no_constant(name):
    raise ConfigError(f"configuration is not JSON: {name}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and _I64[0] <= v <= _I64[1]


class Config:
    """The parsed configuration; getters check and convert."""

    def __init__(self, text: str):
        text = text or ""
        if not text.strip():
            text = "{}"
        try:
            self.raw = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"configuration is not JSON: {e}") from None
        # Duplicate keys are refused at the top level only (fields); nested
        # objects are not part of any example's schema.

    def fields(self, *allowed: str) -> None:
        """The configuration is an object with only these fields."""
        if not isinstance(self.raw, dict):
            raise ConfigError(f"configuration: expected an object, got {_kind(self.raw)}")
        for k in self.raw:
            if k not in allowed:
                raise ConfigError(f"unknown field `{k}`")

    def _get(self, key):
        return self.raw.get(key, _MISSING) if isinstance(self.raw, dict) else _MISSING

    def f32(self, key: str, required: bool = False, default: float = 0.0) -> float:
        v = self._get(key)
        if v is _MISSING:
            if required:
                raise ConfigError(f"missing field `{key}`")
            return f32(default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"`{key}`: expected a number, got {_kind(v)}")
        return f32(float(v))

    def bool(self, key: str, default: bool = False) -> bool:
        v = self._get(key)
        if v is _MISSING:
            return default
        if not isinstance(v, bool):
            raise ConfigError(f"`{key}`: expected a boolean, got {_kind(v)}")
        return v

    def str(self, key: str, default: str = "") -> str:
        v = self._get(key)
        if v is _MISSING:
            return default
        if not isinstance(v, str):
            raise ConfigError(f"`{key}`: expected a string, got {_kind(v)}")
        return v

    def f32_list(self, key: str, required: bool = False) -> List[float]:
        v = self._get(key)
        if v is _MISSING:
            if required:
                raise ConfigError(f"missing field `{key}`")
            return []
        if not isinstance(v, list) or any(
            isinstance(x, bool) or not isinstance(x, (int, float)) for x in v
        ):
            raise ConfigError(f"`{key}`: expected a list of numbers")
        return [f32(float(x)) for x in v]

    def int_list(self, key: str) -> List[int]:
        v = self._get(key)
        if v is _MISSING:
            return []
        if not isinstance(v, list) or not all(_is_int(x) for x in v):
            raise ConfigError(f"`{key}`: expected a list of integers")
        return list(v)

    def slice(self, key: str = "slice") -> Slice:
        """A slice as written in a configuration: a list, one entry per
        leading dimension, each null, an integer, [start, stop] or [start,
        stop, step]; missing: the whole tensor."""
        v = self._get(key)
        if v is _MISSING:
            return Slice()
        if not isinstance(v, list):
            raise ConfigError(f"slice: expected a list, got {_kind(v)}")
        dims = []
        for i, d in enumerate(v):
            if d is None:
                dims.append(Dim())
            elif _is_int(d):
                dims.append(Dim.index(d))
            elif isinstance(d, list) and len(d) in (2, 3):
                if not all(x is None or _is_int(x) for x in d):
                    raise ConfigError(f"slice entry {i}: bounds must be integers or null")
                start = d[0] if d[0] is not None else 0
                step = d[2] if len(d) == 3 and d[2] is not None else 1
                if step < 1:
                    raise ConfigError(f"slice step {step} must be >= 1")
                dims.append(Dim(start, d[1], step))
            else:
                raise ConfigError(
                    f"slice entry {i} must be null, an integer, [start, stop] or [start, stop, step]"
                )
        return Slice(dims)


class _Missing:
    pass


_MISSING = _Missing()
