"""Outcomes beside the official code: CoOp and CoCoOp trained by CoOp's own `train.py` on Dassl's engine, and
clipadapt's `coop` and `cocoop`, from the same weights (the shipped model), on the same images and the same few-shot
draws (`--fewshot-sampler dassl`), base-to-new at 16 shots over seeds 1-3, on a near and a far world data set. The
second level of docs/parity.md: where the first shows the computations equal, this shows what the trainings end at.

    git clone https://github.com/KaiyangZhou/CoOp /tmp/CoOp
    git clone https://github.com/KaiyangZhou/Dassl.pytorch /tmp/Dassl.pytorch
    python parity/outcome.py --coop /tmp/CoOp --dassl /tmp/Dassl.pytorch --out runs/parity-outcome

`--python`: an interpreter that has Dassl's and CoOp's requirements (yacs, tabulate, gdown, pandas, ftfy, regex;
torch and torchvision), default this one. Each data set is written in CoOp's DTD layout (the images linked, the
split as `split_zhou_DescribableTextures.json`) and read by both: CoOp's `DescribableTextures` reader takes any class
names from the split file, clipadapt's `coop:DescribableTextures:ROOT` the same file. CoOp's and Dassl's trees are
copied to a temporary folder and parity/patches/coop-*.patch and dassl-*.patch applied (why: in each); CoOp's
`load_clip_to_cpu`, which downloads OpenAI's weights, is replaced by one that builds the model from the shipped
weights (`equivalence.official_model`'s way). Both sides train with the official recipe (`RECIPES`: CoOp's
`vit_b16_ep50.yaml`, CoCoOp's `vit_b16_c4_ep10_batch1_ctxv1.yaml`), at the model's 64 pixels and in fp32; clipadapt
once with the official augmentation (`augment=true`: random resized crops and flips re-encoded every
step) and once with its default (cached features of the test-time crop). Results go to parity/outcome.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from clipadapt import load_backbone
from clipadapt.data import load_dataset
from clipadapt.data.datasets import save_split_file
from clipadapt.protocols import harmonic_mean, mean_std

HERE = Path(__file__).parent
RECORD = HERE / "outcome.json"
PATCHES = {
    "CoOp": sorted((HERE / "patches").glob("coop-*.patch")) + sorted((HERE / "patches").glob("cocoop-*.patch")),
    "Dassl": sorted((HERE / "patches").glob("dassl-*.patch")),
}
DATASETS = ("world:objects", "world:textures")  # near (the pretraining's own compositions) and far
SEEDS = (1, 2, 3)
SHOTS = 16
# Every run: the shots, the model's input size, one decoding worker (2 cores).
COMMON_OPTIONS = [f"DATASET.NUM_SHOTS {SHOTS}", "INPUT.SIZE (64,64)", "DATALOADER.NUM_WORKERS 1"]


@dataclass(frozen=True)
class Recipe:
    """A method run both ways: CoOp's `trainer` with its `config_file` and `official` options (fp32 on a CPU; the
    rest as the file says), and clipadapt's `method` with `ours` (the same recipe in its words)."""

    trainer: str
    config_file: str
    epochs: int
    official: tuple[str, ...]
    ours: tuple[str, ...]


RECIPES = {
    "coop": Recipe(
        "CoOp",
        "configs/trainers/CoOp/vit_b16_ep50.yaml",
        50,
        ("OPTIM.MAX_EPOCH 50", "TRAINER.COOP.PREC fp32", "TRAINER.COOP.N_CTX 16", "TRAINER.COOP.CSC False"),
        ("epochs=50",),
    ),
    # CoCoOp's base-to-new recipe: 4 context vectors from "a photo of a", one image a step, 10 epochs.
    "cocoop": Recipe(
        "CoCoOp",
        "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
        10,
        ("TRAINER.COCOOP.PREC fp32",),
        ("batch_size=1", "epochs=10"),
    ),
}
LAUNCHER = '''"""Runs CoOp's train.py with the model built from a state dict (parity/outcome.py writes this file)."""
import json, runpy, sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import clip.model
import trainers.cocoop
import trainers.coop

settings = json.load(open(sys.argv[1]))
clip.model.ACTIVATION = nn.GELU if settings["activation"] == "GELU" else clip.model.QuickGELU
clip.model.VISION_HEAD_WIDTH = settings["vision_head_width"]
clip.model.TEXT_HEAD_WIDTH = settings["text_head_width"]
for trainer in (trainers.coop, trainers.cocoop):
    trainer.load_clip_to_cpu = lambda cfg: clip.model.build_model(torch.load(settings["weights"]))
# Dassl's checkpoints pickle the scheduler and optimizer objects, which torch's weights_only reading refuses (a
# defaultdict inside): the one file read back is the checkpoint the base run wrote into --model-dir moments before.
model_dir = Path(sys.argv[sys.argv.index("--model-dir") + 1]).resolve() if "--model-dir" in sys.argv else None


def load_own_checkpoint(path):
    if model_dir is None or model_dir not in Path(path).resolve().parents:
        raise RuntimeError(f"{path} is not a checkpoint of this harness's own run")
    return torch.load(path, map_location="cpu", weights_only=False)


trainers.coop.load_checkpoint = trainers.cocoop.load_checkpoint = load_own_checkpoint
sys.argv = ["train.py", *sys.argv[2:]]
runpy.run_path("train.py", run_name="__main__")
'''


