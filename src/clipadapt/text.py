"""Prompt templates and zero-shot classifier weights.

The 80 ImageNet templates come from open_clip (the ones CLIP's paper ensembles); CoOp's single hand-made
template per data set is kept here, keyed by the CoOp data set class name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from open_clip import build_zero_shot_classifier
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from .errors import ClipadaptError

IMAGENET_TEMPLATES: tuple[Callable[[str], str], ...] = OPENAI_IMAGENET_TEMPLATES
DEFAULT_TEMPLATE = "a photo of a {}."

# CoOp's CUSTOM_TEMPLATES (trainers/zsclip.py), used for its zero-shot CLIP baseline and prompt initialisation.
COOP_TEMPLATES: dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}


def read_names(names: str | Sequence[str]) -> list[str]:
    """Class names from a comma list, a file with one name a line, or a list; underscores read as spaces (as in
    folder names)."""
    if isinstance(names, str):
        path = Path(names).expanduser()
        names = path.read_text(encoding="utf-8").splitlines() if path.is_file() else names.split(",")
    names = [name.strip().replace("_", " ") for name in names if name.strip()]
    if not names:
        raise ClipadaptError("no class names given")
    return names


def resolve_templates(spec: str, template_key: str | None = None) -> list[Callable[[str], str] | str]:
    """Templates named by `spec`: "ensemble" (the 80 ImageNet templates), "coop" (CoOp's per-data-set
    template, "a photo of a {}." when the data set has none), or one literal template containing "{}"."""
    if spec == "ensemble":
        return list(IMAGENET_TEMPLATES)
    if spec == "coop":
        return [COOP_TEMPLATES.get(template_key or "", DEFAULT_TEMPLATE)]
    if "{}" in spec:
        return [spec]
    raise ClipadaptError(f"templates must be 'ensemble', 'coop' or a string containing '{{}}', got '{spec}'")


def zeroshot_weights(
    backbone,
    classnames: Sequence[str],
    templates: Sequence[Callable[[str], str] | str],
    classes_per_batch: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """Unit-norm class weights [n_classes, embed_dim]: the mean of each class's normalized template embeddings,
    renormalized (CLIP's prompt ensembling). Class names are encoded in chunks so memory stays bounded."""
    if not classnames:
        raise ClipadaptError("zero-shot classifier needs at least one class name")
    weights = build_zero_shot_classifier(
        backbone,
        backbone.tokenize,
        list(classnames),
        list(templates),
        num_classes_per_batch=classes_per_batch,
        device=backbone.device,
        use_tqdm=progress,
    )
    return weights.T.contiguous()


class TextClassifier:
    """Frozen zero-shot class weights (zero-shot CLIP, and the methods that train on top of them: CLIP-Adapter,
    Tip-Adapter): built from `templates` (as `resolve_templates`) once per class list and data set, then reused."""

    def __init__(self, backbone, templates: str, classes_per_batch: int = 32):
        resolve_templates(templates)  # fails early on a bad spec
        self.backbone, self.templates, self.classes_per_batch = backbone, templates, classes_per_batch
        self._weights: dict[tuple, torch.Tensor] = {}

    def __call__(self, classnames: Sequence[str], template_key: str | None = None) -> torch.Tensor:
        key = (tuple(classnames), template_key)
        if key not in self._weights:
            with torch.no_grad():
                self._weights[key] = zeroshot_weights(
                    self.backbone, classnames, resolve_templates(self.templates, template_key), self.classes_per_batch
                )
        return self._weights[key]
