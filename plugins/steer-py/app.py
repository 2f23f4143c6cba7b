"""`steer` in Python: add `alpha * vector` to every position's last-dimension
row (activation addition).

The same configuration as the Rust plugin (plugins/steer):
    {"vector": [...], "alpha": 4.0, "positions": [-1], "normalize": false,
     "new_tokens_only": false}
Arithmetic on the vector is rounded to f32 after every operation (`f32`),
so a normalized vector is bit-identical to the Rust plugin's.
"""

import math

from flexmodel_hook import Access, ArgumentError, Config, ConfigError, Hook, Info, Slice, export, f32


class Steer(Hook):
    info = Info(
        "steer-py",
        "0.1.0",
        "Add a scaled steering vector to the residual stream",
        hook_points=["blocks.*.hook_resid_*"],
        edits=True,
    )

    def init(self, config: Config) -> Access:
        config.fields("vector", "alpha", "positions", "normalize", "new_tokens_only")
        self.vector = config.f32_list("vector", required=True)
        self.alpha = config.f32("alpha", default=1.0)
        self.positions = config.int_list("positions")
        normalize = config.bool("normalize")
        self.new_tokens_only = config.bool("new_tokens_only")
        if not self.vector:
            raise ConfigError("`vector` must not be empty")
        if not all(math.isfinite(v) for v in self.vector) or not math.isfinite(self.alpha):
            raise ConfigError("`vector` and `alpha` must be finite")
        if normalize:
            n = 0.0
            for v in self.vector:
                n = f32(n + f32(v * v))
            n = f32(math.sqrt(n))
            if n == 0.0:
                raise ConfigError("cannot normalize a zero vector")
            self.vector = [f32(v / n) for v in self.vector]
        return Access.edits()

    def forward(self, ctx, act) -> None:
        if self.new_tokens_only and not (ctx.generation is not None and ctx.generation[0] > 0):
            return
        d = ctx.shape[-1] if ctx.shape else 0
        if d != len(self.vector):
            raise ArgumentError(
                f"steering vector has {len(self.vector)} elements but {ctx.hook_point} has last dimension {d}"
            )
        if not self.positions:
            act.add_vector(Slice.all(), self.vector, self.alpha)
            return
        for p in self.positions:
            act.add_vector(Slice.token(p), self.vector, self.alpha)


Plugin = export(Steer)
