"""Tip-Adapter (Zhang et al., ECCV 2022): a training-free cache model of the few-shot features beside zero-shot
CLIP, and Tip-Adapter-F, which fine-tunes the cache keys.

Mirrors gaopengcuhk/Tip-Adapter (`main.py`, `utils.py`): keys are the L2-normalized training features, values
their one-hot labels; for a normalized test feature f, affinity A = f keys^T, cache logits
exp(-beta (1 - A)) values, and logits = scale f W^T + alpha x cache logits with W the zero-shot text weights and
the scale the model's learned one (`clip_scale=100`: the official code's constant, the same for OpenAI's CLIP). alpha
and beta start at 1 and are grid-searched on the validation split (beta over 200 steps of [0.1, 7), alpha over 20
steps of [0.1, 3), the official search_scale [7, 3] and search_step [200, 20]; the first best wins).
Tip-Adapter-F (`finetune=true`) learns the keys with AdamW (lr 1e-3, eps 1e-4) for 20 epochs of batch 256, cosine;
the official code keeps the epoch that is best on test, here the one best on validation.

Where it differs: the official cache averages the features of 10 augmented views of each image; the cache here is
built from the cached features (one view). Tip-Adapter-F trains as the official code does: on fresh random
crops (scale 0.5-1) and flips of its images every step (`augment=false`: on the cached features, which are the
cache keys themselves), every batch including the last partial one, with a cosine over all steps down to 0. One
search range and starting alpha for every data set (the official configs widen them for DTD, EuroSAT and FGVC),
and the per-data-set single template (the official ensembles seven for ImageNet).
Without a validation split Tip-Adapter-F keeps its last epoch (a warning says so). With SHIP (`tip_adapter+ship`),
generated features of the classes without data enter the cache, as many per class as the real classes have shots
(more would outweigh the real classes in the cache sum), and mix into Tip-Adapter-F's batches. Class names the cache
has never seen get no cache logits: for them Tip-Adapter is zero-shot CLIP.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import load_method_weights, save_method_weights
from ..errors import CheckpointError, ClipadaptError
from ..features import FeatureSet
from ..text import TextClassifier
from ..training.prompt_learner import TrainConfig, train_prompt_learner
from .contract import Capabilities, Claim, register_method


def search_grid(scale: float, steps: int) -> list[float]:
    """The official grid: `steps` values from 0.1 upwards, spaced (scale - 0.1) / steps."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


