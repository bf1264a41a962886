"""The UniCL paper's comparison (CE vs CLIP vs UniCL) on the world's held-out data, for pretraining runs made with
`clipadapt pretrain --loss {ce,clip,unicl}`. Prints a markdown table.

    python scripts/compare_losses.py unicl=runs/pretrain-unicl clip=runs/pretrain-clip ce=runs/pretrain-ce \
        [--json src/clipadapt/weights/loss-comparison.json]

`--json` also writes the table in the form `clipadapt report` reads (`comparison.json`; the demo shows the
shipped one).

Held-out means never seen as a label in pretraining: the 16 new compositions of world:objects (never drawn in
pretraining at all), the world:patterns / world:scenes data sets, and the far targets (world:sensor, clutter,
sketch: all 32 objects classes through a shift; world:textures, world:aerial: tasks pretraining never showed).
Any run folder holding a model.safetensors works, e.g. to compare two pretrainings of the same loss. Zero-shot uses
the 80-template ensemble; the linear probe is lpclip's, 16 shots, seed 1. CE trains no text tower, so it has no
zero-shot numbers. The birds (world:birds, CUB's regime) come last, zero-shot and the probe on all 30 training
images of a species (as scripts/fine_grained.py runs them), each with the share of test birds whose predicted
species has the true crown, wing and breast: whether the frozen features carry each part.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clipadapt import load_backbone
from clipadapt.data import base_new_split, load_dataset
from clipadapt.methods import build_method
from clipadapt.protocols import RunContext, run_protocol

FAR_TARGETS = ("patterns", "scenes", "sensor", "clutter", "sketch", "textures", "aerial")
BIRD_PARTS = ("crown", "wing", "breast")


def evaluate(weights: Path, zero_shot: bool) -> dict[str, float]:
    backbone = load_backbone(None, weights)
    ctx = RunContext(backbone, progress=False)
    base, new = base_new_split(load_dataset("world:objects"))
    targets = {"objects-new": new, **{name: load_dataset(f"world:{name}") for name in FAR_TARGETS}}
    row = {}
    if zero_shot:  # the base classes were labels in pretraining: not held out, shown for contrast
        row["zero-shot objects-base"] = run_protocol("full", build_method("zeroshot", backbone), ctx, base)["accuracy"]
    for name, splits in targets.items():
        if zero_shot:
            result = run_protocol("full", build_method("zeroshot", backbone), ctx, splits)
            row[f"zero-shot {name}"] = result["accuracy"]
            if name == "objects-new":
                row["zero-shot objects-new shape"] = result["attribute_accuracy"]["shape"]
        result = run_protocol("fewshot", build_method("linear_probe", backbone), ctx, splits, shots=16, seed=1)
        row[f"linear probe {name}"] = result["accuracy"]
    birds = load_dataset("world:birds")
    for kind, method in (("zero-shot", "zeroshot"), ("linear probe", "linear_probe")):
        if kind == "zero-shot" and not zero_shot:
            continue
        result = run_protocol("full", build_method(method, backbone), ctx, birds, seed=1)
        row[f"{kind} birds"] = result["accuracy"]
        row.update({f"{kind} birds {part}": result["attribute_accuracy"][part] for part in BIRD_PARTS})
    return row


def with_averages(rows: dict[str, dict[str, float]]) -> list[str]:
    """Adds to each row the mean zero-shot accuracy over the held-out sets (objects-new and the far targets) and the
    mean linear-probe accuracy over the far targets; returns the columns in the order they were measured, zero-shot
    first, each average after its kind."""
    held_out = ["objects-new", *FAR_TARGETS]
    for row in rows.values():
        if all(f"zero-shot {n}" in row for n in held_out):
            row["zero-shot held-out mean"] = sum(row[f"zero-shot {n}"] for n in held_out) / len(held_out)
        if all(f"linear probe {n}" in row for n in FAR_TARGETS):
            row["linear probe far mean"] = sum(row[f"linear probe {n}"] for n in FAR_TARGETS) / len(FAR_TARGETS)
    order = ["zero-shot objects-base", "zero-shot objects-new shape"]
    order += [f"{kind} {name}" for kind in ("zero-shot", "linear probe") for name in held_out]
    order = [*order[:10], "zero-shot held-out mean", *order[10:], "linear probe far mean"]
    order += [
        f"{kind} birds{part}" for kind in ("zero-shot", "linear probe") for part in ("", *(f" {p}" for p in BIRD_PARTS))
    ]
    present = {c for row in rows.values() for c in row}
    return [c for c in order if c in present]


def main(argv: list[str]) -> None:
    json_path = Path(argv[argv.index("--json") + 1]) if "--json" in argv else None
    pairs = [a for i, a in enumerate(argv) if "=" in a and (i == 0 or argv[i - 1] != "--json")]
    rows = {}
    for pair in pairs:
        loss, _, run_dir = pair.partition("=")
        rows[loss] = evaluate(Path(run_dir) / "model.safetensors", zero_shot=loss != "ce")
    columns = with_averages(rows)
    print("| loss | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for loss, row in rows.items():
        print(f"| {loss} | " + " | ".join(f"{row[c]:.1f}" if c in row else "-" for c in columns) + " |")
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {
                    "title": "UniCL vs CLIP vs CE pretraining: zero-shot (80 templates) and linear probe (16 shots) "
                    "on the world",
                    "row_label": "loss",
                    "columns": columns,
                    "rows": rows,
                    "note": "Held out: objects-new and the other targets were never labels in pretraining; CE has no "
                    "text tower to do zero-shot with. Made by scripts/compare_losses.py from three pretraining runs "
                    "identical but for --loss.",
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
