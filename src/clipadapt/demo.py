"""`make demo` / `clipadapt demo`: every method and protocol that exists so far, on the generated world with the
shipped tiny CLIP, as one table. Each row is an ordinary `clipadapt run` whose metrics.json lands in the demo
folder, so the numbers can be reproduced one command at a time."""
from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .backbone import load_backbone
from .data import load_dataset
from .errors import CheckpointError
from .methods import build_method
from .protocols import RunContext, run_protocol, write_metrics

TARGET = "world:objects"
CROSS_TARGETS = ("world:patterns", "world:scenes")
FINE = "world:fine"


@dataclass(frozen=True)
class DemoRow:
    method: str
    protocol: str
    dataset: str
    options: tuple[tuple[str, object], ...] = ()  # protocol options
    config: tuple[tuple[str, object], ...] = ()  # method config values
    label: str = ""  # the row's name in the table (default: the method's)


# The shipped model's text context is 16 tokens: CoOp's default 16 context vectors leave no room for a class name,
# so CoOp starts from "a photo of a" (4 vectors), as CoCoOp does by default.
ROWS = (
    DemoRow("zeroshot", "base2new", TARGET),
    DemoRow("linear_probe", "base2new", TARGET),
    DemoRow("coop", "base2new", TARGET, config=(("init", "a photo of a"),)),
    DemoRow("cocoop", "base2new", TARGET),
    DemoRow("coop+ship", "base2new", TARGET, config=(("init", "a photo of a"),)),
    DemoRow("clip_adapter", "base2new", TARGET),
    DemoRow("clip_adapter+ship", "base2new", TARGET),
    DemoRow("tip_adapter", "base2new", TARGET),
    DemoRow("tip_adapter+ship", "base2new", TARGET),
    DemoRow("zeroshot", "crossdataset", TARGET, (("targets", CROSS_TARGETS),)),
    DemoRow("zeroshot", "full", FINE),
    DemoRow("linear_probe", "full", FINE),
    DemoRow("finetune", "full", FINE),
    DemoRow("mpfgvc", "full", FINE),
    DemoRow("mpfgvc", "full", FINE, config=(("datp_init", "name"), ("ssvp_layer", -1)),
            label="mpfgvc datp_init=name ssvp_layer=-1"),
)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(results: list[dict]) -> str:
    """Markdown: base-to-new rows (with the new classes' per-attribute accuracy), cross-data-set rows, then the
    fine-grained rows (with where SsVP's kept tokens land)."""
    lines = ["| method | base | new | HM | new: colour | new: shape |", "|---|---|---|---|---|---|"]
    for r in (r for r in results if r["protocol"] == "base2new"):
        new_attributes = r.get("attribute_accuracy", {}).get("new", {})
        lines.append(f"| {r['method']} | {_percent(r['base_accuracy'])} | {_percent(r.get('new_accuracy'))} | "
                     f"{_percent(r.get('harmonic_mean'))} | {_percent(new_attributes.get('colour'))} | "
                     f"{_percent(new_attributes.get('shape'))} |")
    cross = [r for r in results if r["protocol"] == "crossdataset"]
    if cross:
        specs = list(cross[0]["targets"])
        lines += ["", "| method | source: " + cross[0]["dataset"] + " | " + " | ".join(specs) + " |",
                  "|---|---|" + "---|" * len(specs)]
        for r in cross:
            lines.append(f"| {r['method']} | {_percent(r['accuracy'])} | "
                         + " | ".join(_percent(r["targets"][spec]["accuracy"]) for spec in specs) + " |")
    full = [r for r in results if r["protocol"] == "full"]
    if full:
        lines += ["", f"| method | {full[0]['dataset']} accuracy | kept tokens on the spot (random) "
                  "| spot patches kept (random) |", "|---|---|---|---|"]
        for r in full:
            overlap = r.get("part_overlap")
            kept = (f"{_percent(overlap['kept_tokens_on_part'])} ({_percent(overlap['random_tokens_on_part'])}) | "
                    f"{_percent(overlap['part_patches_kept'])} ({_percent(overlap['random_part_patches_kept'])})"
                    if overlap else "- | -")
            lines.append(f"| {r['method']} | {_percent(r['accuracy'])} | {kept} |")
    return "\n".join(lines)


def _run_row(row: DemoRow, ctx: RunContext) -> dict:
    method = build_method(row.method, ctx.backbone, dict(row.config), seed=1)
    return run_protocol(row.protocol, method, ctx, load_dataset(row.dataset), **dict(row.options))


def run_demo(out_dir: str | Path = "runs/demo", cache_dir: Path | None = None, progress: bool = True) -> str:
    """Run every demo row, write each row's metrics.json and `results.md`, return the table."""
    out_dir = Path(out_dir)
    backbone = load_backbone()
    ctx = RunContext(backbone, cache_dir=cache_dir, progress=progress)
    results = []
    for row in ROWS:
        label = row.label or row.method
        ctx.out_dir = out_dir / f"{re.sub(r'[^A-Za-z0-9+_-]+', '_', label)}-{row.protocol}"
        try:
            metrics = _run_row(row, ctx)
        except CheckpointError as e:
            # A demo folder from another version or configuration: its rows are reproducible, so start them over.
            print(f"{ctx.out_dir}: {e}; starting this row over", file=sys.stderr)
            shutil.rmtree(ctx.out_dir)
            metrics = _run_row(row, ctx)
        metrics = {"method": label, "dataset": row.dataset, "protocol": row.protocol, **metrics}
        write_metrics(ctx.out_dir, metrics)
        results.append(metrics)
    table = format_table(results)
    (out_dir / "results.md").write_text(table + "\n")
    return table
