"""MP-FGVC (Jiang et al., AAAI 2024): multimodal prompting for fine-grained classification, and the plain
fine-tuned baseline (`finetune`).

- SsVP (subcategory-specific vision prompt, parameter-free): at the penultimate block of the ViT image encoder,
  the class token's attention is summed over heads; the top-K patch tokens plus the class token are the whole
  input of the last block, so the final embedding E_V sees only the most attended (discriminative) patches.
- DaTP (discrepancy-aware text prompt): per subcategory c, J learned token vectors before the superclass name,
  `[X^c_1 .. X^c_J] <superclass>`, through the frozen CLIP text encoder: E_T^c. (The subcategory's own name is not
  in the prompt; its learned tokens are all that tell the prompts apart.)
- VLFM (vision-language fusion): 1x1 convolutions (linear maps on embedding vectors) give the query Q_0 of E_V and
  keys/values K_i, V_i of [E_V, E_T^1 .. E_T^C]; S_i = softmax_i(Q_0 K_i^T / sqrt(D)); E'_V = sum_i S_i V_i;
  a translation layer (two 1x1 convolutions, expansion 4, GELU between) and a linear classifier.
- Two stages: (1) the image encoder, a linear head on E_V and the DaTP tokens train with cross-entropy on the
  head plus the image-to-text contrastive loss over the C prompts (tau = 0.07), the text encoder frozen;
  (2) everything else frozen, the VLFM trains with cross-entropy on the stage-1 embeddings. The VLFM's classifier
  gives the predictions.

SsVP is off by default (`ssvp=true` is the paper's configuration): off is the best on the world's birds'
validation split (docs/mpfgvc.md, "The default configuration"). The image encoder is a fine-tuned copy of the
backbone's CLIP vision tower (the backbone itself stays as it was). Ablations of the paper's configuration:
`ssvp=false` (all tokens enter the last block), `datp=false` (frozen "a photo of a {name}." embeddings instead of
learned prompts), `fusion=concat` (E_V concatenated with every E_T^c instead of attention) or `fusion=none` (the
stage-1 head predicts; no stage 2). `finetune` is the same encoder trained with
cross-entropy only: no SsVP, no text, no fusion.

Not specified by the paper and chosen here (on the world's badges: 15 epochs at these rates beat 30 at a third
of them): AdamW (weight decay 0.05), lr 3e-4 for the encoder and 3e-3 for the new weights, one linear warm-up
epoch then cosine, 15 + 15 epochs, batch 32, no augmentation by default (`augment=true`: random
resized crop 0.5-1 and flip; a crop can cut a world badge's small spot out of the picture).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms
from tqdm.auto import tqdm

from ...checkpoint import load_method_weights, load_module_state, save_method_weights
from ...data import DatasetSplits, ImageDataset, Sample, load_image, load_image_size, read_part_boxes
from ...digest import fingerprint as digest  # `fingerprint` names the run's own here
from ...errors import CheckpointError, ClipadaptError
from ...text import TextClassifier
from ...training.batches import training_batches
from ...training.distributed import threads_beside_workers
from ...training.loop import Trainer, frozen, param_groups
from ...training.schedules import cosine_lr
from ..contract import Capabilities, Claim, Evaluated, register_method
from .fusion import FUSIONS, VisionLanguageFusion
from .ssvp import SSVP_SCORES, box_in_crop, part_overlap, patch_boxes, resized_shorter_side, ssvp_scores, ssvp_tokens
from .towers import ClipTower, TimmTower

TEMPLATE = "a photo of a {}."
PRELOAD_BYTES = 2 << 30
# The options that decide which tokens SsVP keeps (`ssvp_start_epoch` only delays it during training).
SSVP_SELECTION = ("top_k", "ssvp_layer", "ssvp_score")
DEFAULT_SUPERCLASS = "object"


@register_method("mpfgvc")
class MPFGVC:
    """Trains on images (`fit_images`) and predicts on images (`image_logits`): its image encoder is tuned, so
    cached frozen features are of no use to it. It classifies the classes it was trained on (closed set)."""

    # SsVP's kept tokens are measured against the data set's part boxes, where it has them (`diagnose`).
    capabilities = Capabilities(trains=True, needs_images=True, scores_unseen_classes=False, diagnoses=True)
    claims = (Claim("full", "accuracy", "finetune", +1, "MP-FGVC (AAAI 2024), ablation: CUB-200-2011"),)

    @dataclass
    class Config:
        image_encoder: str = "clip"  # clip (the backbone's vision tower) | timm:NAME (e.g. timm:vit_base_patch16_224)
        image_encoder_weights: str = ""  # timm: a local weights file (.safetensors, .pth, .bin); "": random init
        image_size: int = 0  # input size of the tuned tower (the paper: 448 for a 224-pixel ViT-B/16), its position
        # embeddings resampled; 0: the encoder's own
        ssvp: bool = False  # true: the paper's configuration; off by default, the best on the birds' validation
        # split over five seeds (docs/mpfgvc.md, "The default configuration")
        top_k: int = 0  # patch tokens kept by SsVP; 0: a quarter of them
        ssvp_layer: int = -2  # whose class-token attention chooses: -2 the penultimate block (the paper), -1 the
        # last block's own attention over the penultimate block's output
        ssvp_start_epoch: int = 0  # stage-1 epochs trained with every token before SsVP selects (0: from the start,
        # the paper); an encoder pretrained without the parts in view first learns to attend to them
        ssvp_score: str = "attention"  # attention (that block's, the paper) | rollout (TransFG: the class-token
        # row of the product of every block's attention map up to that block)
        datp: bool = True
        n_text_tokens: int = 4  # J learned tokens per subcategory
        datp_init: str = "random"  # random (N(0, 0.02), the paper) | name (from the subcategory name's tokens)
        contrastive: bool = True  # stage 1's image-to-text loss
        temperature: float = 0.07
        fusion: str = "vlfm"  # vlfm | concat | none
        expansion: int = 4
        superclass: str = ""  # "": the data set's (e.g. "bird"), else "object"
        stage1_epochs: int = 15
        stage2_epochs: int = 15
        batch_size: int = 32
        lr: float = 3e-4  # image encoder
        head_lr: float = 3e-3  # heads, prompt tokens, VLFM
        weight_decay: float = 0.05
        warmup_epochs: int = 1
        augment: bool = False
        seed: int = 1
        checkpoint_every: int = 200

    def __init__(self, backbone, config: MPFGVC.Config):
        if config.fusion not in FUSIONS:
            raise ClipadaptError(f"fusion must be one of {', '.join(FUSIONS)}, got '{config.fusion}'")
        if config.datp and not config.contrastive:
            raise ClipadaptError(
                "datp=true learns its prompt tokens through the contrastive loss: it needs "
                "contrastive=true (or datp=false)"
            )
        if not 0 <= config.ssvp_start_epoch < max(1, config.stage1_epochs):
            raise ClipadaptError(
                f"ssvp_start_epoch must lie in [0, stage1_epochs={config.stage1_epochs}), got {config.ssvp_start_epoch}"
            )
        if min(config.lr, config.head_lr) <= 0 or config.top_k < 0:
            raise ClipadaptError("lr and head_lr must be positive and top_k at least 0 (0: a quarter of the patches)")
        if config.image_encoder != "clip" and not config.image_encoder.startswith("timm:"):
            raise ClipadaptError(f"image_encoder must be clip or timm:NAME, got '{config.image_encoder}'")
        if config.image_size < 0:
            raise ClipadaptError(f"image_size must be positive (or 0: the encoder's own), got {config.image_size}")
        if config.datp_init not in ("random", "name"):
            raise ClipadaptError(f"datp_init must be random or name, got '{config.datp_init}'")
        if config.ssvp_score not in SSVP_SCORES:
            raise ClipadaptError(f"ssvp_score must be one of {', '.join(SSVP_SCORES)}, got '{config.ssvp_score}'")
        if config.ssvp_layer not in (-2, -1):
            raise ClipadaptError(f"ssvp_layer must be -2 (penultimate block) or -1 (last), got {config.ssvp_layer}")
        unused = [
            f"{name}={getattr(config, name)}"
            for name in (*SSVP_SELECTION, "ssvp_start_epoch")
            if getattr(config, name) != getattr(type(config), name)
        ]
        if unused and not config.ssvp:  # a silent no-op otherwise: SsVP is off by default
            raise ClipadaptError(
                f"{', '.join(unused)} set how SsVP selects tokens, and {self.name} runs without SsVP: "
                + ("add ssvp=true" if type(self) is MPFGVC else "SsVP is MP-FGVC's (clipadapt run mpfgvc ssvp=true)")
            )
        if config.datp:
            backbone.context_vectors(config.n_text_tokens)  # fails early when the prompt cannot fit
        self.backbone, self.config = backbone, config
        self.template_text = TextClassifier(backbone, TEMPLATE)  # the frozen prompts of datp=false
        self.classnames: list[str] = []
        self._train_samples: list[Sample] = []
        self.superclass = ""
        self.model: nn.ModuleDict | None = None
        self.history: dict = {}
        self._text_cache: tuple | None = None  # (key, E_T) of `_scoring_text`

    # ---- the networks ----------------------------------------------------------------------------------
    def _build(self, classnames: Sequence[str], superclass: str, encoder_weights: bool = True) -> nn.ModuleDict:
        """The networks for `classnames`; `encoder_weights=False` leaves a timm encoder's weights file unread (its
        weights come from a saved model next)."""
        backbone, config = self.backbone, self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if config.image_encoder == "clip":
                tower = ClipTower(backbone, config.image_size)
            else:
                tower = TimmTower(
                    config.image_encoder.removeprefix("timm:"),
                    config.image_encoder_weights if encoder_weights else "",
                    backbone.embed_dim,
                    config.image_size,
                )
            model = nn.ModuleDict(
                {
                    "visual": tower,
                    "head": nn.Linear(backbone.embed_dim, len(classnames)),
                }
            )
            if config.datp:
                model["prompts"] = nn.ParameterDict({"ctx": nn.Parameter(self._initial_prompts(classnames))})
            if config.fusion != "none":
                model["fusion"] = VisionLanguageFusion(
                    backbone.embed_dim, len(classnames), config.expansion, config.fusion
                )
        self.superclass = superclass
        return model.to(backbone.device)

    def _initial_prompts(self, classnames: Sequence[str]) -> torch.Tensor:
        """DaTP's tokens [C, J, width]: N(0, 0.02) (the paper), or with `datp_init=name` each class's first J
        name-token embeddings (the rest random), so the prompts start apart instead of all reading "<superclass>"."""
        config, backbone = self.config, self.backbone
        ctx = torch.randn(len(classnames), config.n_text_tokens, backbone.text_width) * 0.02
        if config.datp_init == "name":
            for c, name in enumerate(classnames):
                words = backbone.embed_words(name)[: config.n_text_tokens].float().cpu()
                ctx[c, : len(words)] = words
        return ctx

    @torch.no_grad()  # the choice of tokens is not differentiable
    def _attention_product(
        self, tower: nn.Module, block: nn.Module, x: torch.Tensor, product: torch.Tensor | None
    ) -> torch.Tensor:
        """`block`'s attention over `x`: the class token's row [B, heads, N] (`ssvp_score=attention`), or the whole
        map [B, heads, N, N] multiplied onto the product of the earlier blocks' maps (`rollout`)."""
        if self.config.ssvp_score != "rollout":
            return tower.attention(block, x)
        weights = tower.attention(block, x, cls_only=False)
        return weights if product is None else weights @ product

    def encode_images(self, images: torch.Tensor, return_kept: bool = False, ssvp: bool | None = None):
        """E_V [B, D] from the tuned encoder, with SsVP before the last block (and the kept token indices);
        `ssvp=False` runs every token (the config's `ssvp` by default)."""
        embedding, kept, _ = self._encode(images, self.config.ssvp if ssvp is None else ssvp)
        return (embedding, kept) if return_kept else embedding

    def _encode(
        self, images: torch.Tensor, ssvp: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """E_V [B, D], SsVP's kept token indices [B, K] and every patch's score [B, N - 1] (None without SsVP)."""
        tower = self.model["visual"]
        blocks = tower.blocks
        x = tower.embed(self.backbone.to_device(images))
        kept = scores = None
        if not ssvp:
            for block in blocks:
                x = block(x)
        else:
            if len(blocks) < 2:
                raise ClipadaptError("SsVP needs a vision tower with at least two blocks")
            # The class-token attention at the choosing block (-2: the penultimate, -1: the last, over the
            # penultimate block's output), or rolled out through every block up to it.
            chooser = len(blocks) + self.config.ssvp_layer
            rollout = self.config.ssvp_score == "rollout"
            product = None
            for i, block in enumerate(blocks[:-1]):
                if rollout or i == chooser:
                    product = self._attention_product(tower, block, x, product)
                x = block(x)
            if chooser == len(blocks) - 1:
                product = self._attention_product(tower, blocks[-1], x, product)
            attention = product[:, :, 0] if rollout else product
            k = self.config.top_k or max(1, (x.shape[1] - 1) // 4)
            if k > x.shape[1] - 1:
                raise ClipadaptError(f"top_k={k} is more than the {x.shape[1] - 1} patch tokens")
            scores, kept = ssvp_scores(attention), ssvp_tokens(attention, k)
            selected = torch.gather(x, 1, kept[..., None].expand(-1, -1, x.shape[-1]))
            x = blocks[-1](torch.cat([x[:, :1], selected], dim=1))
        return tower.pool(x), kept, scores

    def text_embeddings(self) -> torch.Tensor:
        """E_T [C, D], unit norm: DaTP's prompts `[X^c_1..X^c_J] <superclass>`, or the frozen template."""
        if not self.config.datp:
            return self.template_text(self.classnames)
        ctx = self.model["prompts"]["ctx"]
        index = torch.zeros(len(ctx), dtype=torch.long)
        return self.backbone.encode_prompted_text(ctx, [self.superclass], normalize=True, class_index=index).float()

    # ---- training ----------------------------------------------------------------------------------------
    def _train_transform(self):
        tower = self.model["visual"]
        if not self.config.augment:
            return tower.transform()
        normalize = next(t for t in tower.transform().transforms if isinstance(t, transforms.Normalize))
        return transforms.Compose(
            [
                transforms.RandomResizedCrop(
                    tower.image_size, scale=(0.5, 1.0), interpolation=transforms.InterpolationMode.BICUBIC
                ),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )

    def _steps_per_epoch(self, n: int) -> int:
        return max(1, math.ceil(n / self.config.batch_size))  # the last, partial batch included

    def _run_stage(
        self,
        name: str,
        trainable: nn.Module,
        groups: list[dict],
        epochs: int,
        n: int,
        step_fn,
        out_dir: Path | None,
        progress: bool,
        transform: Callable | None = None,
        num_workers: int = 0,
    ) -> dict:
        """One training stage: AdamW over `groups` (their `lr_scale` times the head lr), a warm-up epoch, cosine.
        `step_fn((indices, images), step)`: images are the training images through `transform` (decoded in
        `num_workers` processes), or None without a transform."""
        steps_per_epoch = self._steps_per_epoch(n)
        batches = training_batches(
            n,
            self.config.batch_size,
            steps_per_epoch,
            epochs,
            self.config.seed,
            self._train_samples,
            transform,
            num_workers,
        )

        data = digest("\n".join(f"{s.path}\t{s.label}" for s in self._train_samples), length=64)
        fingerprint = json.dumps(
            [asdict(self.config), self.classnames, self.superclass, name, self.backbone.fingerprint(), data],
            sort_keys=True,
        )
        trainer = Trainer(
            trainable,
            torch.optim.AdamW(groups),
            total_steps=epochs * steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            lr_at=lambda step: cosine_lr(
                step, epochs * steps_per_epoch, self.config.warmup_epochs * steps_per_epoch, self.config.head_lr
            ),
            out_dir=out_dir / name if out_dir else None,
            run_fingerprint=fingerprint,
            checkpoint_every=self.config.checkpoint_every,
            progress=progress,
            desc=f"{type(self).__name__.lower()} {name}",
        )
        trainable.train()
        with threads_beside_workers(self.backbone.device, num_workers if transform is not None else 0):
            trainer.fit(batches, step_fn)
        trainable.eval()
        return {**trainer.summary(), "epochs": epochs}

    def fit_images(
        self, splits: DatasetSplits, out_dir: str | Path | None = None, progress: bool = True, num_workers: int = 0
    ) -> dict:
        """Both stages on `splits.train` (images); the superclass comes from the config or the data set."""
        if not splits.train:
            raise ClipadaptError(f"data set '{splits.name}' has no training images")
        self.classnames = list(splits.classnames)
        superclass = self.config.superclass or splits.annotations.get("superclass") or DEFAULT_SUPERCLASS
        self.model = self._build(self.classnames, superclass)
        out_dir = Path(out_dir) if out_dir is not None else None
        samples = self._train_samples = splits.train
        transform = self._train_transform()
        # Without augmentation every epoch sees the same tensors: decode and transform each image once, when they
        # fit in PRELOAD_BYTES (a world data set does; Food-101 at 224 px would take 45 GB).
        size = len(samples) * 3 * self.model["visual"].image_size ** 2 * 4
        preload = not self.config.augment and size <= PRELOAD_BYTES
        fixed = self._preload(samples, transform, num_workers, progress) if preload else None
        labels = torch.tensor([s.label for s in samples])
        with frozen(self.backbone.model):
            self.history = {"stage1": self._stage1(samples, labels, fixed, transform, out_dir, progress, num_workers)}
        if self.config.fusion != "none":
            self.history["stage2"] = self._stage2(samples, labels, fixed, out_dir, progress, num_workers)
        return self.history

    def _stage1(
        self,
        samples: Sequence[Sample],
        labels: torch.Tensor,
        fixed: torch.Tensor | None,
        transform: Callable,
        out_dir: Path | None,
        progress: bool,
        num_workers: int,
    ) -> dict:
        """Stage 1: the encoder (with SsVP), the head and DaTP's prompts, on cross-entropy and the image-to-text
        loss; the encoder at `lr`, the rest at `head_lr`. `fixed`: the preloaded images (else decoded per batch)."""
        config, model = self.config, self.model
        ssvp_start_step = config.ssvp_start_epoch * self._steps_per_epoch(len(samples))

        def stage1_loss(batch: tuple[torch.Tensor, torch.Tensor | None], step: int) -> torch.Tensor:
            indices, images = batch
            images = fixed[indices] if fixed is not None else images
            target = self.backbone.to_device(labels[indices])
            # SsVP from `ssvp_start_epoch` on: before, the encoder learns with every token where the parts are.
            embedding = self.encode_images(images, ssvp=config.ssvp and step >= ssvp_start_step)
            loss = F.cross_entropy(model["head"](embedding), target)
            if config.contrastive:
                similarity = F.normalize(embedding, dim=-1) @ self.text_embeddings().T
                loss = loss + F.cross_entropy(similarity / config.temperature, target)
            return loss

        stage1 = nn.ModuleDict({k: v for k, v in model.items() if k in ("visual", "head", "prompts")})
        heads = nn.ModuleDict({k: v for k, v in stage1.items() if k != "visual"})
        groups = [
            {**g, "lr_scale": config.lr / config.head_lr} for g in param_groups(model["visual"], config.weight_decay)
        ]
        groups += [{**g, "lr_scale": 1.0} for g in param_groups(heads, config.weight_decay)]
        groups = [g for g in groups if g["params"]]
        batch_transform = transform if fixed is None else None
        epochs = config.stage1_epochs
        return self._run_stage(
            "stage1", stage1, groups, epochs, len(samples), stage1_loss, out_dir, progress, batch_transform, num_workers
        )

    def _stage2(
        self,
        samples: Sequence[Sample],
        labels: torch.Tensor,
        fixed: torch.Tensor | None,
        out_dir: Path | None,
        progress: bool,
        num_workers: int,
    ) -> dict:
        """Stage 2: VLFM alone on cross-entropy; the encoder and the prompts are frozen, so their embeddings are
        computed once."""
        with torch.no_grad():
            visual = self._embed_samples(samples, progress, num_workers, decoded=fixed)  # same transform
            text = self.text_embeddings().detach()

        def stage2_loss(batch: tuple[torch.Tensor, None], step: int) -> torch.Tensor:
            indices = batch[0]
            target = self.backbone.to_device(labels[indices])
            return F.cross_entropy(self.model["fusion"](visual[self.backbone.to_device(indices)], text), target)

        groups = param_groups(self.model["fusion"], self.config.weight_decay)
        epochs = self.config.stage2_epochs
        return self._run_stage(
            "stage2", self.model["fusion"], groups, epochs, len(samples), stage2_loss, out_dir, progress
        )

    @staticmethod
    def _preload(samples: Sequence[Sample], transform: Callable, num_workers: int, progress: bool) -> torch.Tensor:
        """The transformed images of `samples`, decoded in `num_workers` processes and copied into one tensor
        batch by batch (a worker's batch sits in shared memory until it is copied)."""
        loader = DataLoader(ImageDataset(samples, transform), batch_size=64, num_workers=num_workers)
        images = None
        for batch, _, indices in tqdm(loader, desc="mpfgvc load", unit="batch", disable=not progress):
            if images is None:
                images = torch.empty(len(samples), *batch.shape[1:], dtype=batch.dtype)
            images[indices] = batch
        return images

    # ---- prediction --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _embed_samples(
        self,
        samples: Sequence[Sample],
        progress: bool,
        num_workers: int = 0,
        batch_size: int = 64,
        return_kept: bool = False,
        decoded: torch.Tensor | None = None,
    ):
        """E_V of `samples` (and SsVP's kept tokens); `decoded`: their already transformed images, if at hand."""
        if decoded is not None:
            batches = decoded.split(batch_size)
        else:
            loader = DataLoader(
                ImageDataset(samples, self.model["visual"].transform()),
                batch_size=batch_size,
                num_workers=num_workers,
                pin_memory=self.backbone.device.type == "cuda",
            )
            batches = (images for images, _, _ in loader)
        embeddings, kept = [], []
        for images in tqdm(
            batches, desc="mpfgvc encode", disable=not progress, total=math.ceil(len(samples) / batch_size)
        ):
            embedding, indices = self.encode_images(images, return_kept=True)
            embeddings.append(embedding.float())
            kept.append(indices)
        embeddings = torch.cat(embeddings)
        if return_kept:
            return embeddings, (torch.cat(kept) if kept[0] is not None else None)
        return embeddings

    def diagnose(self, evaluated: Evaluated) -> dict:
        """`part_overlap` (`kept_token_overlap`) on the test images whose parts the data set records; nothing
        without SsVP (ssvp=false) or part boxes."""
        parts_file = evaluated.splits.annotations.get("part_boxes")
        parts = read_part_boxes(parts_file) if parts_file and self.config.ssvp else None
        test = [s for s in evaluated.splits.test if s.path in parts] if parts else []
        if not test:
            return {}
        boxes = [list(parts[s.path].values()) for s in test]
        return {"part_overlap": self.kept_token_overlap(test, boxes, progress=evaluated.progress)}

    @torch.no_grad()
    def kept_token_overlap(
        self,
        samples: Sequence[Sample],
        parts: Sequence[Sequence[Sequence[float]]],
        progress: bool = False,
        examples: int = 6,
    ) -> dict:
        """Where SsVP looks (`part_overlap`): how many kept patch tokens overlap each image's discriminative parts
        (boxes x0, y0, x1, y1 in the image's own pixels, one or more an image, mapped through CLIP's resize of the
        shorter side and centre crop), and how many of the parts' patches are kept, each against randomly kept
        tokens. Under `examples`, for the first image of each of the first `examples` classes: its path, kept
        patches (0-based, row-major), every patch's score scaled to a maximum of 1, and the parts' boxes in the
        model's input, for overlays."""
        if self.model is None or not self.config.ssvp:
            raise ClipadaptError("kept-token overlap needs a fitted model with ssvp=true")
        size = self.model["visual"].image_size
        resize = resized_shorter_side(self.model["visual"].transform(), size)
        mapped = [
            [box_in_crop(box, *load_image_size(sample.path), size, resize) for box in boxes]
            for sample, boxes in zip(samples, parts)
        ]
        # Images with fewer parts are padded with empty boxes, which no patch intersects.
        padded = torch.zeros(len(mapped), max(map(len, mapped), default=1), 4)
        for i, boxes in enumerate(mapped):
            padded[i, : len(boxes)] = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        _, kept = self._embed_samples(samples, progress, return_kept=True)
        grid = self.model["visual"].grid
        overlap = part_overlap(kept.cpu(), patch_boxes(grid, size), padded)
        first_of_class: dict[int, int] = {}
        for i, sample in enumerate(samples):
            first_of_class.setdefault(sample.label, i)
        chosen = [first_of_class[label] for label in sorted(first_of_class)][:examples]
        shown = []
        if chosen:
            images = torch.stack([self.model["visual"].transform()(load_image(samples[i].path)) for i in chosen])
            _, chosen_kept, scores = self._encode(images, ssvp=True)
            scores = scores / scores.amax(dim=-1, keepdim=True).clamp_min(1e-12)
            shown = [
                {
                    "path": str(samples[i].path),
                    "label": samples[i].label,
                    "class": self.classnames[samples[i].label] if samples[i].label < len(self.classnames) else None,
                    "kept": sorted((chosen_kept[j] - 1).tolist()),
                    "scores": [round(v, 4) for v in scores[j].tolist()],
                    "parts": [[round(v, 2) for v in box] for box in mapped[i]],
                }
                for j, i in enumerate(chosen)
            ]
        return {
            **overlap,
            "tokens_kept": kept.shape[1],
            "tokens": grid * grid,
            "grid": grid,
            "image_size": size,
            "resize": resize,
            "examples": shown,
        }

    @torch.no_grad()
    def image_logits(
        self,
        samples: Sequence[Sample],
        classnames: Sequence[str],
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
    ) -> torch.Tensor:
        """Logits [N, C] of `samples`' images over the training classes (closed set: the same names)."""
        if self.model is None:
            raise ClipadaptError(f"{type(self).__name__.lower()} predicts with its tuned encoder: fit it first")
        if list(classnames) != self.classnames:
            raise ClipadaptError(
                f"{type(self).__name__.lower()} classifies the classes it was trained on; it "
                "cannot score other class names"
            )
        return self._scores(self._embed_samples(samples, progress, num_workers, batch_size))

    def image_transform(self) -> Callable:
        """The preprocessing `batch_logits` expects: the tuned tower's (its own input size)."""
        if self.model is None:
            raise ClipadaptError(f"{type(self).__name__.lower()} predicts with its tuned encoder: fit it first")
        return self.model["visual"].transform()

    @torch.no_grad()
    def batch_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] over the training classes of images [B, 3, H, W] preprocessed by `image_transform`."""
        return self._scores(self.encode_images(images.to(self.backbone.device)).float())

    def _scores(self, visual: torch.Tensor) -> torch.Tensor:
        if self.config.fusion == "none":
            return self.model["head"](visual)
        return self.model["fusion"](visual, self._scoring_text())

    def _scoring_text(self) -> torch.Tensor:
        """E_T for scoring (no gradients), kept until DaTP's prompts change: scoring in batches encodes the prompts
        once, and an exported classifier holds them as a constant instead of the text tower."""
        ctx = self.model["prompts"]["ctx"] if self.config.datp else None
        key = (id(self.model), id(ctx), ctx._version if ctx is not None else None)
        if self._text_cache is None or self._text_cache[0] != key:
            self._text_cache = (key, self.text_embeddings())
        return self._text_cache[1]

    def save(self, path: str | Path, **header: Any) -> None:
        """The tuned encoder, head, prompts and fusion module as safetensors, with the config, the training class
        names and the superclass in the metadata."""
        if self.model is None:
            raise ClipadaptError(f"{self.name} has nothing to save: fit it first")
        save_method_weights(
            path,
            self.model.state_dict(),
            self.name,
            self.config,
            classnames=self.classnames,
            superclass=self.superclass,
            **header,
        )

    def load(self, path: str | Path) -> None:
        """What `save` wrote, into the networks this config builds for those class names."""
        tensors, metadata = load_method_weights(path, self.name)
        # SsVP adds no weights: tuned with another token selection, the networks would load and predict otherwise.
        saved = metadata["config"]
        differing = [
            f"{key}={json.dumps(saved[key])}"
            for key in ("ssvp", *SSVP_SELECTION)
            if saved[key] != getattr(self.config, key)
        ]
        if differing:
            raise CheckpointError(f"{path} was trained with {', '.join(differing)}: load it with the same setting")
        self.classnames = list(metadata["classnames"])
        model = self._build(self.classnames, metadata["superclass"], encoder_weights=False)
        load_module_state(model, tensors, path, self.name)
        self.model = model.eval()
