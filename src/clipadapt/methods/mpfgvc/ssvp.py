"""SsVP, the subcategory-specific vision prompt: which patch tokens the class token attends to most, and where
those tokens land relative to the parts that decide an image's class (patch and part boxes through the
preprocessing's resize and crop)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import transforms

SSVP_SCORES = ("attention", "rollout")


def ssvp_scores(attention_per_head: torch.Tensor) -> torch.Tensor:
    """Each patch token's score [B, N - 1]: the class token's attention to it summed over heads (sum_m A^m)."""
    return attention_per_head.sum(dim=1)[:, 1:]


def ssvp_tokens(attention_per_head: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, k] of the k patch tokens (index >= 1; 0 is the class token) with the largest class-token
    attention summed over heads: SsVP's id = TopK(sum_m A^m)."""
    return ssvp_scores(attention_per_head).topk(k, dim=-1).indices + 1


def patch_boxes(grid: int, image_size: int) -> torch.Tensor:
    """Pixel boxes [grid * grid, 4] (x0, y0, x1, y1; exclusive ends) of a ViT's patch tokens in row-major order."""
    size = image_size / grid
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    x0, y0 = cols.flatten() * size, rows.flatten() * size
    return torch.stack([x0, y0, x0 + size, y0 + size], dim=1)


def resized_shorter_side(transform, size: int) -> int | list[int]:
    """How the transform resizes an image before the centre `size` crop: the length its shorter side goes to
    (open_clip's CLIP transform: the crop size; timm's ViT transforms: size / crop_pct, 248 for 224), or the
    fixed [height, width] it squashes every image to (open_clip's `resize_mode=squash`)."""
    for step in getattr(transform, "transforms", []):
        if isinstance(step, transforms.Resize):
            if isinstance(step.size, int) or len(step.size) == 1:
                return step.size if isinstance(step.size, int) else step.size[0]
            return [int(step.size[0]), int(step.size[1])]
    return size


def box_in_crop(
    box: Sequence[float], width: int, height: int, size: int, resize: int | Sequence[int] | None = None
) -> list[float]:
    """`box` (x0, y0, x1, y1 in a width x height image) in the model's input after the preprocessing: the shorter
    side resized to `resize` (default `size`, as CLIP's) or the image squashed to `resize` = [height, width], then
    the centre `size` x `size` crop."""
    if isinstance(resize, (list, tuple)):
        sx, sy = resize[1] / width, resize[0] / height
    else:
        sx = sy = (resize or size) / min(width, height)
    dx, dy = (width * sx - size) / 2, (height * sy - size) / 2
    x0, y0, x1, y1 = box
    return [x0 * sx - dx, y0 * sy - dy, x1 * sx - dx, y1 * sy - dy]


def part_overlap(kept: torch.Tensor, boxes: torch.Tensor, parts: torch.Tensor) -> dict[str, float]:
    """Where kept patch tokens [N, K] (1-based, as `ssvp_tokens`) lie relative to each image's part boxes [N, M, 4]
    (or one box an image, [N, 4]), given the patch boxes [P, 4], in percent: `kept_tokens_on_part`, the kept tokens
    whose patch intersects a part (precision; `random_tokens_on_part`: the same over all patches), and
    `part_patches_kept`, the parts' patches that were kept (recall; `random_part_patches_kept`: K / P for tokens
    kept at random)."""
    parts = parts[:, None] if parts.dim() == 2 else parts
    patch, part = boxes[None, :, None], parts[:, None]  # [1, P, 1, 4], [N, 1, M, 4]
    hits = (
        (patch[..., 0] < part[..., 2])
        & (patch[..., 2] > part[..., 0])
        & (patch[..., 1] < part[..., 3])
        & (patch[..., 3] > part[..., 1])
    ).any(dim=-1)  # [N, P]
    kept_hits = torch.gather(hits, 1, kept - 1)
    return {
        "kept_tokens_on_part": 100.0 * kept_hits.float().mean().item(),
        "random_tokens_on_part": 100.0 * hits.float().mean().item(),
        "part_patches_kept": 100.0 * kept_hits.sum().item() / max(1, hits.sum().item()),
        "random_part_patches_kept": 100.0 * kept.shape[1] / boxes.shape[0],
    }
