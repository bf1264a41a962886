"""CLIP-Adapter (Gao et al., IJCV 2023): a small residual MLP on the frozen image features, classified by frozen
zero-shot text weights.

Mirrors gaopengcuhk/CLIP-Adapter (`clip_adapter.py`): Linear(D, D/4, no bias) - ReLU - Linear(D/4, D, no bias) -
ReLU; the adapted feature is 0.2 x adapter(f) + 0.8 x f; logits are logit_scale.exp() x cos(adapted feature,
text weights) with one hand-written template per data set (CoOp's, as the official CUSTOM_TEMPLATES). The
official repository ships no training config; training here is the Dassl recipe CoOp uses (SGD lr 0.002, momentum
0.9, weight decay 5e-4, batch 32, one warm-up epoch, cosine, epochs by shots) on cached features, through the same
loop, so SHIP's generated features mix in the same way (`clip_adapter+ship`). The adapter transfers to any class
names: only the text weights change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_method_weights, load_module_state, save_method_weights
from ..errors import ClipadaptError
from ..features import FeatureSet
from ..text import TextClassifier
from ..training.prompt_learner import TrainConfig, train_prompt_learner
from .contract import Capabilities, Claim, register_method
from .coop import epochs_for_shots


def adapter_mlp(dim: int, reduction: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(), nn.Linear(dim // reduction, dim, bias=False), nn.ReLU()
    )


@register_method("clip_adapter")
class ClipAdapter:
    capabilities = Capabilities(trains=True, trains_on_generated=True)
    claims = (Claim("fewshot", "accuracy", "zeroshot", +1, "CLIP-Adapter (IJCV 2023), Fig. 3: 16 shots", 16),)

    @dataclass
    class Config(TrainConfig):
        """Trained with CoOp's recipe (TrainConfig's defaults), as CoOp's few-shot protocol compares them."""

        reduction: int = 4  # bottleneck D / reduction
        ratio: float = 0.2  # weight of the adapted feature in the residual mix
        templates: str = "coop"  # text weights: "coop" (per-data-set template), "ensemble", or "... {} ..."

    def __init__(self, backbone, config: ClipAdapter.Config):
        if not 0 <= config.ratio <= 1:
            raise ClipadaptError(f"ratio must be in [0, 1], got {config.ratio}")
        if config.reduction < 1 or backbone.embed_dim // config.reduction < 1:
            raise ClipadaptError(f"reduction {config.reduction} does not fit features of size {backbone.embed_dim}")
        self.backbone, self.config = backbone, config
        self.text = TextClassifier(backbone, config.templates)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.adapter = adapter_mlp(backbone.embed_dim, config.reduction).to(backbone.device)
        self.history: dict = {}

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        """The residual mix of the adapted and the original image features (not normalized)."""
        features = self.backbone.to_device(features).float()
        return self.config.ratio * self.adapter(features) + (1 - self.config.ratio) * features

    def _logits(self, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.backbone.model.logit_scale.exp() * F.normalize(self.adapt(features), dim=-1) @ weights.T

    def fit(
        self,
        train: FeatureSet,
        classnames: Sequence[str],
        val: FeatureSet | None = None,
        template_key: str | None = None,
        out_dir: str | Path | None = None,
        progress: bool = True,
        generated: FeatureSet | None = None,
        generated_ratio: float = 1.0,
    ) -> dict:
        classnames = list(classnames)
        weights = self.text(classnames, template_key)
        epochs = self.config.epochs or epochs_for_shots(int(torch.bincount(train.labels).max()), template_key)

        def batch_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self._logits(features, weights), labels)

        self.history = train_prompt_learner(
            self.adapter,
            batch_loss,
            self.backbone,
            train,
            self.config,
            epochs=epochs,
            val=val,
            score=lambda features: self._logits(features, weights),
            out_dir=out_dir,
            fingerprint=(classnames, template_key, "clip_adapter"),
            progress=progress,
            desc="clip_adapter",
            generated=generated,
            generated_ratio=generated_ratio,
        )
        return self.history

    @torch.no_grad()
    def logits(
        self, features: torch.Tensor, classnames: Sequence[str], template_key: str | None = None
    ) -> torch.Tensor:
        return self._logits(features, self.text(classnames, template_key))

    def save(self, path: str | Path, **header: Any) -> None:
        """The adapter's weights as safetensors, with the config (and `header`) in the metadata (the text weights
        are CLIP's)."""
        save_method_weights(path, self.adapter.state_dict(), "clip_adapter", self.config, **header)

    def load(self, path: str | Path) -> None:
        load_module_state(self.adapter, load_method_weights(path, "clip_adapter")[0], path, "clip_adapter")
