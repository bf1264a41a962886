"""MP-FGVC against fine-tuning on the world's birds (CUB-200-2011's regime): the paper's configuration, the variant
best on the badges and the paper's three ablations, against plain fine-tuning with the same image tower, budget and
recipe, mean ± std over seeds with the per-seed difference to fine-tuning, and where SsVP's kept tokens land
(`part_overlap` on the crown, wing and breast boxes) against tokens kept at random.

    python scripts/fine_grained.py --out runs/fine-grained                  # seeds 1-5 on world:birds
    python scripts/fine_grained.py --out runs/fine-grained --tables-only    # the tables of the seeds done so far
    python scripts/fine_grained.py --out runs/fine-grained-128 --image-size 128   # the tuned towers at 128 px

Every row is an ordinary `clipadapt run` (the demo's machinery: resumable run folders, metrics.json, the report),
one pass per seed into OUT/seed<S>/, so a partial run has whole seeds; rerunning the command resumes every
trained row from its checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clipadapt import demo
from clipadapt.report import mean_std, write_comparisons

PAPER = (("ssvp", True),)  # the paper's configuration: the method's defaults but SsVP, off by default
BEST = PAPER + (("datp_init", "name"), ("ssvp_layer", -1))  # the best variant on the badges (docs/mpfgvc.md)
# (label, method, config): the label names the row's folder and its line in the table.
VARIANTS: tuple[tuple[str, str, tuple], ...] = (
    ("zeroshot", "zeroshot", ()),
    ("linear_probe", "linear_probe", ()),
    ("finetune", "finetune", ()),
    # The rows are named as the paper's ablation table names them, against its configuration; "mpfgvc ssvp=false",
    # the best on validation, is the method's default (`clipadapt run mpfgvc`).
    ("mpfgvc", "mpfgvc", PAPER),
    ("mpfgvc ssvp=false", "mpfgvc", (("ssvp", False),)),
    ("mpfgvc datp=false", "mpfgvc", PAPER + (("datp", False),)),
    ("mpfgvc fusion=none", "mpfgvc", PAPER + (("fusion", "none"),)),
    ("mpfgvc datp_init=name ssvp_layer=-1", "mpfgvc", BEST),
)
BASELINE = "finetune"
TUNED = ("finetune", "mpfgvc")
# The paper's own number: MP-FGVC on CUB-200-2011 with an ImageNet-21k ViT-B/16 at 448 px. Its baselines' and
# ablations' rows were not available to quote (docs/mpfgvc.md).
PAPER_CUB = {"mpfgvc": 91.8}


def rows(dataset: str, seed: int, image_size: int = 0) -> list[demo.DemoRow]:
    """One seed's rows; `image_size` runs the tuned towers (fine-tuning and MP-FGVC alike) at that input size, as
    the paper runs its 224-pixel ViT at 448, while zero-shot and the linear probe keep the frozen model's."""
    size = (("image_size", image_size),) if image_size else ()
    return [
        demo.DemoRow(
            method, "full", dataset, config=config + (size if method in TUNED else ()), label=label, seeds=(seed,)
        )
        for label, method, config in VARIANTS
    ]


def _cell(values: list[float]) -> list[float]:
    """[mean, std] over the seeds, rounded for the table."""
    return [round(v, 2) for v in mean_std(values)]


def comparison(out: Path, dataset: str, seeds: tuple[int, ...], image_size: int = 0) -> dict | None:
    """The table (in the form of `clipadapt report`'s comparison.json: cells [mean, std] over the seeds whose runs
    are all there), or None before the first seed is complete."""
    runs: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        found = {
            row.name: json.loads((out / f"seed{seed}" / row.folder / "metrics.json").read_text())
            for row in rows(dataset, seed, image_size)
            if (out / f"seed{seed}" / row.folder / "metrics.json").is_file()
        }
        if len(found) == len(VARIANTS):
            runs[seed] = found
    if not runs:
        return None
    difference, kept, random = f"minus {BASELINE} (per seed)", "kept tokens on a part", "random tokens on a part"
    # Which parts each method gets right (the share of test images whose predicted species has the true crown,
    # wing or breast): where a species is lost.
    parts = list(next(iter(runs.values()))[BASELINE].get("attribute_accuracy", {}))
    columns = ["accuracy", "val accuracy", difference, kept, random, "paper, CUB", *(f"{p} right" for p in parts)]
    table_rows = {}
    for label, _, _ in VARIANTS:
        accuracy = [runs[s][label]["accuracy"] for s in runs]
        cells = {"accuracy": _cell(accuracy)}
        validation = [runs[s][label].get("val_accuracy") for s in runs]
        if all(v is not None for v in validation):  # what the method's default is chosen on
            cells["val accuracy"] = _cell(validation)
        if label != BASELINE and label not in ("zeroshot", "linear_probe"):
            cells[difference] = _cell([a - runs[s][BASELINE]["accuracy"] for a, s in zip(accuracy, runs)])
        overlaps = [runs[s][label].get("part_overlap") for s in runs]
        if all(overlaps):
            cells[kept] = _cell([o["kept_tokens_on_part"] for o in overlaps])
            cells[random] = _cell([o["random_tokens_on_part"] for o in overlaps])
        if label in PAPER_CUB:
            cells["paper, CUB"] = PAPER_CUB[label]
        for part in parts:
            cells[f"{part} right"] = _cell([runs[s][label]["attribute_accuracy"][part] for s in runs])
        table_rows[label] = cells
    return {
        "title": "MP-FGVC against fine-tuning on the world's birds (CUB's regime)",
        "row_label": "method",
        "columns": columns,
        "rows": table_rows,
        "note": f"{dataset}: 64 species, 30 training images each; the same CLIP vision tower"
        + (f" run at {image_size} px" if image_size else "")
        + ", 15 + 15 epochs "
        f"(fine-tuning: the same schedule, cross-entropy only); seeds {','.join(map(str, runs))}, "
        "mean ± std over seeds. mpfgvc: the paper's configuration (ssvp=true); the method's default is the "
        "ssvp=false row, the best on val. Paper: MP-FGVC on CUB-200-2011 (ViT-B/16, ImageNet-21k, 448 px).",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fine-grained"))
    parser.add_argument("--dataset", default="world:birds")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--jobs", type=int)
    parser.add_argument(
        "--image-size", type=int, default=0, help="input size of the tuned towers (default: the model's own)"
    )
    parser.add_argument("--tables-only", action="store_true", help="print the table of the runs already there")
    parser.add_argument("--json", type=Path, help="also write the table here (a list of one, as world-patterns.json)")
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    for seed in seeds if not args.tables_only else ():
        demo.run_demo(
            args.out / f"seed{seed}",
            rows=tuple(rows(args.dataset, seed, args.image_size)),
            jobs=args.jobs,
            with_recorded=False,
        )
    found = comparison(args.out, args.dataset, seeds, args.image_size)
    if found is None:
        print("no seed has all its runs yet", file=sys.stderr)
        return 1
    print(write_comparisons([found], args.out, "fine-grained.md", args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
