"""Methods, one file each, registered by name for `clipadapt run METHOD`.

A method class has a `Config` dataclass, is built as `Method(backbone, config)`, and declares its `capabilities`
(`contract.Capabilities`): whether it trains, needs images, scores unseen class names, trains on synthesized
features, and which diagnostics it writes. `contract.py` says which interface each declaration implies;
`register_method` (there too) holds the class to it and refuses a name registered twice. Each method module
registers itself when imported (mpfgvc registers mpfgvc and finetune); ship is the add-on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

from ..config import build_config
from ..errors import ClipadaptError
from . import clip_adapter, cocoop, coop, linear_probe, mpfgvc, tip_adapter, zeroshot  # noqa: F401  (each registers)
from .addons.ship import ShipConfig, WithShip
from .contract import METHODS, Claim
from .contract import register_method as register_method  # where method files outside the package register

ADDONS = ("ship",)


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
    if addon and not cls.capabilities.trains_on_generated:
        trainable = sorted(n for n, c in METHODS.items() if c.capabilities.trains_on_generated)
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


def method_claims(name: str) -> tuple[Claim, ...]:
    """What the papers report for method `name` (`METHOD+ship`: SHIP's claims against METHOD); () for a name not
    registered."""
    inner, _, addon = name.partition("+")
    if addon:  # ship, the one add-on
        return tuple(replace(c, baseline=inner) if c.baseline == "METHOD" else c for c in WithShip.claims)
    return tuple(getattr(METHODS.get(inner), "claims", ()))


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
