"""A hook class, what it declares, and ``export``: the component's
``Plugin`` (the world's exports) dispatching to it."""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from wit_world import exports as _exports
from componentize_py_types import Err
from wit_world.imports import generation, pass_, tokens, types

from .activation import Activation
from .config import Config
from .errors import Error, Failed
from .slice import Slice


@dataclass
class Info:
    """What the plugin says about itself."""

    name: str
    version: str
    description: str
    hook_points: List[str] = field(default_factory=list)
    edits: bool = False


@dataclass
class Access:
    """How the hook edits (``read-only``, ``in-place``, ``replace``) and the
    only part it reads, if known (the host gathers no more)."""

    mode: types.EditMode = types.EditMode.READ_ONLY
    reads: Optional[Slice] = None

    @staticmethod
    def read_only(reads: Optional[Slice] = None) -> "Access":
        return Access(types.EditMode.READ_ONLY, reads)

    @staticmethod
    def edits() -> "Access":
        return Access(types.EditMode.IN_PLACE)

    @staticmethod
    def replaces() -> "Access":
        return Access(types.EditMode.REPLACE)


@dataclass
class Context:
    """Where and when the hook is called."""

    hook_point: str
    shape: List[int]
    dtype: object
    rank: object
    forward_index: int
    # (step, position) while generating; None in a plain forward.
    generation: Optional[Tuple[int, int]]
    backward: bool
    token_dim: Optional[int]
    # Each row's real tokens (start, len) in a padded batch; None when all are real.
    real_tokens: Optional[List[Tuple[int, int]]]


class Hook:
    """Subclass it: set ``info``, define ``init(config) -> Access`` and
    ``forward(ctx, act)``."""

    info: Info

    def init(self, config: Config) -> Access:
        return Access.read_only()

    def forward(self, ctx: Context, act: Activation) -> None:
        raise NotImplementedError


def _call(f, *args):
    try:
        return f(*args)
    except Error as e:
        raise e.to_wit() from None
    except Err:
        raise
    except Exception as e:  # a bug in the hook: fail the call, say what
        raise Failed(f"{type(e).__name__}: {e}").to_wit() from None


def export(cls):
    """The ``Plugin`` class componentize-py exports for hook class ``cls``."""
    live = {}

    class Plugin(_exports.Plugin):
        def metadata(self) -> types.PluginInfo:
            i = cls.info
            return types.PluginInfo(
                name=i.name,
                version=i.version,
                description=i.description,
                hook_points=list(i.hook_points),
                edits=i.edits,
            )

        def init(self, config: str) -> types.Access:
            def make():
                h = cls()
                a = h.init(Config(config))
                live["hook"] = h
                return a

            a = _call(make)
            reads = None if a.reads is None else a.reads.to_wit()
            return types.Access(mode=a.mode, reads=reads)

        def on_forward(self, ctx: types.CallContext, act) -> None:
            h = live.get("hook")
            if h is None:
                raise Err(types.HookError_Failed("hook called before init"))
            g = generation.current()
            spans = tokens.real_tokens()
            c = Context(
                hook_point=ctx.hook_point,
                shape=list(ctx.shape),
                dtype=ctx.dtype,
                rank=ctx.rank,
                forward_index=ctx.forward_index,
                generation=None if g is None else (g.step, g.position),
                backward=pass_.current_direction() == pass_.Direction.BACKWARD,
                token_dim=tokens.token_dim(),
                real_tokens=None if spans is None else [(s.start, s.len) for s in spans],
            )
            _call(h.forward, c, Activation(act, c.shape, ctx.dtype))

    return Plugin
