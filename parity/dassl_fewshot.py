"""Dassl's own few-shot draws, recorded: the images `generate_fewshot_dataset` picks for CoOp, per shots and seed, on a
small data set in CoOp's layout made to hold every case the function treats apart (classes listed out of label
order, classes with fewer images than shots, a class without validation images), and on the world's objects. The
test suite checks `fewshot_sampler=dassl` against the recorded draws (tests/test_parity.py; docs/parity.md).

    git clone https://github.com/KaiyangZhou/Dassl.pytorch /tmp/Dassl.pytorch
    python parity/dassl_fewshot.py --dassl /tmp/Dassl.pytorch [--world ~/.cache/clipadapt/world/v6-seed0/objects]

Dassl is not installed: its `base_dataset.py` and `utils/tools.py` are loaded from the clone under their package
names, the one import this path never uses (`gdown`, for downloads) given an empty module instead of installing it.
CoOp's glue is its datasets/*.py (e.g. caltech101.py): `set_random_seed(cfg.SEED)` in train.py, then the split file
read in order (`OxfordPets.read_split`), then `generate_fewshot_dataset(train, num_shots=K)` and
`generate_fewshot_dataset(val, num_shots=min(K, 4))`, pickled to split_fewshot/shot_K-seed_S.pkl; replayed here
line for line, with Dassl's own functions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import platform
import random
import subprocess
import sys
import tempfile
import types
from pathlib import Path

from PIL import Image

HERE = Path(__file__).parent
RECORD = HERE / "dassl_fewshot.json"
COOP_PICKLE = HERE / "coop_shot_4-seed_2.pkl"  # CoOp's own file for one draw, read back by `read_coop_fewshot`
SHOTS, SEEDS = (1, 2, 4, 8, 16), (1, 2, 3)
SPLIT_NAME = "Layout"
# Per class: train and val images. Class 3 has fewer train images than most shots, class 4 no val images, and the
# split file lists the train images in a shuffled order, so the classes first appear out of label order.
CLASS_SIZES = {"ash": (20, 6), "birch": (5, 2), "cedar": (16, 4), "dogwood": (3, 1), "elm": (9, 0), "fir": (12, 5)}


def write_layout(root: Path) -> Path:
    """A data set in CoOp's layout under `root` (images/<class>/<i>.png and split_zhou_Layout.json, the same every
    time); the split file's path."""
    entries: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, (name, (n_train, n_val)) in enumerate(CLASS_SIZES.items()):
        for i in range(n_train + n_val + 1):
            relative = f"images/{name}/{i}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (label * 40, i * 8, 0)).save(root / relative)
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            entries[split].append([relative, label, name])
    random.Random(0).shuffle(entries["train"])
    split_file = root / f"split_zhou_{SPLIT_NAME}.json"
    split_file.write_text(json.dumps(entries))
    return split_file


def load_dassl(clone: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """Dassl's `base_dataset` and `utils.tools` modules from a clone, under their package names (so Datum pickles as
    CoOp's files hold it)."""

    def load(name: str, path: Path) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    for package in ("dassl", "dassl.data", "dassl.data.datasets"):
        sys.modules.setdefault(package, types.ModuleType(package))
    sys.modules.setdefault("gdown", types.ModuleType("gdown"))  # downloads only; never called here
    tools = load("dassl.utils.tools", clone / "dassl/utils/tools.py")
    utils = types.ModuleType("dassl.utils")
    utils.__dict__.update({name: getattr(tools, name) for name in tools.__all__})
    sys.modules["dassl.utils"] = utils
    return load("dassl.data.datasets.base_dataset", clone / "dassl/data/datasets/base_dataset.py"), tools


def dassl_draw(base_dataset, tools, split_file: Path, image_root: Path, shots: int, seed: int) -> dict[str, list]:
    """CoOp's few-shot draw with Dassl's functions: the train and val subsets (Datum lists)."""
    split = json.loads(split_file.read_text())

    def read(items: list) -> list:  # CoOp's OxfordPets.read_split
        return [base_dataset.Datum(impath=os.path.join(image_root, p), label=int(y), classname=c) for p, y, c in items]

    train, val = read(split["train"]), read(split["val"])
    tools.set_random_seed(seed)
    dataset = base_dataset.DatasetBase.__new__(base_dataset.DatasetBase)  # its draw needs no data set state
    return {
        "train": dataset.generate_fewshot_dataset(train, num_shots=shots),
        "val": dataset.generate_fewshot_dataset(val, num_shots=min(shots, 4)),
    }


def relative(
    drawn: dict[str, list], image_root: Path, keys: tuple[str, ...] = ("train", "val")
) -> dict[str, list[str]]:
    """Each subset's image paths relative to `image_root` (Dassl's Datum `impath`, or clipadapt's Sample `path`)."""
    return {
        key: [Path(getattr(d, "impath", None) or d.path).relative_to(image_root).as_posix() for d in drawn[key]]
        for key in keys
    }


def compare_on_world(base_dataset, tools, folder: Path, shots: int = 16) -> dict[str, dict]:
    """Per seed, on the world's objects: how many of Dassl's train images each of clipadapt's samplers draws too,
    and whether `fewshot_sampler=dassl` draws Dassl's train and val images in Dassl's order."""
    from clipadapt.data import fewshot, load_dataset

    splits = load_dataset(f"coop:WorldObjects:{folder}")
    found = {}
    for seed in SEEDS:
        dassl = relative(
            dassl_draw(base_dataset, tools, folder / "split_zhou_WorldObjects.json", folder, shots, seed), folder
        )
        ours = {
            sampler: relative(vars(fewshot(splits, shots, seed, sampler=sampler)), folder)
            for sampler in ("clipadapt", "dassl")
        }
        found[f"shot_{shots}-seed_{seed}"] = {
            "train images": len(dassl["train"]),
            "shared with clipadapt's sampler": len(set(dassl["train"]) & set(ours["clipadapt"]["train"])),
            "fewshot_sampler=dassl draws the same, in order": ours["dassl"] == dassl,
        }
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dassl", type=Path, required=True, help="a clone of KaiyangZhou/Dassl.pytorch")
    parser.add_argument("--world", type=Path, help="the world's objects folder (its split_zhou_WorldObjects.json)")
    args = parser.parse_args()
    if not (args.dassl / "dassl" / "data" / "datasets" / "base_dataset.py").is_file():
        parser.error(
            f"{args.dassl} is not a clone of KaiyangZhou/Dassl.pytorch (no dassl/data/datasets/base_dataset.py)"
        )
    if args.world and not (args.world / "split_zhou_WorldObjects.json").is_file():
        parser.error(f"{args.world} holds no split_zhou_WorldObjects.json: give the world's objects folder")
    base_dataset, tools = load_dassl(args.dassl)
    commit = subprocess.run(
        ["git", "-C", str(args.dassl), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    record: dict = {"dassl_commit": commit or None, "python": platform.python_version(), "layout": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        split_file = write_layout(root)
        for shots in SHOTS:
            for seed in SEEDS:
                drawn = dassl_draw(base_dataset, tools, split_file, root, shots, seed)
                record["layout"][f"shot_{shots}-seed_{seed}"] = relative(drawn, root)
                if (shots, seed) == (4, 2):
                    COOP_PICKLE.write_bytes(pickle.dumps(drawn, protocol=pickle.HIGHEST_PROTOCOL))
    if args.world:
        record["world:objects"] = compare_on_world(base_dataset, tools, args.world)
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {RECORD} and {COOP_PICKLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
