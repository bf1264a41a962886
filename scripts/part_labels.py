"""One attribute of a world data set as the class: an ImageFolder of links to the data set's own images, split as it
is split (train, val, test), whose classes are that attribute's values, e.g. the birds' four wing patterns. It
measures whether an image tower can learn one part at all, apart from the task that needs it
(docs/mpfgvc.md, "On the world's birds"):

    python scripts/part_labels.py --dataset world:birds --attribute wing --out runs/wing-labels
    clipadapt run finetune --dataset imagefolder:runs/wing-labels --out runs/wing-64
    clipadapt run finetune --dataset imagefolder:runs/wing-labels --out runs/wing-128 image_size=128
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from clipadapt import DataError
from clipadapt.data import DatasetSplits, load_dataset
from clipadapt.data.datasets import SPLIT_NAMES


def write_attribute_folder(dataset: DatasetSplits, attribute: str, out: Path) -> dict[str, Counter]:
    """Link every image of `dataset` into out/<split>/<its class's value of `attribute`>/; the images per value and
    split."""
    attributes = dataset.annotations.get("class_attributes")
    if not attributes or attribute not in attributes[0]:
        known = ", ".join(attributes[0]) if attributes else "none"
        raise DataError(f"data set {dataset.name} has no class attribute {attribute!r} (its attributes: {known})")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty; remove it or choose another folder")
    counts: dict[str, Counter] = {}
    for split in SPLIT_NAMES:
        counts[split] = Counter()
        for sample in dataset.split(split):
            value = attributes[sample.label][attribute]
            folder = out / split / value
            folder.mkdir(parents=True, exist_ok=True)
            # Every class folder numbers its images from 0: the class folder's name keeps the links apart.
            (folder / f"{sample.path.parent.name}-{sample.path.name}").symlink_to(sample.path.resolve())
            counts[split][value] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="world:birds")
    parser.add_argument("--attribute", default="wing")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        counts = write_attribute_folder(load_dataset(args.dataset), args.attribute, args.out)
    except DataError as e:
        print(f"part_labels: {e}", file=sys.stderr)
        return 1
    for split, per_value in counts.items():
        print(f"{split}: " + ", ".join(f"{value} {n}" for value, n in sorted(per_value.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
