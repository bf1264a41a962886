"""Methods, one file each, registered by name for `clipadapt run METHOD`.

A method class has a `Config` dataclass, is built as `Method(backbone, config)`, and exposes
`logits(features, classnames, template_key=None)` on image features; methods that learn also have
`fit(train, classnames, val=None, template_key=None, out_dir=None, progress=True) -> dict` on cached features
(`out_dir` takes their checkpoints or weights; the returned summary goes into metrics.json as `training`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ..config import build_config
from ..errors import ClipadaptError

METHODS: dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    def register(cls: type) -> type:
        METHODS[name] = cls
        return cls

    return register


def build_method(name: str, backbone, values: dict[str, Any] | None = None, source: str = "overrides",
                 seed: int | None = None):
    """The method `name` on `backbone` with its config built from defaults plus `values`; a method with a `seed`
    in its config gets the run's `seed` unless `values` sets one."""
    if name not in METHODS:
        raise ClipadaptError(f"unknown method '{name}'; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    values = dict(values or {})
    if seed is not None and "seed" in {f.name for f in dataclasses.fields(cls.Config)}:
        values.setdefault("seed", seed)
    return cls(backbone, build_config(cls.Config, values, source=source))


from . import zeroshot  # noqa: E402,F401  (registers itself)
from . import linear_probe  # noqa: E402,F401  (registers itself)
from . import coop  # noqa: E402,F401  (registers itself)
from . import cocoop  # noqa: E402,F401  (registers itself)
