"""Contrastive losses in image-text-label space.

UniCL (Yang et al., CVPR 2022, eq. 2-4): for a batch of image features v_i and text features u_j with labels y,
the positives of image i are all texts j with y_j == y_i (and vice versa), and

    L_i2t = -1/B sum_i 1/|P(i)| sum_{k in P(i)} log softmax_j(s v_i.u_j)_k
    L_t2i = -1/B sum_j 1/|P(j)| sum_{k in P(j)} log softmax_i(s v_i.u_j)_k
    L     = (L_i2t + L_t2i) / 2

With every label distinct this is exactly CLIP's symmetric InfoNCE loss.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import gather_features


def unicl_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor | float,
) -> torch.Tensor:
    """UniCL loss of paired features [B, D] (L2-normalized here) with int labels [B]; image-text pairs without a
    class must carry a label no other sample has. `logit_scale` is the multiplier (already exponentiated)."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale * image_features @ text_features.T
    positives = (labels[:, None] == labels[None, :]).to(logits.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True)  # symmetric matrix: rows and columns alike
    image_to_text = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """CLIP's loss: every pair is its own class (same-class duplicates in a batch become negatives)."""
    return unicl_loss(
        image_features, text_features, torch.arange(len(image_features), device=image_features.device), logit_scale
    )


def gather_batch(
    image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global batch across processes: features all-gathered with gradients (open_clip's gather), labels
    without. Identity when not running distributed. Every process must hold the same number of samples."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return image_features, text_features, labels
    world_size = dist.get_world_size()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the all_gather open_clip calls
        all_images, all_texts = gather_features(
            image_features,
            text_features,
            local_loss=False,
            gather_with_grad=True,
            rank=dist.get_rank(),
            world_size=world_size,
        )
    gathered_labels = [torch.empty_like(labels) for _ in range(world_size)]
    dist.all_gather(gathered_labels, labels)
    return all_images, all_texts, torch.cat(gathered_labels)
