"""Host interfaces other than the activation: emit, state, log, random."""

from array import array
from typing import List, Optional, Sequence

from wit_world.imports import log as _log
from wit_world.imports import output, types
from wit_world.imports import random as _random
from wit_world.imports import state as _state

from .errors import host_call


def emit(name: str, shape: Sequence[int], values: Sequence[float]) -> None:
    """Emit an f32 tensor (sent as raw bytes)."""
    buf = values if isinstance(values, array) and values.typecode == "f" else array("f", values)
    host_call(output.emit_bytes, name, list(shape), types.Dtype.F32, buf.tobytes())


def emit_bytes(name: str, shape: Sequence[int], dtype, data: bytes) -> None:
    host_call(output.emit_bytes, name, list(shape), dtype, data)


class state:
    """Bytes that outlive a call (per registration and rank)."""

    @staticmethod
    def get(key: str) -> Optional[bytes]:
        return _state.get(key)

    @staticmethod
    def set(key: str, value: bytes) -> None:
        host_call(_state.set, key, bytes(value))

    @staticmethod
    def remove(key: str) -> None:
        _state.remove(key)

    @staticmethod
    def keys() -> List[str]:
        return list(_state.keys())


class log:
    """Messages for the user, tagged by the host."""

    @staticmethod
    def debug(msg: str) -> None:
        _log.log(_log.Level.DEBUG, msg)

    @staticmethod
    def info(msg: str) -> None:
        _log.log(_log.Level.INFO, msg)

    @staticmethod
    def warn(msg: str) -> None:
        _log.log(_log.Level.WARN, msg)

    @staticmethod
    def error(msg: str) -> None:
        _log.log(_log.Level.ERROR, msg)


class random:
    """The host-seeded random stream (the same on every rank)."""

    @staticmethod
    def next_u64() -> int:
        return _random.next_u64()

    @staticmethod
    def uniform(n: int) -> List[float]:
        return list(_random.uniform(n))

    @staticmethod
    def normal(n: int) -> List[float]:
        return list(_random.normal(n))