def write_coop_layout(spec: str, root: Path) -> Path:
    """The data set `spec` in CoOp's DTD layout under `root` (images linked, not copied); `root` itself."""
    splits = load_dataset(spec)
    dtd = root / "dtd"
    dtd.mkdir(parents=True, exist_ok=True)
    if not (dtd / "images").exists():
        (dtd / "images").symlink_to(Path(splits.root).absolute(), target_is_directory=True)
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    save_split_file(dtd / "split_zhou_DescribableTextures.json", parts, splits.root, splits.classnames)
    return root


def official_tree(coop: Path, dassl: Path, folder: Path, weights: Path) -> tuple[Path, Path]:
    """CoOp's and Dassl's trees copied into `folder` and patched, the launcher and the model's settings beside
    CoOp's train.py; the two trees."""
    trees = {"CoOp": folder / "CoOp", "Dassl": folder / "Dassl"}
    for name, clone in (("CoOp", coop), ("Dassl", dassl)):
        shutil.copytree(clone, trees[name], ignore=shutil.ignore_patterns(".git"))
        for patch in PATCHES[name]:
            subprocess.run(["git", "apply", str(patch.absolute())], cwd=trees[name], check=True)
    tree = trees["CoOp"]
    backbone = load_backbone()
    model = backbone.model
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, weights)
    vision, text = model.visual.transformer, model.transformer
    settings = {
        "weights": str(weights),
        "activation": type(text.resblocks[0].mlp.gelu).__name__,
        "vision_head_width": vision.width // vision.resblocks[0].attn.num_heads,
        "text_head_width": text.width // text.resblocks[0].attn.num_heads,
    }
    (tree / "parity_settings.json").write_text(json.dumps(settings))
    (tree / "parity_launch.py").write_text(LAUNCHER)
    return tree, trees["Dassl"]


def _accuracy(log: str) -> float:
    found = re.findall(r"\* accuracy: ([\d.]+)%", log)
    if not found:
        raise RuntimeError(f"no accuracy in the official run's output:\n{log[-3000:]}")
    return float(found[-1])


