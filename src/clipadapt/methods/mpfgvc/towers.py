"""The image encoders MP-FGVC tunes: a copy of the backbone's CLIP vision tower, or a timm ViT, each exposing its
blocks and the class token's attention so that SsVP can choose tokens before the last block."""

from __future__ import annotations

import copy

import open_clip
import torch
from torch import nn

from ...backbone import block_attention, read_state_dict
from ...errors import CheckpointError, ClipadaptError


class ClipTower(nn.Module):
    """A tuned copy of the backbone's open_clip ViT tower, seen as embed -> blocks -> pool."""

    def __init__(self, backbone, image_size: int = 0):
        super().__init__()
        visual = backbone.model.visual
        if not isinstance(visual, open_clip.transformer.VisionTransformer):
            raise ClipadaptError(f"model '{backbone.name}' has no ViT image tower; mpfgvc needs one")
        self.visual = copy.deepcopy(visual).float()
        self.name = backbone.name
        if image_size and image_size != backbone.image_size:
            self._resize(image_size)
        self.image_size, self.grid = _size(self.visual.image_size), _size(self.visual.grid_size)
        self._transform = backbone.image_transform(size=self.image_size)

    def _resize(self, image_size: int) -> None:
        """Run the tower at `image_size`: its position embeddings resampled to the larger (or smaller) patch grid
        as open_clip does for a checkpoint of another size; the paper runs its 224-pixel ViT-B/16 at 448."""
        patch = _size(self.visual.patch_size)
        if image_size % patch:
            raise ClipadaptError(
                f"image_size={image_size} is not a multiple of model '{self.name}''s patch size {patch}"
            )
        self.visual.image_size, self.visual.grid_size = (image_size, image_size), (image_size // patch,) * 2
        state = {"visual.positional_embedding": self.visual.positional_embedding.data}
        open_clip.model.resize_pos_embed(state, self)
        self.visual.positional_embedding = nn.Parameter(state["visual.positional_embedding"])

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    def transform(self):
        return self._transform

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual._embeds(images)

    def attention(self, block: nn.Module, x: torch.Tensor, cls_only: bool = True) -> torch.Tensor:
        return block_attention(block, x, self.name, cls_only)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.visual._pool(x)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled


def _size(value: int | tuple[int, ...]) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


class TimmTower(nn.Module):
    """A timm ViT (e.g. `vit_base_patch16_224`, ImageNet-21k weights as the paper) from a local weights file, its
    class token projected to the CLIP embedding size by a new linear layer so that it meets the text prompts."""

    def __init__(self, name: str, weights: str, embed_dim: int, image_size: int = 0):
        super().__init__()
        import timm  # a slow import, needed by this option only
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

        try:
            model = timm.create_model(
                name, pretrained=False, num_classes=0, **({"img_size": image_size} if image_size else {})
            )
        except RuntimeError as e:  # timm's error for unknown names
            raise ClipadaptError(f"unknown timm model '{name}': {e}") from e
        except (TypeError, ValueError, AssertionError) as e:  # an input size the architecture cannot take
            raise ClipadaptError(f"timm model '{name}' cannot take image_size={image_size}: {e}") from e
        if not isinstance(model, VisionTransformer) or model.num_prefix_tokens != 1 or model.global_pool != "token":
            raise ClipadaptError(f"timm model '{name}' must be a ViT with one class token and class-token pooling")
        if weights:
            state_dict, _ = read_state_dict(weights)
            state_dict = checkpoint_filter_fn(state_dict, model)  # resamples position embeddings, maps other key names
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
            try:
                missing, unexpected = model.load_state_dict(state_dict, strict=False)
            except RuntimeError as e:  # mis-shaped tensors
                reason = str(e).splitlines()[-1].strip()
                raise CheckpointError(f"{weights} does not fit timm model '{name}': {reason}") from None
            if missing or unexpected:
                raise CheckpointError(
                    f"{weights} does not fit timm model '{name}': missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        self.vit, self.name = model, name
        self.image_size, self.grid = model.patch_embed.img_size[0], model.patch_embed.grid_size[0]
        if self.image_size % model.patch_embed.patch_size[0]:
            raise ClipadaptError(
                f"image_size={self.image_size} is not a multiple of timm model '{name}''s patch "
                f"size {model.patch_embed.patch_size[0]}"
            )
        self.proj = nn.Linear(model.embed_dim, embed_dim, bias=False)
        config = timm.data.resolve_data_config({"input_size": (3, self.image_size, self.image_size)}, model=model)
        self._transform = timm.data.create_transform(**config)

    @property
    def blocks(self) -> nn.Sequential:
        return self.vit.blocks

    def transform(self):
        return self._transform

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit.norm_pre(self.vit._pos_embed(self.vit.patch_embed(images)))

    def attention(self, block: nn.Module, x: torch.Tensor, cls_only: bool = True) -> torch.Tensor:
        """As `block_attention` for a timm block: [B, heads, N] (class token's row) or [B, heads, N, N]."""
        attn = block.attn
        qkv = attn.qkv(block.norm1(x)).reshape(x.shape[0], x.shape[1], 3, attn.num_heads, attn.head_dim)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        q = q[:, :, :1] if cls_only else q
        weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return weights.squeeze(2) if cls_only else weights

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.vit.fc_norm(self.vit.norm(x)[:, 0]))
