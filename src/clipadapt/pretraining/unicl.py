"""UniCL pretraining (Yang et al., CVPR 2022): contrastive learning in image-text-label space.

Image-label samples become text through one of the 80 ImageNet templates drawn at random per sample and step;
image-text samples keep their caption and a label no other sample has. Every pair that shares a label is a
positive (`clipadapt.losses.unicl_loss`), batches mix the two kinds in a fixed ratio (`BalancedBatchSampler`),
and the temperature is learned (initialised at 1/0.07, clamped at 100). `loss=clip` treats every pair as
its own class (CLIP's loss on the same data) and `loss=ce` trains the image encoder with a linear classifier on
the image-label data only, the paper's two baselines.

The official repository (microsoft/UniCL) releases evaluation code only; this is the loop it leaves out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from timm.data import create_transform
from torch import nn
from torch.utils.data import DataLoader

from ..data import DatasetSplits, ImageDataset, Sample, load_dataset
from ..data.samplers import BalancedBatchSampler
from ..digest import fingerprint as digest  # `fingerprint` names the run's own here
from ..errors import ClipadaptError
from ..losses import clip_loss, gather_batch, unicl_loss
from ..text import IMAGENET_TEMPLATES, zeroshot_weights
from ..training.batches import decoded_batches
from ..training.distributed import distributed_world
from ..training.loop import Trainer, param_groups
from ..training.schedules import cosine_lr

LOSSES = ("unicl", "clip", "ce")


@dataclass
class PretrainConfig:
    loss: str = "unicl"  # unicl | clip | ce
    epochs: int = 8
    batch_size: int = 128  # per process
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup: float = 0.05  # fraction of all steps
    label_fraction: float = 0.5  # share of image-label samples in every batch
    grad_clip: float = 0.0  # 0: off
    max_logit_scale: float = 100.0
    seed: int = 0
    # microsoft/UniCL's training augmentation (`official_train_transform`); off by default: the shipped model and
    # the loss comparison (docs/world.md) were trained on the plain resized centre crops
    augment: bool = False
    workers: int = 0
    checkpoint_every: int = 200


@dataclass
class PretrainData:
    """Image-label samples (labels into `classnames`) followed by image-text samples (captions); `val`: the
    image-label data sets' validation images (labels into `classnames`), for the convergence curve."""

    classnames: list[str]
    labelled: list[Sample]
    captioned: list[Sample]
    val: list[Sample] = field(default_factory=list)

    @classmethod
    def from_specs(cls, specs: Sequence[str]) -> PretrainData:
        """Merge data sets; classes with the same name in several data sets share one label."""
        classnames: list[str] = []
        labelled, captioned, val = [], [], []
        for spec in specs:
            splits: DatasetSplits = load_dataset(spec)
            index = {}
            for name in splits.classnames:
                if name not in classnames:
                    classnames.append(name)
                index[name] = classnames.index(name)
            for sample in splits.train:
                if sample.label >= 0:
                    labelled.append(Sample(sample.path, index[splits.classnames[sample.label]], sample.caption))
                elif sample.caption:
                    captioned.append(sample)
                else:
                    raise ClipadaptError(f"{sample.path} in '{spec}' has neither a label nor a caption")
            val += [Sample(s.path, index[splits.classnames[s.label]]) for s in splits.val if s.label >= 0]
        if not labelled and not captioned:
            raise ClipadaptError(f"no training samples in {', '.join(specs)}")
        return cls(classnames, labelled, captioned, val)


def official_train_transform(backbone) -> Callable:
    """microsoft/UniCL's training pipeline (data/build.py: timm's create_transform with its config defaults) at the
    backbone's size and normalization: random resized crop (scale 0.08-1), horizontal flip, colour jitter 0.4,
    RandAugment rand-m9-mstd0.5-inc1, bicubic, random erasing with probability 0.25 (per-pixel noise)."""
    mean, std = backbone.normalization()
    return create_transform(
        backbone.image_size,
        is_training=True,
        color_jitter=0.4,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
        mean=mean,
        std=std,
    )


def channels_last_if_convolutional(tower: nn.Module) -> torch.memory_format:
    """`torch.channels_last` for an image tower built of convolutions, else `torch.contiguous_format` (a ViT has
    one convolution, its patch embedding)."""
    convolutions = sum(isinstance(module, nn.Conv2d) for module in tower.modules())
    return torch.channels_last if convolutions > 1 else torch.contiguous_format