def run_official(python: str, dassl: Path, tree: Path, recipe: Recipe, data: Path, out: Path, seed: int) -> dict:
    """The official trainer on the base half with `seed`, then evaluated on the new half from its last epoch."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(dassl), str(tree), os.environ.get("PYTHONPATH", "")])}
    common = [
        "--root", str(data), "--seed", str(seed), "--trainer", recipe.trainer,
        "--dataset-config-file", "configs/datasets/dtd.yaml", "--config-file", recipe.config_file,
    ]  # fmt: skip
    options = [word for option in (*COMMON_OPTIONS, *recipe.official) for word in option.split(" ", 1)]
    shutil.rmtree(out, ignore_errors=True)  # Dassl would resume from what an earlier harness run left
    start = time.time()
    accuracies = {}
    for subsample, extra in (
        ("base", ["--output-dir", str(out)]),
        (
            "new",
            [
                "--output-dir",
                str(out / "new"),
                "--eval-only",
                "--model-dir",
                str(out),
                "--load-epoch",
                str(recipe.epochs),
            ],
        ),
    ):
        argv = [python, "parity_launch.py", "parity_settings.json", *common, *extra]
        argv += [*options, "DATASET.SUBSAMPLE_CLASSES", subsample]
        done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the official run failed ({' '.join(argv)}):\n{(done.stdout + done.stderr)[-4000:]}")
        accuracies[subsample] = _accuracy(done.stdout)
    return {**accuracies, "seconds": round(time.time() - start, 1)}


def run_ours(method: str, data: Path, out: Path, seed: int, augment: bool) -> dict:
    """clipadapt's `method` under base2new on the same layout and Dassl's draws."""
    argv = [
        sys.executable, "-m", "clipadapt", "run", method, "--protocol", "base2new",
        "--dataset", f"coop:DescribableTextures:{data}", "--fewshot-sampler", "dassl", "--shots", str(SHOTS),
        "--seed", str(seed), "--out", str(out), "--no-progress",
        *RECIPES[method].ours, f"augment={str(augment).lower()}",
    ]  # fmt: skip
    start = time.time()
    subprocess.run(argv, check=True, capture_output=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "base": round(metrics["base_accuracy"], 2),
        "new": round(metrics["new_accuracy"], 2),
        "seconds": round(time.time() - start, 1),
    }


SIDES = (
    ("official", "{trainer}'s train.py (Dassl)"),
    ("clipadapt_augment", "clipadapt {method} augment=true"),
    ("clipadapt", "clipadapt {method} (cached features)"),
)


def _mean_std(values: list[float]) -> str:
    return "{:.1f} ± {:.1f}".format(*mean_std(values))


def page_rows(record: dict) -> list[str]:
    """docs/parity.md's table of the record: per data set and side, base, new and HM over the seeds (mean ± std; HM
    of each seed's base and new), each clipadapt side's difference to the official run on the same seed (same
    draws), and the seconds a seed took."""
    rows = []
    for method, found in record["methods"].items():
        rows += _method_rows(method, found["results"])
    return rows


def _method_rows(method: str, results: dict) -> list[str]:
    rows = []
    for spec, seeds in results.items():
        for side, label in SIDES:
            label = label.format(trainer=RECIPES[method].trainer, method=method)
            runs = [seeds[seed][side] for seed in sorted(seeds)]
            official = [seeds[seed]["official"] for seed in sorted(seeds)]
            cells = [_mean_std([run[key] for run in runs]) for key in ("base", "new")]
            cells.append(_mean_std([harmonic_mean(run["base"], run["new"]) for run in runs]))
            if side == "official":
                cells += ["-", "-"]
            else:
                cells += [_mean_std([run[key] - o[key] for run, o in zip(runs, official)]) for key in ("base", "new")]
            seconds = sum(run["seconds"] for run in runs) / len(runs)
            rows.append(f"| {method} | {spec} | {label} | {' | '.join(cells)} | {seconds:.0f} |")
    return rows


def _commit(clone: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coop", type=Path, required=True, help="a clone of KaiyangZhou/CoOp")
    parser.add_argument("--dassl", type=Path, required=True, help="a clone of KaiyangZhou/Dassl.pytorch")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the official code")
    parser.add_argument("--out", type=Path, default=Path("runs/parity-outcome"))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--methods", default=",".join(RECIPES), help="the methods to run (the others' records stay)")
    args = parser.parse_args(argv)
    args.out = args.out.absolute()  # the official runs start in their own folder
    for clone, marker in ((args.coop, "trainers/coop.py"), (args.dassl, "dassl/engine")):
        if not (clone / marker).exists():
            print(f"{clone}: no {marker}; give a clone of the official repository", file=sys.stderr)
            return 2
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in RECIPES]
    if unknown:
        print(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    record = json.loads(RECORD.read_text()) if RECORD.is_file() else {"methods": {}}
    record.update(
        coop=_commit(args.coop),
        dassl=_commit(args.dassl),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        shots=SHOTS,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tree, dassl = official_tree(args.coop, args.dassl, Path(tmp), Path(tmp) / "weights.pt")
        for method in methods:
            found = record["methods"][method] = {"epochs": RECIPES[method].epochs, "results": {}}
            for spec in args.datasets.split(","):
                data = write_coop_layout(spec, args.out / spec.replace(":", "_") / "data")
                for seed in map(int, args.seeds.split(",")):
                    folder = args.out / spec.replace(":", "_") / method / f"seed{seed}"
                    official = run_official(args.python, dassl, tree, RECIPES[method], data, folder / "official", seed)
                    row = {
                        "official": official,
                        "clipadapt_augment": run_ours(method, data, folder / "augment", seed, augment=True),
                        "clipadapt": run_ours(method, data, folder / "cached", seed, augment=False),
                    }
                    found["results"].setdefault(spec, {})[str(seed)] = row
                    print(method, spec, seed, json.dumps(row), flush=True)
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(page_rows(record)))
    print(f"wrote {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
