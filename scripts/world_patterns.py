"""The papers' patterns measured on the world: few-shot (CoOp, Tip-Adapter-F, linear probe against zero-shot),
base-to-new (CoOp, CoCoOp, CoOp+SHIP) and cross-data-set / domain generalization (CoOp, CoCoOp), each averaged
over the world's targets, mean ± std over seeds, beside the papers' own averages.

    python scripts/world_patterns.py --out runs/patterns                    # the default world (seed 0)
    python scripts/world_patterns.py --out runs/patterns-w1 --world DIR     # a world generated with another seed

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

# Base-to-new and few-shot targets; the cross-data-set source is objects, its targets the other class sets.
TARGETS = ("objects", "sensor", "clutter", "sketch", "textures", "aerial")
SHIFTED = ("sensor", "clutter", "sketch")  # the objects' classes: domain generalization (CoCoOp's Table 3)
OTHER_CLASSES = ("patterns", "scenes", "textures", "aerial")  # other class sets: cross-data-set (Table 2)
SHOTS = (1, 4, 16)
TIP_F = (("finetune", True),)
# Tip-Adapter's official configuration per data set (its configs/*.yaml): ImageNet's (search scales [7, 3], 20
# epochs: our defaults) for the near target and the ImageNet-like shifts; the far targets take those of the data
# sets they are modelled on, whose wider searches and larger initial alpha let the cache outweigh zero-shot.
TIP_F_OFFICIAL = {
    "textures": (("beta_scale", 13.0), ("alpha_scale", 13.0), ("alpha", 2.0)),  # configs/dtd.yaml
    "aerial": (("beta_scale", 12.0), ("alpha_scale", 10.0), ("alpha", 2.0), ("epochs", 100)),  # configs/eurosat.yaml
}

# The papers' own numbers, only where a published table gives them (see "The papers' patterns" in docs/world.md).
# CoCoOp (Zhou et al., CVPR 2022) Table 1, base-to-new, average over 11 data sets, ViT-B/16: base, new, H.
PAPER_BASE2NEW = {"zeroshot": (69.34, 74.22, 71.70), "coop": (82.69, 63.22, 71.66), "cocoop": (80.47, 71.69, 75.83)}
# CoCoOp Table 2, ImageNet (16 shots) to 10 other data sets: source, average of the targets.
PAPER_CROSS = {"coop": (71.51, 63.88), "cocoop": (71.02, 65.74)}
# Tip-Adapter (Zhang et al., ECCV 2022) Table 2, ImageNet, RN50 (no table gives the 11-data-set averages, which
# the CoOp and Tip-Adapter papers plot): zero-shot CLIP, linear probe, CoOp, Tip-Adapter-F at 1, 4, 16 shots.
PAPER_FEWSHOT_ZEROSHOT = 60.33
PAPER_FEWSHOT = {
    "linear_probe": {1: 22.17, 4: 41.20, 16: 56.13},
    "coop": {1: 57.15, 4: 59.99, 16: 62.95},
    "tip_adapter_f": {1: 61.32, 4: 62.52, 16: 65.51},
}


def spec(name: str, world: str) -> str:
    return f"world:{name}:{world}" if world else f"world:{name}"


def rows(targets: tuple[str, ...], seed: int, world: str, parts: tuple[str, ...]) -> list[demo.DemoRow]:
    seeds = (seed,)
    out = []
    for name in targets:
        data = spec(name, world)
        if "fewshot" in parts:
            out.append(demo.DemoRow("zeroshot", "full", data, seeds=seeds))
            for shots in SHOTS:
                out += [
                    demo.DemoRow("linear_probe", "fewshot", data, (("shots", shots),), seeds=seeds),
                    demo.DemoRow("coop", "fewshot", data, (("shots", shots),), seeds=seeds),
                    demo.DemoRow(
                        "tip_adapter",
                        "fewshot",
                        data,
                        (("shots", shots),),
                        TIP_F + TIP_F_OFFICIAL.get(name, ()),
                        "tip_adapter_f",
                        seeds=seeds,
                    ),
                ]
        if "base2new" in parts:
            out.append(demo.DemoRow("zeroshot", "base2new", data, seeds=seeds))
            out += [demo.DemoRow(method, "base2new", data, seeds=seeds) for method in ("coop", "cocoop", "coop+ship")]
    if "cross" in parts:
        cross_targets = tuple(spec(name, world) for name in SHIFTED + OTHER_CLASSES)
        out.append(
            demo.DemoRow("zeroshot", "crossdataset", spec("objects", world), (("targets", cross_targets),), seeds=seeds)
        )
        out += [
            demo.DemoRow(
                method, "crossdataset", spec("objects", world), (("targets", cross_targets), ("shots", 16)), seeds=seeds
            )
            for method in ("coop", "cocoop")
        ]
    return out


def _cross_average(result: dict, names: tuple[str, ...]) -> float:
    values = [v["accuracy"] for target, v in result["targets"].items() if target.split(":")[1] in names]
    return sum(values) / len(values)


def _cell(values: list[float]) -> list[float]:
    """[mean, std] over the seeds, rounded for the table."""
    return [round(v, 2) for v in mean_std(values)]


def comparisons(
    out: Path, world: str, parts: tuple[str, ...], seeds: tuple[int, ...], targets: tuple[str, ...]
) -> list[dict]:
    """The tables (in the form of `clipadapt report`'s comparison.json: cells [mean, std] over the seeds whose
    runs are all there, each seed's value first averaged over `targets`), with the papers' numbers beside."""
    runs: dict[int, dict] = {}
    for seed in seeds:
        grid = rows(targets, seed, world, parts)
        found = {
            (row.name, row.protocol, row.dataset.split(":")[1], dict(row.options).get("shots")): json.loads(
                (out / f"seed{seed}" / row.folder / "metrics.json").read_text()
            )
            for row in grid
            if (out / f"seed{seed}" / row.folder / "metrics.json").is_file()
        }
        if len(found) == len(grid):
            runs[seed] = found
    if not runs:
        return []

    def averaged(name: str, protocol: str, key: str, shots=None) -> list[float]:
        return [sum(runs[s][(name, protocol, t, shots)][key] for t in targets) / len(targets) for s in runs]

    where = (
        f"world {world or 'seed 0 (the default)'}; averaged over {', '.join(targets)}; seeds "
        f"{','.join(map(str, runs))}, mean ± std over seeds"
    )
    tables = []
    if "fewshot" in parts:
        zero = _cell(averaged("zeroshot", "full", "accuracy"))
        ours, paper = [f"{k}-shot" for k in SHOTS], [f"paper {k}-shot" for k in SHOTS]
        columns = ours + paper
        table_rows = {"zero-shot": {**dict.fromkeys(ours, zero), **dict.fromkeys(paper, PAPER_FEWSHOT_ZEROSHOT)}}
        for name, label in (("linear_probe", "linear probe"), ("coop", "CoOp"), ("tip_adapter_f", "Tip-Adapter-F")):
            table_rows[label] = {
                **{f"{k}-shot": _cell(averaged(name, "fewshot", "accuracy", k)) for k in SHOTS},
                **{f"paper {k}-shot": PAPER_FEWSHOT[name][k] for k in SHOTS},
            }
        tables.append(
            {
                "title": "Few-shot on the world vs in the paper",
                "row_label": "method",
                "columns": columns,
                "rows": table_rows,
                "note": f"All classes of each target; {where}. Paper: Tip-Adapter's "
                "Table 2 (ImageNet, RN50), the one table that gives all four methods.",
            }
        )
    if "base2new" in parts:
        columns = ["base", "new", "H", "paper base", "paper new", "paper H"]
        table_rows = {}
        for name, label in (
            ("zeroshot", "zero-shot"),
            ("coop", "CoOp"),
            ("cocoop", "CoCoOp"),
            ("coop+ship", "CoOp+SHIP"),
        ):
            base, new = averaged(name, "base2new", "base_accuracy"), averaged(name, "base2new", "new_accuracy")
            h = [2 * b * n / (b + n) for b, n in zip(base, new)]
            paper = dict(zip(columns[3:], PAPER_BASE2NEW.get(name, ())))
            table_rows[label] = {"base": _cell(base), "new": _cell(new), "H": _cell(h), **paper}
        tables.append(
            {
                "title": "Base-to-new on the world vs in the paper",
                "row_label": "method",
                "columns": columns,
                "rows": table_rows,
                "note": f"16 shots of the base half; {where}. Paper: CoCoOp's Table 1, "
                "average over 11 data sets (ViT-B/16); SHIP's own table was not available to quote.",
            }
        )
    if "cross" in parts:
        columns = [
            "source (objects)",
            "domain shift: sensor, clutter, sketch",
            "other classes: patterns, scenes, textures, aerial",
            "paper source (ImageNet)",
            "paper targets",
        ]
        table_rows = {}
        for name, label in (("zeroshot", "zero-shot"), ("coop", "CoOp"), ("cocoop", "CoCoOp")):
            results = [runs[s][(name, "crossdataset", "objects", 16 if name != "zeroshot" else None)] for s in runs]
            table_rows[label] = {
                columns[0]: _cell([r["accuracy"] for r in results]),
                columns[1]: _cell([_cross_average(r, SHIFTED) for r in results]),
                columns[2]: _cell([_cross_average(r, OTHER_CLASSES) for r in results]),
                **dict(zip(columns[3:], PAPER_CROSS.get(name, ()))),
            }
        tables.append(
            {
                "title": "Cross-data-set transfer on the world vs in the paper",
                "row_label": "method",
                "columns": columns,
                "rows": table_rows,
                "note": f"Trained on 16 shots of all 32 objects classes; world {world or 'seed 0'}; seeds "
                f"{','.join(map(str, runs))}. Paper: CoCoOp's Table 2 (ImageNet to 10 data sets).",
            }
        )
    return tables


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/patterns"))
    parser.add_argument("--world", default="", help="a world folder (default: the default world)")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--parts", default="fewshot,base2new,cross")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--tables-only", action="store_true", help="print the tables of the runs already there")
    parser.add_argument("--json", type=Path, help="also write the tables here (the demo shows the shipped one)")
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    targets, parts = tuple(args.targets.split(",")), tuple(args.parts.split(","))
    for seed in seeds if not args.tables_only else ():
        demo.run_demo(
            args.out / f"seed{seed}",
            rows=tuple(rows(targets, seed, args.world, parts)),
            jobs=args.jobs,
            with_recorded=False,
        )
    found = comparisons(args.out, args.world, parts, seeds, targets)
    if not found:
        print("no seed has all its runs yet", file=sys.stderr)
        return 1
    print(write_comparisons(found, args.out, "patterns.md", args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
