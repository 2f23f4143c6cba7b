"""`scale` in Python: multiply the activation, or a slice of it, by a factor.

The same configuration as the Rust plugin (plugins/scale):
    {"factor": 2.0, "slice": [null, -1]}     # slice optional
plus `"via_guest": true`, which reads the values into Python as raw bytes,
multiplies them there and writes them back (instead of asking the host to
scale): data movement in a guest language, for the benchmarks.

Build: componentize-py -d wit -w hook-plugin componentize -p plugins/scale-py -p hook-sdk/python app -o scale-py.wasm
"""

import math

from flexmodel_hook import Access, Config, ConfigError, Hook, Info, Unsupported, export, f32, log


class Scale(Hook):
    info = Info("scale-py", "0.1.0", "Multiply the activation, or a slice of it, by a factor", edits=True)

    def init(self, config: Config) -> Access:
        config.fields("factor", "slice", "via_guest")
        self.factor = config.f32("factor", required=True)
        self.slice = config.slice("slice")
        self.via_guest = config.bool("via_guest")
        if not math.isfinite(self.factor):
            raise ConfigError("factor must be finite")
        return Access.edits()

    def forward(self, ctx, act) -> None:
        if not self.via_guest:
            act.scale(self.slice, self.factor)
            return
        if self.slice.dims:
            raise Unsupported("via_guest works on the whole tensor")
        n, chunk, factor = act.numel, 16384, self.factor
        for off in range(0, n, chunk):
            vals = act.read(off, min(chunk, n - off))
            for i in range(len(vals)):
                vals[i] *= factor
            act.write(off, vals)
        log.debug(f"scaled {n} values in Python at {ctx.hook_point}")


Plugin = export(Scale)
