"""Options read from constructor signatures, where a class declares its own options and passes ``**options`` on to
its base, which declares the shared ones once (the neural models, the flow layers)."""

from __future__ import annotations

import inspect


def keyword_options(cls: type) -> list[str]:
    """The named options of ``cls(...)``: its ``__init__``'s parameters and, while an ``__init__`` takes ``**options``
    to pass on, those of the next base along the MRO that defines one (in that order, without repeats)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]  # without self
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


__all__ = ["keyword_options"]
