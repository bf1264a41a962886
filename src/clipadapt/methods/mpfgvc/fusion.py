"""VLFM, the vision-language fusion module: the image embedding attends over itself and the subcategories' text
embeddings, then a translation layer and a linear classifier (or, as an ablation, a concatenation)."""

from __future__ import annotations

import math

import torch
from torch import nn

FUSIONS = ("vlfm", "concat", "none")


class VisionLanguageFusion(nn.Module):
    """VLFM: cross-modal attention of the visual embedding over itself and the C text embeddings, the
    translation layer, and the classifier. `fusion="concat"` replaces the attention by concatenation."""

    def __init__(self, dim: int, num_classes: int, expansion: int = 4, fusion: str = "vlfm"):
        super().__init__()
        self.fusion = fusion
        if fusion == "vlfm":
            self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        else:
            self.merge = nn.Linear(dim * (num_classes + 1), dim)
        self.translation = nn.Sequential(nn.Linear(dim, dim * expansion), nn.GELU(), nn.Linear(dim * expansion, dim))
        self.classifier = nn.Linear(dim, num_classes)

    def attention(self, visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """S [B, 1 + C]: how much the fused embedding takes from E_V (column 0) and from each E_T^c."""
        return self._attention(visual, self._tokens(visual, text))

    @staticmethod
    def _tokens(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([visual[:, None], text.expand(visual.shape[0], *text.shape)], dim=1)  # [B, 1 + C, D]

    def _attention(self, visual: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        scores = (self.query(visual)[:, None] * self.key(tokens)).sum(dim=-1) / math.sqrt(visual.shape[-1])
        return scores.softmax(dim=-1)

    def forward(self, visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.fusion == "vlfm":
            tokens = self._tokens(visual, text)
            fused = (self._attention(visual, tokens)[..., None] * self.value(tokens)).sum(dim=1)
        else:
            fused = self.merge(torch.cat([visual, text.reshape(1, -1).expand(visual.shape[0], -1)], dim=-1))
        return self.classifier(self.translation(fused))
