"""The plain fine-tuned baseline MP-FGVC is compared with: the same tuned encoder and linear head, cross-entropy
only (no SsVP, no text, no fusion)."""

from __future__ import annotations

from dataclasses import dataclass

from ..contract import Capabilities, register_method
from .method import MPFGVC


@register_method("finetune")
class FineTune(MPFGVC):
    """The plain fine-tuned baseline: the same encoder and linear head, cross-entropy only."""

    capabilities = Capabilities(trains=True, needs_images=True, scores_unseen_classes=False)
    claims = ()  # the baseline MP-FGVC is measured against

    @dataclass
    class Config(MPFGVC.Config):
        ssvp: bool = False
        datp: bool = False
        contrastive: bool = False
        fusion: str = "none"
