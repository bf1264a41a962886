"""How far apart a model puts classes that differ in one part alone: for each class attribute (the birds' crown, wing
and breast), the mean cosine similarity between the embeddings of the class pairs that differ in that attribute and
agree on every other. Near 1: the embeddings hardly tell that part apart; a method that ties image embeddings to
them (MP-FGVC's image-to-text loss) is pulled to leave the part out (docs/mpfgvc.md, "Where MP-FGVC loses the wing").

    python scripts/part_similarity.py                                  # the frozen model: class names, test images
    python scripts/part_similarity.py runs/fine-grained-v6/seed1/mpfgvc_ssvp_false-full-birds   # and a tuned run's
    python scripts/part_similarity.py --pretrained runs/pretrain-unicl/model.safetensors   # another pretraining

Columns: the frozen text tower's class embeddings ("a photo of a {name}."); the frozen image tower's test images,
each class's mean; and for a run of MP-FGVC or fine-tuning, its class text embeddings (DaTP's learned prompts, or
the frozen ones with datp=false) and its tuned tower's test images, each class's mean.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from clipadapt import ClipadaptError, DataError, load_backbone
from clipadapt.classifier import load_classifier
from clipadapt.data import ImageDataset, Sample, load_dataset
from clipadapt.features import extract_features
from clipadapt.text import TextClassifier

TEMPLATE = "a photo of a {}."


def similarity_by_difference(embeddings: torch.Tensor, attributes: Sequence[dict[str, str]]) -> dict[str, float]:
    """Mean cosine similarity of the class pairs differing in one attribute alone, per attribute (and in every
    attribute: "all"); `embeddings` [C, D], one row per class, `attributes` each class's."""
    if len(embeddings) != len(attributes):
        raise ValueError(f"{len(embeddings)} class embeddings for {len(attributes)} classes' attributes")
    names = list(attributes[0])
    unit = F.normalize(embeddings.float(), dim=-1)
    pairs: dict[str, list[float]] = {name: [] for name in [*names, "all"]}
    for a, b in itertools.combinations(range(len(attributes)), 2):
        differing = [name for name in names if attributes[a][name] != attributes[b][name]]
        key = differing[0] if len(differing) == 1 else "all" if len(differing) == len(names) else None
        if key is not None:
            pairs[key].append((unit[a] @ unit[b]).item())
    return {name: sum(values) / len(values) for name, values in pairs.items() if values}


def class_means(embeddings: torch.Tensor, labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Each class's mean unit embedding [C, D] (a class without samples is refused)."""
    labels = torch.as_tensor(labels)
    unit = F.normalize(embeddings.float(), dim=-1)
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"classes {missing[:5]} have no samples")
    return torch.stack([unit[labels == c].mean(0) for c in range(num_classes)])


@torch.no_grad()
def tuned_image_embeddings(method, samples: Sequence[Sample], batch_size: int = 64) -> torch.Tensor:
    """E_V of `samples` through a tuned run's own tower (MP-FGVC, fine-tuning), preprocessed as it predicts."""
    loader = DataLoader(ImageDataset(samples, method.image_transform()), batch_size=batch_size)
    return torch.cat([method.encode_images(images).float() for images, _, _ in loader])


def columns(dataset: str, run: Path | None, pretrained: Path | None = None) -> dict[str, dict[str, float]]:
    splits = load_dataset(dataset)
    attributes, labels = splits.annotations.get("class_attributes"), [s.label for s in splits.test]
    if not attributes:
        raise DataError(f"data set {splits.name} has no class attributes to compare")
    backbone = load_backbone(None, pretrained)
    frozen_images = extract_features(backbone, splits.test, progress=False).features
    found = {
        "text, frozen": similarity_by_difference(TextClassifier(backbone, TEMPLATE)(splits.classnames), attributes),
        "test images, frozen": similarity_by_difference(
            class_means(frozen_images, labels, len(attributes)), attributes
        ),
    }
    if run is not None:
        method = load_classifier(run, backbone=backbone).method
        if not hasattr(method, "text_embeddings"):
            raise DataError(f"{run}: a run of mpfgvc or finetune is needed (its classes' text and tuned tower)")
        if method.classnames != splits.classnames:
            raise DataError(f"{run} was trained on other classes than {dataset}'s: give its data set (--dataset)")
        found["text, the run's"] = similarity_by_difference(method.text_embeddings(), attributes)
        found["test images, the run's"] = similarity_by_difference(
            class_means(tuned_image_embeddings(method, splits.test), labels, len(attributes)), attributes
        )
    return found


def markdown(found: dict[str, dict[str, float]]) -> str:
    names = list(next(iter(found.values())))
    lines = [
        "| classes differing in | " + " | ".join(found) + " |",
        "|---|" + "---|" * len(found),
        *(
            f"| {'every part' if name == 'all' else f'the {name} alone'} | "
            + " | ".join(f"{column[name]:.3f}" for column in found.values())
            + " |"
            for name in names
        ),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", type=Path, help="a run folder of mpfgvc or finetune (optional)")
    parser.add_argument("--dataset", default="world:birds")
    parser.add_argument("--pretrained", type=Path, help="the frozen model's weights (default: the shipped model)")
    args = parser.parse_args()
    try:
        print(markdown(columns(args.dataset, args.run, args.pretrained)))
    except ClipadaptError as e:  # DataError and CheckpointError among them
        print(f"part_similarity: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
