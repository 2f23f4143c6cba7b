"""Typed hook errors: each class is one ``hook-error`` variant of the WIT
contract. A plugin raises them; a host call that fails raises them too."""

from componentize_py_types import Err
from wit_world.imports import types


class Error(Exception):
    """A hook error; subclasses name the variant."""

    variant = types.HookError_Failed

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_wit(self) -> Err:
        return Err(self.variant(self.message))


class ConfigError(Error):
    """The configuration could not be used (``invalid-config``)."""

    variant = types.HookError_InvalidConfig


class ArgumentError(Error):
    """An argument was out of range or of the wrong length (``invalid-argument``)."""

    variant = types.HookError_InvalidArgument


class Unsupported(Error):
    """The activation's shape or dtype is not supported (``unsupported``)."""

    variant = types.HookError_Unsupported


class LimitExceeded(Error):
    """A host limit was reached (``limit-exceeded``)."""

    variant = types.HookError_LimitExceeded


class Failed(Error):
    """Any other failure (``failed``)."""

    variant = types.HookError_Failed


_BY_VARIANT = {
    types.HookError_InvalidConfig: ConfigError,
    types.HookError_InvalidArgument: ArgumentError,
    types.HookError_Unsupported: Unsupported,
    types.HookError_LimitExceeded: LimitExceeded,
    types.HookError_Failed: Failed,
}


def host_call(f, *args):
    """Call a host function; its ``hook-error`` becomes one of ours."""
    try:
        return f(*args)
    except Err as e:
        cls = _BY_VARIANT.get(type(e.value), Failed)
        raise cls(getattr(e.value, "value", str(e.value))) from None
