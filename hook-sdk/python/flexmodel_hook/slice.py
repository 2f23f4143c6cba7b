"""Slices of an activation (Python slice semantics; out-of-range bounds are
the host's errors), and f32 rounding for arithmetic that must match the
other languages bit for bit."""

from array import array
from dataclasses import dataclass
from typing import List, Optional

from wit_world.imports import types


def f32(x: float) -> float:
    """``x`` rounded to the nearest f32 (as a C cast or Rust ``as f32``).
    One operation on f32 values computed in Python floats and rounded with
    this gives the f32 result exactly (binary64 has more than 2 * 24 + 2
    bits)."""
    return array("f", [x])[0]


@dataclass(frozen=True)
class Dim:
    """One dimension: ``start`` (negative from the end), ``stop`` (None: to
    the end), ``step`` >= 1."""

    start: int = 0
    stop: Optional[int] = None
    step: int = 1

    @staticmethod
    def index(i: int) -> "Dim":
        return Dim(i, None if i == -1 else i + 1, 1)


class Slice:
    """One ``Dim`` per leading dimension, the rest whole."""

    def __init__(self, dims: Optional[List[Dim]] = None):
        self.dims = list(dims or [])

    @staticmethod
    def all() -> "Slice":
        return Slice()

    @staticmethod
    def token(pos: int) -> "Slice":
        """Token ``pos`` of every sequence of a ``[batch, seq, ...]`` point."""
        return Slice([Dim(), Dim.index(pos)])

    @staticmethod
    def last_token() -> "Slice":
        return Slice.token(-1)

    def to_wit(self) -> List[types.DimRange]:
        return [types.DimRange(start=d.start, stop=d.stop, step=d.step) for d in self.dims]


def as_wit(s) -> List[types.DimRange]:
    if s is None:
        return []
    return s.to_wit()
