"""Zero-shot CLIP: class weights from text templates (one, or the 80-template ensemble), no training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..text import TextClassifier
from .contract import Capabilities, register_method


@register_method("zeroshot")
class ZeroShot:
    capabilities = Capabilities()  # no training: scores any class names through their templates

    @dataclass
    class Config:
        templates: str = "ensemble"  # "ensemble" (80 ImageNet templates), "coop" (per-data-set) or "... {} ..."
        classes_per_batch: int = 32  # class names encoded per text-encoder call

    def __init__(self, backbone, config: ZeroShot.Config):
        self.backbone = backbone
        self.config = config
        self.text = TextClassifier(backbone, config.templates, config.classes_per_batch)

    def classifier(self, classnames: Sequence[str], template_key: str | None = None) -> torch.Tensor:
        """Class weights [C, D], built once per class list (test features are scored in blocks)."""
        return self.text(classnames, template_key)

    @torch.no_grad()
    def logits(
        self, features: torch.Tensor, classnames: Sequence[str], template_key: str | None = None
    ) -> torch.Tensor:
        weights = self.classifier(classnames, template_key)
        scale = self.backbone.model.logit_scale.exp()
        return scale * F.normalize(features.to(weights), dim=-1) @ weights.T
