"""Methods, one file each, registered by name for `clipadapt run METHOD`.

A method class has a `Config` dataclass, is built as `Method(backbone, config)`, and exposes
`logits(features, classnames, template_key=None)` on image features; methods that learn also have
`fit(train, classnames, val=None, template_key=None)` on cached features.
"""
from __future__ import annotations

from typing import Any, Callable

from ..config import build_config
from ..errors import ClipadaptError

METHODS: dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    def register(cls: type) -> type:
        METHODS[name] = cls
        return cls

    return register


def build_method(name: str, backbone, values: dict[str, Any] | None = None, source: str = "overrides"):
    """The method `name` on `backbone` with its config built from defaults plus `values`."""
    if name not in METHODS:
        raise ClipadaptError(f"unknown method '{name}'; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    return cls(backbone, build_config(cls.Config, values, source=source))


from . import zeroshot  # noqa: E402,F401  (registers itself)
from . import linear_probe  # noqa: E402,F401  (registers itself)
