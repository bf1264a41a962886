"""Outcomes beside the official code: CoOp trained by its own `train.py` on Dassl's engine, and clipadapt's `coop`,
from the same weights (the shipped model), on the same images and the same few-shot draws (`--fewshot-sampler
dassl`), base-to-new at 16 shots over seeds 1-3, on a near and a far world data set. The second level of
docs/parity.md: where the first shows the computations equal, this shows what the two trainings end at.

    git clone https://github.com/KaiyangZhou/CoOp /tmp/CoOp
    git clone https://github.com/KaiyangZhou/Dassl.pytorch /tmp/Dassl.pytorch
    python parity/outcome.py --coop /tmp/CoOp --dassl /tmp/Dassl.pytorch --out runs/parity-outcome

`--python`: an interpreter that has Dassl's and CoOp's requirements (yacs, tabulate, gdown, pandas, ftfy, regex;
torch and torchvision), default this one. Each data set is written in CoOp's DTD layout (the images linked, the
split as `split_zhou_DescribableTextures.json`) and read by both: CoOp's `DescribableTextures` reader takes any class
names from the split file, clipadapt's `coop:DescribableTextures:ROOT` the same file. CoOp's and Dassl's trees are
copied to a temporary folder and parity/patches/coop-*.patch and dassl-*.patch applied (why: in each); CoOp's
`load_clip_to_cpu`, which downloads OpenAI's weights, is replaced by one that builds the model from the shipped
weights (`equivalence.official_model`'s way). Both sides train with CoOp's `vit_b16_ep50.yaml` recipe (SGD 0.002,
50 epochs, one warm-up epoch at 1e-5, cosine, batch 32, 16 random context vectors), at the model's 64 pixels and in
fp32; clipadapt once with the official augmentation (`augment=true`: random resized crops and flips re-encoded every
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
from pathlib import Path

import torch

from clipadapt import load_backbone
from clipadapt.data import load_dataset
from clipadapt.data.datasets import save_split_file

HERE = Path(__file__).parent
RECORD = HERE / "outcome.json"
PATCHES = {
    "CoOp": sorted((HERE / "patches").glob("coop-*.patch")),
    "Dassl": sorted((HERE / "patches").glob("dassl-*.patch")),
}
DATASETS = ("world:objects", "world:textures")  # near (the pretraining's own compositions) and far
SEEDS = (1, 2, 3)
SHOTS, EPOCHS = 16, 50
# CoOp's vit_b16_ep50.yaml, less what the model decides (input size) and the machine (fp32 on a CPU, workers).
OFFICIAL_OPTIONS = [
    f"DATASET.NUM_SHOTS {SHOTS}",
    f"OPTIM.MAX_EPOCH {EPOCHS}",
    "INPUT.SIZE (64,64)",
    "TRAINER.COOP.PREC fp32",
    "TRAINER.COOP.N_CTX 16",
    "TRAINER.COOP.CSC False",
    "DATALOADER.NUM_WORKERS 1",
]
LAUNCHER = '''"""Runs CoOp's train.py with the model built from a state dict (parity/outcome.py writes this file)."""
import json, runpy, sys
from pathlib import Path

import torch
from torch import nn

import clip.model
import trainers.coop

settings = json.load(open(sys.argv[1]))
clip.model.ACTIVATION = nn.GELU if settings["activation"] == "GELU" else clip.model.QuickGELU
clip.model.VISION_HEAD_WIDTH = settings["vision_head_width"]
clip.model.TEXT_HEAD_WIDTH = settings["text_head_width"]
trainers.coop.load_clip_to_cpu = lambda cfg: clip.model.build_model(torch.load(settings["weights"]))
# Dassl's checkpoints pickle the scheduler and optimizer objects, which torch's weights_only reading refuses (a
# defaultdict inside): the one file read back is the checkpoint the base run wrote into --model-dir moments before.
model_dir = Path(sys.argv[sys.argv.index("--model-dir") + 1]).resolve() if "--model-dir" in sys.argv else None


def load_own_checkpoint(path):
    if model_dir is None or model_dir not in Path(path).resolve().parents:
        raise RuntimeError(f"{path} is not a checkpoint of this harness's own run")
    return torch.load(path, map_location="cpu", weights_only=False)


trainers.coop.load_checkpoint = load_own_checkpoint
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


