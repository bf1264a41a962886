"""Methods, one file each, registered by name for `clipadapt run METHOD`.

A method class has a `Config` dataclass, is built as `Method(backbone, config)`, and exposes
`logits(features, classnames, template_key=None)` on image features; methods that learn also have
`fit(train, classnames, val=None, template_key=None, out_dir=None, progress=True) -> dict` on cached features
(`out_dir` takes their checkpoints or weights; the returned summary goes into metrics.json as `training`).
Optional parts of the interface, which the protocols look for:
- `fit(..., synthetic=None, synthetic_ratio=1.0)`: trains with generated features mixed into every batch (what
  `METHOD+ship` needs); `uses_unseen_classnames = True`: `fit` also gets `unseen_classnames`, the names of the
  classes the protocol tests without training data (names only).
- `scores_unseen_classes = False`: scores only its training classes (base2new reports base accuracy only).
- `fit_images(splits, out_dir, progress, num_workers)` and `image_logits(samples, classnames, ...)` instead of
  `fit`/`logits`: the method tunes its image encoder, so it trains and predicts on images (MP-FGVC).
- `synthesis_quality(real, classnames, sample_path=None)`, `selects_tokens` with
  `kept_token_overlap(samples, parts)`: diagnostics written to metrics.json (and a feature sample and overlay
  examples that `clipadapt report` plots).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from ..config import build_config
from ..errors import ClipadaptError

METHODS: dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    def register(cls: type) -> type:
        METHODS[name] = cls
        return cls

    return register


ADDONS = ("ship",)


def _trains_on_synthetic(cls: type) -> bool:
    """Whether the method's `fit` takes `synthetic` features (what SHIP feeds it)."""
    return hasattr(cls, "fit") and "synthetic" in inspect.signature(cls.fit).parameters


def method_configs(
    name: str, values: dict[str, Any] | None = None, source: str = "overrides", seed: int | None = None
) -> tuple[type, Any, ShipConfig | None]:
    """The class of method `name`, its config built from defaults plus `values`, and for `METHOD+ship` SHIP's config
    (`ship.KEY` values; else None): every check that needs no backbone. A method with a `seed` in its config gets
    `seed` unless `values` sets one."""
    values = dict(values or {})
    inner, _, addon = name.partition("+")
    if addon and addon not in ADDONS:
        raise ClipadaptError(f"unknown add-on '{addon}' in '{name}'; available: {', '.join(ADDONS)}")
    if inner not in METHODS:
        raise ClipadaptError(
            f"unknown method '{inner}'; available: {', '.join(sorted(METHODS))} (and METHOD+{'/'.join(ADDONS)})"
        )
    cls = METHODS[inner]
    if addon and not _trains_on_synthetic(cls):
        trainable = sorted(n for n, c in METHODS.items() if _trains_on_synthetic(c))
        raise ClipadaptError(
            f"'{inner}' cannot train on synthesized features; {addon} works with {', '.join(trainable)}"
        )
    own = {k: v for k, v in values.items() if not (addon and k.startswith("ship."))}
    if seed is not None and "seed" in {f.name for f in dataclasses.fields(cls.Config)}:
        own.setdefault("seed", seed)
    ship = None
    if addon:
        ship_values = {k.removeprefix("ship."): v for k, v in values.items() if k.startswith("ship.")}
        if seed is not None:
            ship_values.setdefault("seed", seed)
        ship = build_config(ShipConfig, ship_values, source=source)
    return cls, build_config(cls.Config, own, source=source), ship


def build_method(
    name: str, backbone, values: dict[str, Any] | None = None, source: str = "overrides", seed: int | None = None
):
    """The method `name` on `backbone` with its config built from defaults plus `values` (`method_configs`).
    `METHOD+ship` trains METHOD with SHIP's synthesized features; `ship.KEY` values configure SHIP, the others
    METHOD."""
    cls, config, ship = method_configs(name, values, source, seed)
    method = cls(backbone, config)
    return method if ship is None else WithShip(method, name, backbone, ship)


def method_config(method) -> dict[str, Any]:
    """The method's settings as written to metrics.json and config.yaml (an add-on's under its own name, so
    `ship.KEY=VALUE` reads back as it was given)."""
    if isinstance(method, WithShip):
        return {**method_config(method.method), "ship": dataclasses.asdict(method.config)}
    return dataclasses.asdict(method.config)


# Each method module registers itself on import (mpfgvc registers mpfgvc and finetune); ship is the add-on.
from . import clip_adapter, cocoop, coop, linear_probe, mpfgvc, tip_adapter, zeroshot  # noqa: E402, F401
from .ship import ShipConfig, WithShip  # noqa: E402