@register_method("tip_adapter")
class TipAdapter:
    capabilities = Capabilities(trains=True, trains_on_generated=True)
    claims = (Claim("fewshot", "accuracy", "zeroshot", +1, "Tip-Adapter (ECCV 2022), Table 1: 1 to 16 shots"),)

    @dataclass
    class Config(TrainConfig):
        alpha: float = 1.0  # weight of the cache logits (used without search, and while Tip-Adapter-F trains)
        beta: float = 1.0  # sharpness of the cache affinity (likewise)
        search: bool = True  # grid-search alpha and beta on the validation split
        beta_scale: float = 7.0
        beta_steps: int = 200
        alpha_scale: float = 3.0
        alpha_steps: int = 20
        templates: str = "coop"  # text weights: "coop" (per-data-set template), "ensemble", or "... {} ..."
        # The zero-shot logits' scale: 0, the model's learned one (100 for OpenAI's CLIP, 31.2 for the shipped
        # model); the official code writes 100 whatever the model, which weighs the cache against them otherwise.
        clip_scale: float = 0.0
        finetune: bool = False  # Tip-Adapter-F: learn the cache keys
        # Tip-Adapter-F's official training:
        epochs: int = 20
        batch_size: int = 256
        lr: float = 1e-3
        optimizer: str = "adamw"
        momentum: float = 0.0  # (sgd only)
        weight_decay: float = 0.01  # AdamW's default, which the official optimizer keeps
        schedule: str = "cosine_steps"  # the official CosineAnnealingLR, stepped every batch down to 0
        warmup_epochs: int = 0  # (schedule=dassl only)
        warmup_lr: float = 0.0
        drop_last: bool = False  # the official loader keeps the last partial batch
        augment: bool = True  # Tip-Adapter-F trains on fresh random-crop/flip views of its images, as the official
        crop_scale: float = 0.5  # the official RandomResizedCrop(scale=(0.5, 1))
        select: str = "val"  # Tip-Adapter-F's epoch: val (best on validation) | last

    def __init__(self, backbone, config: TipAdapter.Config):
        if min(config.beta_steps, config.alpha_steps) < 1:
            raise ClipadaptError("beta_steps and alpha_steps must be at least 1")
        if config.clip_scale < 0:
            raise ClipadaptError(f"clip_scale must be positive (or 0: the model's own), got {config.clip_scale}")
        self.backbone, self.config = backbone, config
        self.text = TextClassifier(backbone, config.templates)
        self.cache = nn.ParameterDict()  # "cache_keys" [N, D] (learned by Tip-Adapter-F)
        self.values: torch.Tensor | None = None  # [N, C] one-hot over `classnames`
        self.classnames: list[str] = []
        self.alpha, self.beta = config.alpha, config.beta
        self.history: dict = {}

    def _cache_logits(self, features: torch.Tensor, classnames: Sequence[str], beta: float) -> torch.Tensor:
        """[B, len(classnames)]: the cache's vote for each requested class (0 for classes it has no entry of)."""
        affinity = F.normalize(self.backbone.to_device(features).float(), dim=-1) @ self.cache["cache_keys"].T
        votes = torch.exp(-beta * (1 - affinity)) @ self.values
        index = {name: i for i, name in enumerate(self.classnames)}
        columns = torch.tensor([index.get(name, -1) for name in classnames], device=votes.device)
        return torch.where(columns >= 0, votes[:, columns.clamp(min=0)], torch.zeros((), device=votes.device))

    def _clip_logits(self, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        image = F.normalize(features.to(weights).float(), dim=-1)
        scale = self.config.clip_scale or self.backbone.model.logit_scale.exp()
        return scale * image @ weights.T

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
        self.classnames = list(classnames)
        self.alpha, self.beta = self.config.alpha, self.config.beta  # a refit searches afresh
        if len(train) == 0:
            raise ClipadaptError("tip_adapter needs training features for its cache")
        labels = self._build_cache(train, generated)
        weights = self.text(self.classnames, template_key)
        summary: dict = {"cache_size": len(labels)}
        if self.config.finetune:
            summary["finetune"] = self._finetune(
                train, val, weights, template_key, out_dir, progress, generated, generated_ratio
            )
        if self.config.search and val is not None and len(val):
            summary.update(self._search(val, weights, progress))
        self.history = summary
        return summary

    def _build_cache(self, train: FeatureSet, generated: FeatureSet | None) -> torch.Tensor:
        """The cache's keys (normalized training features, with as many generated features per class as the real
        classes have shots) and one-hot values; returns the cached labels."""
        features, labels = train.features.float(), train.labels
        if generated is not None:
            shots = int(torch.bincount(train.labels).max())
            keep = torch.cat(
                [torch.nonzero(generated.labels == c).flatten()[:shots] for c in generated.labels.unique()]
            )
            features = torch.cat([features, generated.features[keep].float()])
            labels = torch.cat([labels, generated.labels[keep]])
        device = self.backbone.device
        self.cache = nn.ParameterDict({"cache_keys": nn.Parameter(F.normalize(features, dim=-1).to(device))})
        self.values = F.one_hot(labels, len(self.classnames)).float().to(device)
        return labels

    def _finetune(
        self,
        train: FeatureSet,
        val: FeatureSet | None,
        weights: torch.Tensor,
        template_key: str | None,
        out_dir: str | Path | None,
        progress: bool,
        generated: FeatureSet | None,
        generated_ratio: float,
    ) -> dict:
        """Tip-Adapter-F: the cache keys trained on the adapted logits' cross-entropy."""
        config = self.config
        if config.select == "val" and (val is None or len(val) == 0):
            # ImageNet and the fine-grained sets have no validation split; the official code chose on test.
            warnings.warn(
                "tip_adapter-F: no validation split to choose the epoch on; the last epoch is kept (select=last)",
                stacklevel=3,
            )
            config = dataclasses.replace(config, select="last")

        def adapted_logits(batch: torch.Tensor) -> torch.Tensor:
            cache = self._cache_logits(batch, self.classnames, self.config.beta)
            return self._clip_logits(batch, weights) + self.config.alpha * cache

        return train_prompt_learner(
            self.cache,
            lambda batch, batch_labels: F.cross_entropy(adapted_logits(batch), batch_labels),
            self.backbone,
            train,
            config,
            epochs=config.epochs,
            val=val,
            score=adapted_logits,
            out_dir=out_dir,
            fingerprint=(self.classnames, template_key, "tip_adapter"),
            progress=progress,
            desc="tip_adapter-F",
            generated=generated,
            generated_ratio=generated_ratio,
        )

    @torch.no_grad()
    def _search(self, val: FeatureSet, weights: torch.Tensor, progress: bool) -> dict:
        """alpha and beta with the best validation accuracy over the official grid (the first best wins)."""
        clip = self._clip_logits(val.features, weights)
        labels = val.labels.to(clip.device)
        alpha_grid = search_grid(self.config.alpha_scale, self.config.alpha_steps)
        alphas = torch.tensor(alpha_grid, device=clip.device)
        best = (-1.0, self.alpha, self.beta)
        for beta in tqdm(
            search_grid(self.config.beta_scale, self.config.beta_steps), desc="tip_adapter search", disable=not progress
        ):
            cache = self._cache_logits(val.features, self.classnames, beta)
            logits = clip + alphas[:, None, None] * cache  # [alphas, N, C]
            accuracies = (logits.argmax(dim=-1) == labels).float().mean(dim=1) * 100
            i = int(accuracies.argmax())  # first of equals, as the official loop's strict ">"
            if accuracies[i].item() > best[0]:
                best = (accuracies[i].item(), alpha_grid[i], beta)
        self.alpha, self.beta = best[1], best[2]
        return {"val_accuracy": best[0], "alpha": self.alpha, "beta": self.beta}

    @torch.no_grad()
    def logits(
        self, features: torch.Tensor, classnames: Sequence[str], template_key: str | None = None
    ) -> torch.Tensor:
        logits = self._clip_logits(features, self.text(classnames, template_key))
        if self.values is None:  # not fitted: zero-shot CLIP
            return logits
        return logits + self.alpha * self._cache_logits(features, classnames, self.beta)

    def save(self, path: str | Path, **header: Any) -> None:
        """The cache (keys as learned by Tip-Adapter-F, one-hot values) as safetensors, with the config, the
        cache's class names and the alpha and beta in use in the metadata."""
        if self.values is None:
            raise ClipadaptError("tip_adapter has no cache to save: fit it first")
        tensors = {"cache_keys": self.cache["cache_keys"], "values": self.values}
        save_method_weights(
            path,
            tensors,
            "tip_adapter",
            self.config,
            classnames=self.classnames,
            alpha=self.alpha,
            beta=self.beta,
            **header,
        )

    def load(self, path: str | Path) -> None:
        tensors, metadata = load_method_weights(path, "tip_adapter")
        keys, values = tensors.get("cache_keys"), tensors.get("values")
        if keys is None or values is None or keys.shape[-1] != self.backbone.embed_dim or len(keys) != len(values):
            raise CheckpointError(f"the tip_adapter cache in {path} does not fit this backbone")
        device = self.backbone.device
        self.cache = nn.ParameterDict({"cache_keys": nn.Parameter(keys.float().to(device))})
        self.values = values.float().to(device)
        self.classnames = list(metadata["classnames"])
        self.alpha, self.beta = metadata["alpha"], metadata["beta"]
