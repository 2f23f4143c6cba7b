"""The activation of a call: a host tensor read and written by range, with
host-side bulk operations. f32 reads go through ``read-bytes`` (a
``list<u8>`` lowers ~80x faster than a ``list<f32>`` in componentize-py)."""

from array import array
from typing import List, Sequence

from wit_world.imports import output, tokens, types

from .errors import host_call
from .slice import Slice, as_wit

CHUNK = 1 << 16
"""Elements per read of ``read_all``."""


class Activation:
    """A view of the call's activation (valid during the call)."""

    def __init__(self, raw, shape: List[int], dtype):
        self.raw = raw
        self.shape = shape
        self.dtype = dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def writable(self) -> bool:
        return self.raw.writable()

    def read(self, offset: int, length: int) -> array:
        """``length`` elements from flat element ``offset``, as ``array('f')``."""
        if self.dtype == types.Dtype.F32:
            out = array("f")
            out.frombytes(host_call(self.raw.read_bytes, offset, length))
            return out
        return array("f", host_call(self.raw.read, offset, length))

    def read_bytes(self, offset: int, length: int) -> bytes:
        """Raw little-endian bytes in the native dtype."""
        return host_call(self.raw.read_bytes, offset, length)

    def read_all(self) -> array:
        """The whole activation as ``array('f')`` (read in chunks)."""
        out = array("f")
        n = self.numel
        for off in range(0, n, CHUNK):
            out.extend(self.read(off, min(CHUNK, n - off)))
        return out

    def read_slice(self, s: Slice) -> array:
        return array("f", host_call(self.raw.read_slice, as_wit(s)))

    def slice_shape(self, s: Slice) -> List[int]:
        return list(host_call(self.raw.slice_shape, as_wit(s)))

    def write(self, offset: int, values: Sequence[float]) -> None:
        if self.dtype == types.Dtype.F32:
            buf = values if isinstance(values, array) and values.typecode == "f" else array("f", values)
            host_call(self.raw.write_bytes, offset, buf.tobytes())
        else:
            host_call(self.raw.write, offset, list(values))

    def write_bytes(self, offset: int, data: bytes) -> None:
        host_call(self.raw.write_bytes, offset, data)

    def write_slice(self, s: Slice, values: Sequence[float]) -> None:
        host_call(self.raw.write_slice, as_wit(s), list(values))

    def fill(self, s: Slice, value: float) -> None:
        host_call(self.raw.fill, as_wit(s), value)

    def zero(self, s: Slice) -> None:
        self.fill(s, 0.0)

    def scale(self, s: Slice, factor: float) -> None:
        host_call(self.raw.scale, as_wit(s), factor)

    def add_vector(self, s: Slice, v: Sequence[float], alpha: float) -> None:
        host_call(self.raw.add_vector, as_wit(s), list(v), alpha)

    def emit(self, name: str, s: Slice = None) -> None:
        """Emit a slice into the output dictionary (copied by the host)."""
        host_call(output.emit_activation, name, self.raw, as_wit(s))

    def emit_real(self, name: str, s: Slice = None) -> None:
        """Like ``emit``, real tokens only: ``s`` applies to each row's real
        part; the rows' tokens stacked, ``[tokens, ...]``."""
        host_call(tokens.emit_real, name, self.raw, as_wit(s))
