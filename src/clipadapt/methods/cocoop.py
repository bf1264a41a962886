"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context shifted per image by a small meta-network of the image feature.

Mirrors KaiyangZhou/CoOp (`trainers/cocoop.py`, `configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml`):
4 context vectors initialised from "a photo of a", a meta-net Linear(D, D/16) -> ReLU -> Linear(D/16, width) of the
L2-normalized image feature whose output is added to every context vector, CLIP frozen; SGD (momentum 0.9, weight
decay 5e-4 on every learned weight), 10 epochs, one warm-up epoch at 1e-5 then cosine; the last epoch is evaluated.

The official code trains with batch 1 and loops over images, running the text encoder once per image. Here a batch's
per-image prompts go through one text-encoder call (context [B, 1, n_ctx, width] -> text features [B, n_cls, D]),
so the default batch is a real one: 32, with the official per-image lr scaled linearly (0.002 x 32), which keeps
the distance SGD travels per epoch that of the batch-1 recipe (on the world's base-to-new split it reproduced the
batch-1 loss curve and accuracies; batch 32 at lr 0.002 barely moved from the initial prompt). Memory grows with
batch x classes prompts: lower `batch_size` (the lr follows) for many classes on a large model. Inference runs
`eval_batch` images at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_method_weights, save_method_weights
from ..errors import CheckpointError, ClipadaptError
from ..features import FeatureSet
from ..training.prompt_learner import TrainConfig, train_prompt_learner
from .contract import Capabilities, Claim, register_method

OFFICIAL_LR = 0.002  # per step at the official batch size of 1


class ConditionalContext(nn.Module):
    """Learned context plus a meta-net bias per image: normalized image features [B, D] -> [B, 1, n_ctx, width]
    (one context per image, shared by its class prompts: the layout `encode_prompted_text` batches)."""

    def __init__(self, ctx: torch.Tensor, vis_dim: int):
        super().__init__()
        if vis_dim < 16:
            raise ClipadaptError(f"cocoop's meta-net needs an image embedding of at least 16 dimensions, got {vis_dim}")
        self.ctx = nn.Parameter(ctx)
        self.meta_net = nn.Sequential(
            OrderedDict(
                [
                    ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
                    ("relu", nn.ReLU()),
                    ("linear2", nn.Linear(vis_dim // 16, ctx.shape[-1])),
                ]
            )
        )

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return (self.ctx + self.meta_net(image_features)[:, None, :])[:, None]


@register_method("cocoop")
class CoCoOp:
    """After `fit`, `prompt` holds the learned context (`prompt.ctx`) and meta-net, `history` the training summary."""

    capabilities = Capabilities(trains=True)
    claims = (
        Claim("base2new", "new_accuracy", "coop", +1, "CoCoOp (CVPR 2022), Table 1"),
        Claim("base2new", "harmonic_mean", "coop", +1, "CoCoOp (CVPR 2022), Table 1"),
        Claim("crossdataset", "average_target_accuracy", "coop", +1, "CoCoOp (CVPR 2022), Table 2"),
    )

    @dataclass
    class Config(TrainConfig):
        n_ctx: int = 4  # context vectors (ignored with `init`: the phrase's token count is used)
        init: str = "a photo of a"  # "": random N(0, 0.02)
        epochs: int = 10
        batch_size: int = 32  # images per step, their prompts encoded in one call (the official code: 1)
        lr: float = 0.0  # 0: the official 0.002 at batch 1 scaled linearly, 0.002 * batch_size (and warmup_lr)
        eval_batch: int = 64  # images per text-encoder call when scoring (each adds n_cls prompts)

    def __init__(self, backbone, config: CoCoOp.Config):
        if config.eval_batch < 1:
            raise ClipadaptError(f"eval_batch must be at least 1, got {config.eval_batch}")
        backbone.context_vectors(config.n_ctx, config.init)  # fails early when the prompt is too long
        self.backbone = backbone
        # lr 0: the official batch-1 rates scaled to the batch, the warm-up's too (same distance per epoch)
        self.config = (
            config
            if config.lr
            else replace(config, lr=OFFICIAL_LR * config.batch_size, warmup_lr=config.warmup_lr * config.batch_size)
        )
        self.history: dict = {}
        self.prompt = self._initial_prompt()

    def _initial_prompt(self) -> ConditionalContext:
        # Seeded without touching the global RNG: the meta-net's default init draws from it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            if self.config.init:
                ctx = self.backbone.embed_words(self.config.init).float().clone()
            else:
                ctx = torch.randn(self.config.n_ctx, self.backbone.text_width) * 0.02
            prompt = ConditionalContext(ctx.cpu(), self.backbone.embed_dim)
        return prompt.to(self.backbone.device)

    def _logits(self, features: torch.Tensor, classnames: Sequence[str]) -> torch.Tensor:
        """[B, n_cls]: each image against its own prompted class texts, all in one text-encoder call."""
        image = F.normalize(self.backbone.to_device(features).float(), dim=-1)
        text = self.backbone.encode_prompted_text(self.prompt(image), classnames, normalize=True)  # [B, n_cls, D]
        return self.backbone.model.logit_scale.exp() * torch.einsum("bd,bcd->bc", image, text)

    def fit(
        self,
        train: FeatureSet,
        classnames: Sequence[str],
        val: FeatureSet | None = None,
        template_key: str | None = None,
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> dict:
        """Learn context and meta-net on `train` (`template_key` is unused: the learned prompt replaces templates).
        With `out_dir`, checkpoints go there and a rerun with the same arguments resumes."""
        classnames = list(classnames)
        self.prompt = self._initial_prompt()

        def batch_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self._logits(features, classnames), labels)

        self.history = train_prompt_learner(
            self.prompt,
            batch_loss,
            self.backbone,
            train,
            self.config,
            epochs=self.config.epochs,
            val=val,
            score=lambda features: self.logits(features, classnames),
            out_dir=out_dir,
            fingerprint=(classnames, "cocoop"),
            progress=progress,
            desc="cocoop",
        )
        return self.history

    @torch.no_grad()
    def logits(
        self, features: torch.Tensor, classnames: Sequence[str], template_key: str | None = None
    ) -> torch.Tensor:
        """Any class names: the context is shared, only its per-image shift depends on the image."""
        classnames = list(classnames)
        if torch.compiler.is_exporting():  # one graph for any batch size: whoever runs the exported file batches
            return self._logits(features, classnames)
        return torch.cat([self._logits(chunk, classnames) for chunk in features.split(self.config.eval_batch)])

    def save(self, path: str | Path, **header: Any) -> None:
        """Context and meta-net as safetensors, with the config (and `header`) in the metadata."""
        save_method_weights(path, self.prompt.state_dict(), "cocoop", self.config, **header)

    def load(self, path: str | Path) -> None:
        state, _ = load_method_weights(path, "cocoop")
        prompt = ConditionalContext(state["ctx"], self.backbone.embed_dim)
        try:
            prompt.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"the cocoop prompt in {path} does not fit this model: {e}") from e
        self.prompt = prompt.to(self.backbone.device)
