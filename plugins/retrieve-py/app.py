"""`retrieve` in Python: emit the activation, or a slice of it, into the
output dictionary (the host copies it; nothing crosses the sandbox).

The same configuration as the Rust plugin (plugins/retrieve):
    {"slice": [null, -1], "name": "last", "padding": "drop"}   # all optional
In a padded batch "drop" (the default) keeps real tokens only.
"""

from flexmodel_hook import Access, Config, ConfigError, Hook, Info, export


class Retrieve(Hook):
    info = Info("retrieve-py", "0.2.0", "Save the activation (or a slice of it) to the output dictionary")

    def init(self, config: Config) -> Access:
        config.fields("slice", "name", "padding")
        self.slice = config.slice("slice")
        self.name = config.str("name", "")
        padding = config.str("padding", "drop")
        if padding not in ("drop", "keep"):
            raise ConfigError(f'`padding`: expected "drop" or "keep", got "{padding}"')
        self.keep = padding == "keep"
        return Access.read_only(reads=self.slice)

    def forward(self, ctx, act) -> None:
        if ctx.real_tokens is not None and ctx.token_dim is not None and not self.keep:
            act.emit_real(self.name, self.slice)
        else:
            act.emit(self.name, self.slice)


Plugin = export(Retrieve)