def run_official(python: str, dassl: Path, tree: Path, data: Path, out: Path, seed: int) -> dict:
    """CoOp trained on the base half with `seed`, then evaluated on the new half from its last epoch."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(dassl), str(tree), os.environ.get("PYTHONPATH", "")])}
    common = [
        "--root", str(data), "--seed", str(seed), "--trainer", "CoOp",
        "--dataset-config-file", "configs/datasets/dtd.yaml",
        "--config-file", "configs/trainers/CoOp/vit_b16_ep50.yaml",
    ]  # fmt: skip
    options = [word for option in OFFICIAL_OPTIONS for word in option.split(" ", 1)]
    shutil.rmtree(out, ignore_errors=True)  # Dassl would resume from what an earlier harness run left
    start = time.time()
    accuracies = {}
    for subsample, extra in (
        ("base", ["--output-dir", str(out)]),
        (
            "new",
            ["--output-dir", str(out / "new"), "--eval-only", "--model-dir", str(out), "--load-epoch", str(EPOCHS)],
        ),
    ):
        argv = [python, "parity_launch.py", "parity_settings.json", *common, *extra]
        argv += [*options, "DATASET.SUBSAMPLE_CLASSES", subsample]
        done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the official run failed ({' '.join(argv)}):\n{(done.stdout + done.stderr)[-4000:]}")
        accuracies[subsample] = _accuracy(done.stdout)
    return {**accuracies, "seconds": round(time.time() - start, 1)}


def run_ours(data: Path, out: Path, seed: int, augment: bool) -> dict:
    """clipadapt's coop under base2new on the same layout and Dassl's draws."""
    argv = [
        sys.executable, "-m", "clipadapt", "run", "coop", "--protocol", "base2new",
        "--dataset", f"coop:DescribableTextures:{data}", "--fewshot-sampler", "dassl", "--shots", str(SHOTS),
        "--seed", str(seed), "--out", str(out), "--no-progress", f"epochs={EPOCHS}", f"augment={str(augment).lower()}",
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
    ("official", "CoOp's train.py (Dassl)"),
    ("clipadapt_augment", "clipadapt coop augment=true"),
    ("clipadapt", "clipadapt coop (cached features)"),
)


def _mean_std(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.1f} ± {(sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5:.1f}"


def _harmonic(base: float, new: float) -> float:
    return 2 * base * new / (base + new)


def page_rows(record: dict) -> list[str]:
    """docs/parity.md's table of the record: per data set and side, base, new and HM over the seeds (mean ± std; HM
    of each seed's base and new), each clipadapt side's difference to the official run on the same seed (same
    draws), and the seconds a seed took."""
    rows = []
    for spec, seeds in record["results"].items():
        for side, label in SIDES:
            runs = [seeds[seed][side] for seed in sorted(seeds)]
            official = [seeds[seed]["official"] for seed in sorted(seeds)]
            cells = [_mean_std([run[key] for run in runs]) for key in ("base", "new")]
            cells.append(_mean_std([_harmonic(run["base"], run["new"]) for run in runs]))
            if side == "official":
                cells += ["-", "-"]
            else:
                cells += [_mean_std([run[key] - o[key] for run, o in zip(runs, official)]) for key in ("base", "new")]
            seconds = sum(run["seconds"] for run in runs) / len(runs)
            rows.append(f"| {spec} | {label} | {' | '.join(cells)} | {seconds:.0f} |")
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
    args = parser.parse_args(argv)
    args.out = args.out.absolute()  # the official runs start in their own folder
    for clone, marker in ((args.coop, "trainers/coop.py"), (args.dassl, "dassl/engine")):
        if not (clone / marker).exists():
            print(f"{clone}: no {marker}; give a clone of the official repository", file=sys.stderr)
            return 2
    record = {
        "coop": _commit(args.coop),
        "dassl": _commit(args.dassl),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "shots": SHOTS,
        "epochs": EPOCHS,
        "results": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tree, dassl = official_tree(args.coop, args.dassl, Path(tmp), Path(tmp) / "weights.pt")
        for spec in args.datasets.split(","):
            data = write_coop_layout(spec, args.out / spec.replace(":", "_") / "data")
            for seed in map(int, args.seeds.split(",")):
                folder = args.out / spec.replace(":", "_") / f"seed{seed}"
                row = {
                    "official": run_official(args.python, dassl, tree, data, folder / "official", seed),
                    "clipadapt_augment": run_ours(data, folder / "augment", seed, augment=True),
                    "clipadapt": run_ours(data, folder / "cached", seed, augment=False),
                }
                record["results"].setdefault(spec, {})[str(seed)] = row
                print(spec, seed, json.dumps(row), flush=True)
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(page_rows(record)))
    print(f"wrote {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