class UniCLPretrainer:
    """Trains a `Backbone`'s two towers with the UniCL, CLIP or CE loss."""

    def __init__(self, backbone, config: PretrainConfig, data: PretrainData):
        if config.loss not in LOSSES:
            raise ClipadaptError(f"loss must be one of {', '.join(LOSSES)}, got '{config.loss}'")
        if config.loss == "ce" and not data.labelled:
            raise ClipadaptError("loss=ce needs image-label data")
        if config.workers < 0 or config.checkpoint_every < 1:
            raise ClipadaptError(
                f"workers must be 0 or more and checkpoint_every 1 or more, got {config.workers} "
                f"and {config.checkpoint_every}"
            )
        self.backbone, self.config, self.data = backbone, config, data
        self.rank, self.world_size = distributed_world()
        label_fraction = 1.0 if config.loss == "ce" else config.label_fraction
        n_text = 0 if config.loss == "ce" else len(data.captioned)
        self.sampler = BalancedBatchSampler(
            len(data.labelled),
            n_text,
            config.batch_size,
            label_fraction,
            seed=config.seed,
            rank=self.rank,
            world_size=self.world_size,
        )
        self.dataset = ImageDataset(data.labelled + data.captioned[:n_text], backbone.image_transform(train=False))
        self.train_transform = official_train_transform(backbone) if config.augment else None
        # Every label text is tokenized once: [n_classes, 80 templates, context] and [n_captions, context]. They
        # stay on the CPU, where a batch's texts are put together and cut to the longest without waiting for a GPU.
        self.label_tokens = (
            torch.stack([backbone.tokenize([t(name) for t in IMAGENET_TEMPLATES]) for name in data.classnames])
            if data.classnames
            else None
        )
        self.caption_tokens = backbone.tokenize([s.caption for s in data.captioned[:n_text]]) if n_text else None
        self.label_of_sample = torch.tensor([s.label for s in data.labelled], dtype=torch.long)
        self.head = (
            nn.Linear(backbone.embed_dim, len(data.classnames)).to(backbone.device) if config.loss == "ce" else None
        )
        self._memory_format = channels_last_if_convolutional(backbone.model.visual)
        self._val_images: torch.Tensor | None = None
        self.module = nn.ModuleDict({"clip": backbone.model, **({"head": self.head} if self.head else {})})

    def _texts(self, indices: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and UniCL labels for a batch (on the CPU): a random template per image-label sample (seeded by
        step, so a resumed run draws the same ones), the caption for image-text samples with a label of its own."""
        n_label, n_classes = len(self.data.labelled), len(self.data.classnames)
        is_label = indices < n_label
        labels = torch.empty_like(indices)
        tokens = torch.empty(len(indices), self.backbone.context_length, dtype=torch.long)
        if is_label.any():
            classes = self.label_of_sample[indices[is_label]]
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step * 8191 + self.rank)
            templates = torch.randint(len(IMAGENET_TEMPLATES), (len(classes),), generator=generator)
            tokens[is_label] = self.label_tokens[classes, templates]
            labels[is_label] = classes
        if (~is_label).any():
            caption_index = indices[~is_label] - n_label
            tokens[~is_label] = self.caption_tokens[caption_index]
            labels[~is_label] = n_classes + caption_index
        return tokens, labels

    def _loss(self, batch, step: int) -> torch.Tensor:
        # Nothing here waits for the GPU (texts and labels are made on the CPU and copied asynchronously), so the
        # host queues the whole step while the GPU runs, as a plain open_clip step does.
        images, _, indices = batch
        model = self.backbone.model
        # Channels-last on the device: on the CPU it would copy the pinned batch into unpinned memory.
        image_features = self.backbone.encode_image(
            self.backbone.to_device(images).to(memory_format=self._memory_format)
        )
        if self.config.loss == "ce":
            return F.cross_entropy(self.head(image_features), self.backbone.to_device(self.label_of_sample[indices]))
        tokens, labels = self._texts(indices, step)
        text_features = self.backbone.encode_text(tokens)
        image_features, text_features, labels = gather_batch(  # the losses normalize the features
            image_features, text_features, self.backbone.to_device(labels)
        )
        scale = model.logit_scale.exp()
        if self.config.loss == "clip":
            return clip_loss(image_features, text_features, scale)
        return unicl_loss(image_features, text_features, labels, scale)

    def _validate(self, trainer: Trainer) -> dict[str, float]:
        """The loss (a fixed template per image, batches of the training size) and the zero-shot accuracy (the
        80-template ensemble; CE: its head) on the held-out validation images: the curve that says when pretraining
        has converged."""
        cfg, model = self.config, self.backbone.model
        if self._val_images is None:  # decoded once
            dataset = ImageDataset(self.data.val, self.backbone.image_transform(train=False))
            self._val_images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        labels = torch.tensor([s.label for s in self.data.val])
        model.eval()
        with torch.no_grad():
            features = torch.cat(
                [
                    self.backbone.encode_image(self.backbone.to_device(chunk))
                    for chunk in self._val_images.split(cfg.batch_size)
                ]
            )
            if self.head is not None:
                logits = self.head(features)
                loss = F.cross_entropy(logits, self.backbone.to_device(labels)).item()
            else:
                tokens = self.label_tokens[labels, torch.arange(len(labels)) % len(IMAGENET_TEMPLATES)]
                text = self.backbone.encode_text(tokens)
                scale, losses = model.logit_scale.exp(), []
                for i in range(0, len(labels), cfg.batch_size):
                    part = slice(i, i + cfg.batch_size)
                    y = self.backbone.to_device(labels[part])
                    losses.append(
                        clip_loss(features[part], text[part], scale)
                        if cfg.loss == "clip"
                        else unicl_loss(features[part], text[part], y, scale)
                    )
                loss = torch.stack(losses).mean().item()
                weights = zeroshot_weights(self.backbone, self.data.classnames, IMAGENET_TEMPLATES)
                logits = F.normalize(features, dim=-1) @ weights.T
            accuracy = (logits.argmax(-1).cpu() == labels).float().mean().item() * 100
        model.train()
        return {"val_loss": round(loss, 5), "val_accuracy": round(accuracy, 2)}

    def _clamp_logit_scale(self) -> None:
        with torch.no_grad():
            self.backbone.model.logit_scale.clamp_(0, math.log(self.config.max_logit_scale))

    def _batches(self, epoch: int, offset: int):
        pin = self.backbone.device.type == "cuda"  # for asynchronous copies
        batches = list(self.sampler.batches(epoch, offset))
        if self.train_transform is None:
            return DataLoader(
                self.dataset,
                batch_sampler=batches,
                num_workers=self.config.workers,
                persistent_workers=False,
                pin_memory=pin,
            )
        # Augmented: each batch drawn from a seed of its step (and rank), so a resumed run, or one with other
        # workers, sees the same views.
        first = epoch * len(self.sampler) + offset
        tasks = [
            (torch.tensor(indices), self.config.seed * 1_000_003 + (first + i) * 8191 + self.rank + 500_009)
            for i, indices in enumerate(batches)
        ]
        loader = decoded_batches(self.dataset.samples, tasks, self.train_transform, self.config.workers, pin)
        return ((images, None, indices) for indices, images in loader)

    def fit(self, out_dir=None, progress: bool = True) -> dict:
        cfg = self.config
        self.backbone.model.train()
        # Channels-last for convolutional towers and a fused AdamW step: the speed bench/unicl_step.py measures
        # against open_clip's own step. Channels-last made an RN50 step 1.5x faster on an H200; for a ViT, whose
        # one convolution is the patch embedding, no gain was shown, so it is left off there.
        self.backbone.model.to(memory_format=self._memory_format)
        fused = all(p.device.type in ("cpu", "cuda") for p in self.module.parameters())
        optimizer = torch.optim.AdamW(
            param_groups(self.module, cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            fused=fused,
        )
        total = cfg.epochs * len(self.sampler)
        warmup = max(1, round(cfg.warmup * total))
        # What a run computes: settings that do not change it (decoding processes, checkpoint frequency) are left
        # out, at their defaults, so a run resumes with other ones.
        computed = asdict(
            replace(cfg, workers=PretrainConfig.workers, checkpoint_every=PretrainConfig.checkpoint_every)
        )
        fingerprint = digest(
            [
                computed,
                self.backbone.config,
                self.data.classnames,
                len(self.data.labelled),
                len(self.data.captioned),
                self.world_size,
            ]
        )
        trainer = Trainer(
            self.module,
            optimizer,
            total_steps=total,
            steps_per_epoch=len(self.sampler),
            lr_at=lambda step: cosine_lr(step, total, warmup, cfg.lr),
            out_dir=out_dir,
            run_fingerprint=fingerprint,
            checkpoint_every=cfg.checkpoint_every,
            grad_clip=cfg.grad_clip or None,
            after_step=self._clamp_logit_scale,
            validate=self._validate if self.data.val else None,
            progress=progress,
            desc=f"pretrain ({cfg.loss})",
        )
        trainer.fit(self._batches, self._loss)
        self.backbone.model.eval()
        images = trainer.total_steps * cfg.batch_size * self.world_size
        return {
            "loss": cfg.loss,
            **trainer.summary(),
            "images_per_second": round(images / max(trainer.seconds, 1e-9), 1),
            "num_classes": len(self.data.classnames),
            "num_label_samples": len(self.data.labelled),
            "num_text_samples": len(self.data.captioned),
            "logit_scale": round(self.backbone.model.logit_scale.exp().item(), 3),
            "world_size": self.world_size,
            "config": asdict(cfg),
        }
