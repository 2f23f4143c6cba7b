"""Caches of activations by hook-point name, aliases included."""


class Cache(dict):
    """Activations by canonical hook-point name; TransformerLens aliases
    (``blocks.3.hook_resid_post``) and other aliases index it too."""

    def __init__(self, tensors, aliases):
        super().__init__(tensors)
        self._aliases = aliases

    def __getitem__(self, key):
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        name = self._aliases.get(key)
        if name is not None and dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        raise KeyError(key)

    def __contains__(self, key):
        return dict.__contains__(self, key) or (
            key in self._aliases and dict.__contains__(self, self._aliases[key])
        )

    def get(self, key, default=None):
        return self[key] if key in self else default


def by_step(outputs, aliases):
    """``step{k}/<point>`` outputs as one ``Cache`` per step, in order."""
    steps = {}
    for key, t in outputs.items():
        head, _, rest = key.partition("/")
        if head.startswith("step") and head[4:].isdigit() and rest:
            steps.setdefault(int(head[4:]), {})[rest] = t
    return [Cache(steps[k], aliases) for k in sorted(steps)]
