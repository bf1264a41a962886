"""What a set of runs shows, computed from their numbers: each method against zero-shot on the same data set and
protocol, and against the direction its paper reports (the methods' `claims`), each difference with its sign and
the seeds' spread. The report opens with it; nothing in it is written by hand.

A difference between two runs that share two or more seeds is the mean of the per-seed differences, ± their
standard deviation; otherwise the difference of the two runs' means, ± the root of the sum of their squared
standard deviations (`one seed` where neither has any). A claim holds ("as the paper") when the difference has the
claimed sign and exceeds its spread, is contradicted ("against the paper") when it has the other sign and exceeds
it, and is otherwise "within the seeds' spread" ("level" where it rounds to 0.0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .methods import method_claims
from .methods.contract import Claim
from .protocols import PROTOCOL_SPECS, mean_std, trained

ZERO_SHOT = "zeroshot"


@dataclass(frozen=True)
class Difference:
    """`run`'s `metric` minus `baseline`'s, ± `spread` (None: one seed on each side), over `seeds` paired seeds (0
    when the runs' means were compared)."""

    metric: str
    delta: float
    spread: float | None
    paired_seeds: int

    def text(self) -> str:
        spread = f" ± {self.spread:.1f}" if self.spread is not None else ""
        delta = 0.0 if abs(self.delta) < 0.05 else self.delta  # no "−0.0"
        return f"{delta:+.1f}{spread}".replace("-", "−")


def _value(numbers: dict, metric: str) -> float | None:
    value = numbers.get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def difference(run, baseline, metric: str) -> Difference | None:
    """`run`'s `metric` against `baseline`'s (report `Run`s), or None where either lacks it."""
    mine, theirs = run.per_seed(), baseline.per_seed()
    paired = [(_value(mine[s], metric), _value(theirs[s], metric)) for s in sorted(mine.keys() & theirs.keys())]
    paired = [(a, b) for a, b in paired if a is not None and b is not None]
    if len(paired) >= 2:
        return Difference(metric, *mean_std([a - b for a, b in paired]), len(paired))
    a, b = _value(run.metrics, metric), _value(baseline.metrics, metric)
    if a is None or b is None:
        return None
    stds = [_value(r.metrics, f"{metric}_std") for r in (run, baseline)]
    spread = math.sqrt(sum(s * s for s in stds if s is not None)) if any(s is not None for s in stds) else None
    return Difference(metric, a - b, spread, 0)


def verdict(claim: Claim, found: Difference) -> str:
    """Whether `found` bears `claim` out: as the paper, against the paper, or within the seeds' spread (level
    where the difference rounds to 0.0 points, as printed)."""
    if abs(found.delta) < 0.05:
        return "level"
    beyond = found.spread is None or abs(found.delta) > found.spread
    if found.delta * claim.direction > 0 and beyond:
        return "as the paper" + (" (one seed)" if found.spread is None else "")
    if found.delta * claim.direction < 0 and beyond:
        return "against the paper" + (" (one seed)" if found.spread is None else "")
    return "within the seeds' spread"


def _shots(run) -> int | None:
    return run.metrics.get("shots") if trained(run.metrics) else None


def find_baseline(runs: Sequence, run, method: str):
    """The run of `method` that `run` is compared with: the same data set, protocol and shots (a method that trains
    nothing has none), and the same weights; for few-shot runs a zero-shot run of `full` also serves (the same test
    images and classes). None when the runs hold none."""

    def fits(other, protocol: str) -> bool:
        return (
            other.method == method
            and other.dataset == run.dataset
            and other.metrics.get("protocol") == protocol
            and other.weights == run.weights
            and (not trained(other.metrics) or _shots(other) == _shots(run))
        )

    protocols = [run.metrics.get("protocol")] + (["full"] if run.metrics.get("protocol") == "fewshot" else [])
    return next((other for protocol in protocols for other in runs if other is not run and fits(other, protocol)), None)


def _label(protocol: str, metric: str) -> str:
    """A metric's name in its protocol's report table (`base_accuracy` -> `base`)."""
    columns = PROTOCOL_SPECS[protocol].table.columns
    return next((c.header for c in columns if c.kind == "metric" and c.key == metric and c.header), metric)


def _describe(run) -> str:
    shots = _shots(run)
    seeds = ",".join(map(str, run.seeds))
    where = f"{run.dataset}, {run.metrics.get('protocol')}" + (f", {shots} shot{'s' * (shots != 1)}" if shots else "")
    return f"`{run.method}` on {where} (seed{'s' if len(run.seeds) > 1 else ''} {seeds})"


def summarize(runs: Sequence) -> list[str]:
    """One markdown bullet per run that has a zero-shot run or a paper's claim to be compared with: its headline
    numbers against zero-shot, then each claim of its paper that these runs can check."""
    lines = []
    for run in runs:
        protocol = run.metrics.get("protocol")
        if run.method == ZERO_SHOT or protocol not in PROTOCOL_SPECS:
            continue
        parts = []
        zero_shot = find_baseline(runs, run, ZERO_SHOT)
        if zero_shot is not None:
            found = [difference(run, zero_shot, metric) for metric in PROTOCOL_SPECS[protocol].summary]
            shown = [f"{_label(protocol, d.metric)} {d.text()}" for d in found if d is not None]
            if shown:
                parts.append(f"- {_describe(run)} against `{ZERO_SHOT}`: {', '.join(shown)}.")
        for claim in method_claims(run.method):
            if claim.protocol != protocol or (_shots(run) or 0) < claim.min_shots:
                continue
            baseline = zero_shot if claim.baseline == ZERO_SHOT else find_baseline(runs, run, claim.baseline)
            found = difference(run, baseline, claim.metric) if baseline is not None else None
            if found is None:
                continue
            side = "above" if claim.direction > 0 else "below"
            if not parts:
                parts.append(f"- {_describe(run)}:")
            parts.append(
                f"  - {_label(protocol, claim.metric)} {found.text()} against `{claim.baseline}`: "
                f"{verdict(claim, found)}, which reports it {side} ({claim.source})."
            )
        lines += parts
    return lines
