"""CoOp (Zhou et al., IJCV 2022): learn the context words of the prompt "[ctx_1 .. ctx_M] <class name>.", CLIP frozen.

Mirrors KaiyangZhou/CoOp (`trainers/coop.py`, `configs/trainers/CoOp/*.yaml`, `COOP.md`): 16 context vectors drawn
from N(0, 0.02), or initialised from the token embeddings of a phrase ("a photo of a"); one context shared by all
classes, or one per class (`csc`); the class name at the end, middle or front; SGD lr 0.002 (momentum 0.9, weight
decay 5e-4), batch 32, one warm-up epoch at 1e-5 then cosine; 50 epochs for 1 shot, 100 for 2-4, 200 for 8-16;
the model of the last epoch is the one evaluated. Logits are logit_scale.exp() * cos(image, prompted class text).

Where the official code re-encodes every augmented image at every step, the default here scores the cached frozen
image features, so a step costs one text-encoder pass over the class prompts (`augment=true` does what the official
code does). The shared context transfers to any class names (base-to-new, cross-data-set); class-specific ones do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import CLASS_TOKEN_POSITIONS
from ..checkpoint import load_method_weights, save_method_weights
from ..errors import CheckpointError, ClipadaptError
from ..features import FeatureSet
from ..training.prompt_learner import TrainConfig, train_prompt_learner
from .contract import Capabilities, Claim, register_method


def epochs_for_shots(shots: int, dataset: str | None = None) -> int:
    """The official schedule by shots per class (COOP.md: rn50_ep50 for 1 shot, rn50_ep100 for 2 and 4, the
    200-epoch rn50 config for 8 and 16; "for ImageNet, we use *_ep50 for all settings"). More shots than 16 keep
    200 epochs. `dataset`: the data set's template key (ImageNet's is "ImageNet")."""
    return 50 if shots <= 1 or dataset == "ImageNet" else 100 if shots <= 4 else 200


@register_method("coop")
class CoOp:
    """After `fit`, `ctx` is the learned context ([n_ctx, width], or [n_cls, n_ctx, width] with `csc`) and
    `history` the training summary (epoch losses, and validation accuracies with `select=val`)."""

    # A shared context scores any class names; class-specific ones (csc) only the training classes (`logits`
    # says so when asked for others).
    capabilities = Capabilities(trains=True, trains_on_generated=True)
    claims = (
        Claim("fewshot", "accuracy", "zeroshot", +1, "CoOp (IJCV 2022), Fig. 3: 16 shots", min_shots=16),
        Claim("base2new", "base_accuracy", "zeroshot", +1, "CoCoOp (CVPR 2022), Table 1"),
        Claim("base2new", "new_accuracy", "zeroshot", -1, "CoCoOp (CVPR 2022), Table 1: CoOp's new classes fall"),
    )

    @dataclass
    class Config(TrainConfig):
        """CoOp's official recipe is TrainConfig's defaults (SHIP's CoOp training: schedule=cosine_steps
        drop_last=false crop_scale=0.5)."""

        n_ctx: int = 16  # context vectors (ignored with `init`: the phrase's token count is used)
        init: str = ""  # "": random N(0, 0.02); else a phrase whose token embeddings start the context
        csc: bool = False  # one context per class (cannot score other class names)
        class_token_position: str = "end"  # end | middle | front
        class_chunk: int = 1024  # class prompts per text-encoder call; more are chunked (activation checkpointing)

    def __init__(self, backbone, config: CoOp.Config):
        if config.class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ClipadaptError(
                f"class_token_position must be one of {', '.join(CLASS_TOKEN_POSITIONS)}, "
                f"got '{config.class_token_position}'"
            )
        backbone.context_vectors(config.n_ctx, config.init)  # fails early when the prompt is too long
        self.backbone = backbone
        self.config = config
        self.classnames: list[str] | None = None  # the training classes (what class-specific contexts belong to)
        self.history: dict = {}
        self._scoring_text: tuple | None = None  # (key, text features) of the last no-grad encoding
        # A shared context exists before training, so that an initialised prompt can be scored as it is.
        self.prompt = nn.ParameterDict({"ctx": self._initial_context(None)}) if not config.csc else None

    @property
    def ctx(self) -> torch.Tensor:
        if self.prompt is None:
            raise ClipadaptError("coop with csc=true has a context per training class: fit it first")
        return self.prompt["ctx"]

    def _initial_context(self, n_cls: int | None) -> nn.Parameter:
        """[n_ctx, width], or [n_cls, n_ctx, width] for class-specific contexts (each starting from the phrase,
        where the official code silently falls back to one shared context when given a phrase)."""
        if self.config.init:
            ctx = self.backbone.embed_words(self.config.init).float()
            if n_cls is not None:
                ctx = ctx.repeat(n_cls, 1, 1)
        else:
            shape = (self.config.n_ctx, self.backbone.text_width)
            ctx = (
                torch.randn(
                    (n_cls, *shape) if n_cls is not None else shape,
                    generator=torch.Generator().manual_seed(self.config.seed),
                )
                * 0.02
            )
        return nn.Parameter(ctx.clone().to(self.backbone.device))

    def _text_features(self, classnames: Sequence[str]) -> torch.Tensor:
        """The class prompts' features [C, D]. Without gradients they are kept until the context changes (its
        version counter moves with every optimizer step), so scoring test features in blocks encodes them once."""

        def encode() -> torch.Tensor:
            return self.backbone.encode_prompted_text(
                self.ctx,
                classnames,
                self.config.class_token_position,
                normalize=True,
                class_chunk=self.config.class_chunk,
            )

        if torch.is_grad_enabled():
            return encode()
        # The version counter moves with in-place updates (CoOp's SGD step, copy_); a new tensor has another id.
        ctx = self.ctx
        key = (tuple(classnames), id(ctx), ctx._version, ctx.data_ptr(), ctx.dtype, ctx.device)
        if self._scoring_text is None or self._scoring_text[0] != key:
            self._scoring_text = (key, encode())
        return self._scoring_text[1]

    def _logits(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        image = F.normalize(features.to(text), dim=-1)
        return self.backbone.model.logit_scale.exp() * image @ text.T

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
        """Learn the context on `train` (the learned prompt replaces any template; `template_key` names the data
        set for the epochs by shots).
        With `out_dir`, checkpoints go there and a rerun with the same arguments resumes. `generated` features
        (labelled in `classnames`, e.g. SHIP's for classes without data) join every batch."""
        self.classnames = list(classnames)
        self.prompt = nn.ParameterDict({"ctx": self._initial_context(len(classnames) if self.config.csc else None)})
        self._scoring_text = None
        epochs = self.config.epochs or epochs_for_shots(int(torch.bincount(train.labels).max()), template_key)

        def batch_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            # Every class prompt once per step, scored against the batch's image features.
            return F.cross_entropy(self._logits(features, self._text_features(self.classnames)), labels)

        self.history = train_prompt_learner(
            self.prompt,
            batch_loss,
            self.backbone,
            train,
            self.config,
            epochs=epochs,
            val=val,
            score=lambda features: self.logits(features, self.classnames),
            out_dir=out_dir,
            fingerprint=(self.classnames, "coop"),
            fingerprint_ignore=("class_chunk",),  # how prompts are batched, not what is learned
            progress=progress,
            desc="coop",
            generated=generated,
            generated_ratio=generated_ratio,
        )
        return self.history

    @torch.no_grad()
    def logits(
        self, features: torch.Tensor, classnames: Sequence[str], template_key: str | None = None
    ) -> torch.Tensor:
        if self.config.csc and self.prompt is not None and list(classnames) != self.classnames:
            raise ClipadaptError(
                "coop with csc=true learned one context per training class; it cannot score other class names "
                "(e.g. base2new's new classes): use the shared context (csc=false)"
            )
        return self._logits(features, self._text_features(classnames))

    def save(self, path: str | Path, **header: Any) -> None:
        """The learned context as safetensors, with the config and training class names in the metadata (and
        `header`: what a saved classifier adds)."""
        save_method_weights(path, {"ctx": self.ctx}, "coop", self.config, classnames=self.classnames, **header)

    def load(self, path: str | Path) -> None:
        """Context and training class names from `save`; the config's shape settings must match the file's."""
        tensors, metadata = load_method_weights(path, "coop")
        ctx = tensors["ctx"]
        saved = metadata["config"]
        if (
            ctx.shape[-1] != self.backbone.text_width
            or (ctx.ndim == 3) != self.config.csc
            or saved["class_token_position"] != self.config.class_token_position
        ):
            raise CheckpointError(
                f"the context in {path} (shape {tuple(ctx.shape)}, csc={saved['csc']}, "
                f"class_token_position={saved['class_token_position']}) does not fit this model "
                "and config"
            )
        self.classnames = metadata["classnames"]
        self.prompt = nn.ParameterDict({"ctx": nn.Parameter(ctx.to(self.backbone.device))})
        self._scoring_text = None
