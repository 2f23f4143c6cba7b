"""The conformance and cost guest in Python: what tests/guests/conform (Rust)
does, bit for bit; see its modes there."""

import math
import os
import struct
from array import array

from flexmodel_hook import Access, Config, ConfigError, Failed, Hook, Info, Slice, emit, export, random, state

MODES = ("state", "random", "fail", "trap", "spin", "empty", "read", "norm", "scale")


class Conform(Hook):
    info = Info("conform", "0.1.0", "Conformance and cost guest", edits=True)

    def init(self, config: Config) -> Access:
        config.fields("mode", "factor")
        if "mode" not in config.raw:
            raise ConfigError("missing field `mode`")
        self.mode = config.str("mode")
        self.factor = config.f32("factor", default=1.0)
        if self.mode not in MODES:
            raise ConfigError(f'unknown mode "{self.mode}"')
        if self.mode in ("fail", "trap", "spin", "scale"):
            return Access.edits()
        return Access.read_only()

    def forward(self, ctx, act) -> None:
        m = self.mode
        if m == "state":
            b = state.get("count")
            n = (struct.unpack("<Q", b)[0] if b is not None and len(b) == 8 else 0) + 1
            state.set("count", struct.pack("<Q", n))
            emit("count", [1], [float(n)])
        elif m == "random":
            emit("uniform", [8], random.uniform(8))
            emit("normal", [8], random.normal(8))
            u = random.next_u64()
            emit("u64", [4], [float((u >> (16 * i)) & 0xFFFF) for i in range(4)])
        elif m in ("fail", "trap", "spin"):
            act.fill(Slice.all(), 7.0)
            if m == "fail":
                raise Failed("failed on purpose")
            if m == "trap":
                os.abort()
            x = 1
            while True:
                x = (x * 6364136223846793005 + 1) & 0xFFFFFFFFFFFFFFFF
        elif m == "empty":
            pass
        elif m == "read":
            act.read_bytes(0, act.numel)
        elif m == "norm":
            d = max(ctx.shape[-1] if ctx.shape else 1, 1)
            v = array("f")
            v.frombytes(act.read_bytes(0, act.numel))
            rows = len(v) // d
            out = array("f", bytes(4 * rows))
            for r in range(rows):
                s = 0.0
                for x in v[r * d : (r + 1) * d]:
                    s += x * x
                out[r] = math.sqrt(s)
            emit("norm", [rows], out)
        else:
            act.scale(Slice.all(), self.factor)


Plugin = export(Conform)
