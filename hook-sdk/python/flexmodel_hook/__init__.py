"""Write FlexModel HookFunctions in Python (componentize-py).

A thin layer over the bindings componentize-py generates from ``wit/``
(``wit_world``, never edited), with the concepts of the Rust SDK: a hook is a
class with ``info``, ``init(config)`` returning its ``Access``, and
``forward(ctx, act)``; ``export`` turns it into the component's ``Plugin``::

    from flexmodel_hook import Access, Config, Hook, Info, export

    class Scale(Hook):
        info = Info("scale", "0.1.0", "Multiply the activation by a factor", edits=True)

        def init(self, config: Config) -> Access:
            config.fields("factor", "slice")
            self.factor = config.f32("factor", required=True)
            self.slice = config.slice("slice")
            return Access.edits()

        def forward(self, ctx, act):
            act.scale(self.slice, self.factor)

    Plugin = export(Scale)

The activation stays in host memory: read only what you need
(``act.read`` / ``read_bytes`` / ``read_slice``: f32 reads arrive as
``array('f')`` built from the raw bytes, ~80x faster than a ``list<f32>``),
edit with host-side bulk ops (``fill``, ``scale``, ``add_vector``), emit
into the output dictionary (``emit``, ``emit_real``, ``flexmodel_hook.emit``).
Errors are exceptions: raise ``ConfigError``, ``ArgumentError``,
``Unsupported``, ``LimitExceeded`` or ``Failed`` (any other exception fails
the call as ``failed``); a host call's error raises the same classes.

Build: ``componentize-py -d wit -w hook-plugin componentize -p PLUGIN_DIR
-p hook-sdk/python app -o plugin.wasm`` (docs/hooks/python.md).
"""

from .activation import Activation
from .config import Config
from .errors import (
    ArgumentError,
    ConfigError,
    Error,
    Failed,
    LimitExceeded,
    Unsupported,
)
from .hook import Access, Context, Hook, Info, export
from .host import emit, emit_bytes, log, random, state
from .slice import Dim, Slice, f32

__all__ = [
    "Access",
    "Activation",
    "ArgumentError",
    "Config",
    "ConfigError",
    "Context",
    "Dim",
    "Error",
    "Failed",
    "Hook",
    "Info",
    "LimitExceeded",
    "Slice",
    "Unsupported",
    "emit",
    "emit_bytes",
    "export",
    "f32",
    "log",
    "random",
    "state",
]
