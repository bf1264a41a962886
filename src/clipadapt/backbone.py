"""The one wrapper around an open_clip model that every method uses.

`load_backbone` builds the model from an open_clip name, a config dict or a YAML file and loads weights from a
local file (OpenAI TorchScript archive, open_clip checkpoint, or our safetensors). `Backbone` adds what prompt
learners and MP-FGVC need on top of open_clip without forking it: text encoding run only over the positions a
batch needs, learned context vectors spliced into the token embeddings, and per-layer vision tokens with the
class-token attention recomputed from the block's own projection weights.
"""

from __future__ import annotations

import copy
import functools
import json
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from open_clip.convert import convert_state_dict
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import load_file, save_file
from torch import nn

from .config import read_yaml_file
from .digest import fingerprint
from .errors import CheckpointError, ClipadaptError
from .paths import write_atomic

MODEL_CONFIG_DIR = Path(__file__).parent / "configs" / "models"
# The tiny CLIP pretrained with UniCL on the generated world: the default of every command (docs/world.md).
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "tiny-vit-world-unicl.safetensors"
CONFIG_METADATA_KEY = "clipadapt_model_config"
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
# Keys OpenAI's TorchScript archives carry beside the weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def list_models() -> list[str]:
    """Names accepted by `load_backbone`: our tiny configs first, then open_clip's built-in architectures."""
    ours = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
    return ours + open_clip.list_models()


def resolve_model_config(model: str | dict | Path) -> tuple[str, dict]:
    """(name, open_clip model config) for an open_clip name, one of our config names, a YAML/JSON path, or a dict."""
    if isinstance(model, dict):
        return model.get("name", "custom"), _strip_name(model)
    path = Path(model)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        return path.stem, _strip_name(_read_config_file(path))
    ours = MODEL_CONFIG_DIR / f"{model}.yaml"
    if ours.is_file():
        return str(model), _strip_name(_read_config_file(ours))
    config = open_clip.get_model_config(str(model).replace("/", "-"))
    if config is None:
        if path.suffix in (".yaml", ".yml", ".json"):
            raise ClipadaptError(f"model config file {path} does not exist")
        raise ClipadaptError(
            f"unknown model '{model}': give an open_clip name (e.g. ViT-B-16, RN50), one of ours "
            f"({', '.join(sorted(p.stem for p in MODEL_CONFIG_DIR.glob('*.yaml')))}), or a YAML config path"
        )
    return str(model), config


def _read_config_file(path: Path) -> dict:
    config = read_yaml_file(path, "model config")
    if not isinstance(config, dict) or "vision_cfg" not in config or "text_cfg" not in config:
        raise ClipadaptError(f"model config {path} must be a mapping with embed_dim, vision_cfg and text_cfg")
    return config.get("model_cfg", config)


def _strip_name(config: dict) -> dict:
    config = copy.deepcopy(config)
    config.pop("name", None)
    return config


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Weights from a local file, and any metadata stored with them. Never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            return load_file(str(path)), metadata
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"weights file {path} is not a readable safetensors file: {e}") from e
    if _is_torchscript_archive(path):
        # OpenAI's released checkpoints are TorchScript archives; TorchScript is not arbitrary pickled Python.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still the only reader
                state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as e:
            raise CheckpointError(f"weights file {path} is a broken TorchScript archive: {e}") from e
        for key in _OPENAI_EXTRA_KEYS:
            state_dict.pop(key, None)
        return dict(state_dict), {"format": "openai-torchscript"}
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"weights file {path} cannot be loaded safely (weights_only=True): {str(e).splitlines()[0]}"
        ) from e
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if (
        not isinstance(checkpoint, dict)
        or not checkpoint
        or not all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    ):
        raise CheckpointError(f"weights file {path} does not hold a state dict of tensors")
    if next(iter(checkpoint)).startswith("module."):  # saved from DistributedDataParallel
        checkpoint = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    return checkpoint, {}


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def _check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path, name: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
        if items:
            shown = "; ".join(items[:4]) + (f"; ... ({len(items)} in all)" if len(items) > 4 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"weights file {path} does not fit model '{name}': " + " | ".join(problems))


HF_HUB_PREFIX = "hf-hub:"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def is_pretrained_name(pretrained: str | Path) -> bool:
    """Whether `--pretrained` names weights (an open_clip tag such as `openai`, or `hf-hub:ORG/REPO`) rather than a
    file: not an existing file, and not shaped like a path."""
    text = str(pretrained)
    if text.startswith(HF_HUB_PREFIX):
        return True
    return not Path(text).exists() and "/" not in text and "\\" not in text and not text.endswith(WEIGHT_SUFFIXES)


def _fetch_failed(what: str, hub: str, url: str, error: Exception) -> ClipadaptError:
    """One line: which file was needed, where to put it without a network, and why fetching it failed. `hub` is
    open_clip's `ORG/REPO/FILENAME` (a trailing slash: its default file names)."""
    from huggingface_hub import constants

    if hub:
        repo, filename = hub.rstrip("/") if hub.endswith("/") else hub.rsplit("/", 1)[0], hub.rsplit("/", 1)[1]
        filename = filename or "open_clip_pytorch_model.bin"
        where = (
            f"the Hugging Face cache ({constants.HF_HUB_CACHE}) holds no {repo}/{filename} "
            f"(on a connected machine `hf download {repo} {filename}` puts it there)"
        )
    else:
        where = f"{Path('~/.cache/clip') / url.rsplit('/', 1)[-1]} is missing (open_clip downloads it from {url})"
    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else str(error).split("Last error:")[-1].strip()
    return ClipadaptError(f"cannot get the weights of {what}: {where}; or pass the file's path ({reason[:160]})")


def _hub_filenames(filename: str | None) -> list[str]:
    """The names open_clip's `download_pretrained_from_hf` tries for `filename`, in its order: the safetensors
    alternative first, then the file itself (by default open_clip_pytorch_model.bin)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def hub_file(repo: str, filename: str | None = None) -> Path:
    """The file of hub repo `repo` that open_clip's `download_pretrained_from_hf` would fetch: the cached copy
    when there is one, with no network call; otherwise open_clip's download into the cache, once one request has
    shown that the hub answers. Without a network, huggingface_hub retries each name five times with back-off
    (a minute in all) before it gives up; the check fails in one request."""
    from huggingface_hub import try_to_load_from_cache

    names = _hub_filenames(filename)
    for name in names:
        cached = try_to_load_from_cache(repo, name)
        if isinstance(cached, str):  # not None (never fetched) nor a marker that the repo has no such file
            return Path(cached)
    _check_hub_answers(repo, names[0])
    return Path(open_clip.pretrained.download_pretrained_from_hf(repo, filename=filename))


def _check_hub_answers(repo: str, filename: str) -> None:
    """Raise ConnectionError unless the hub answers one HEAD request for `filename` (the name the download asks
    for first), made without retries and within the hub library's own wait for it (HF_HUB_ETAG_TIMEOUT)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        raise ConnectionError("HF_HUB_OFFLINE is set")
    try:
        get_hf_file_metadata(hf_hub_url(repo, filename), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:
        return  # an answer (e.g. 404 for a name the repo lacks: the download tries the next one)
    except Exception as e:
        raise ConnectionError(f"the hub ({constants.ENDPOINT}) cannot be reached: {e}") from e


def fetch_pretrained(model: str | dict | Path | None, pretrained: str) -> tuple[Path, dict, dict | None]:
    """The file of open_clip pretrained weights named `pretrained` (a tag of `model`, such as `openai` or
    `laion2b_s34b_b79k`, or `hf-hub:ORG/REPO`), fetched as open_clip fetches it: from the Hugging Face cache,
    downloaded into it the first time. Returns (file, what the tag implies for the model config: preprocessing and
    QuickGELU, the hub repo's own model config or None)."""
    if pretrained.startswith(HF_HUB_PREFIX):
        repo = pretrained.removeprefix(HF_HUB_PREFIX).strip("/")
        try:
            hub_config = json.loads(hub_file(repo, "open_clip_config.json").read_text())
            target = hub_file(repo)
        except Exception as e:
            raise _fetch_failed(pretrained, repo + "/", "", e) from e
        model_config = hub_config.get("model_cfg")
        preprocess = {k: v for k, v in (hub_config.get("preprocess_cfg") or {}).items() if k in PREPROCESS_KEYS}
        return Path(target), {"preprocess": preprocess} if preprocess else {}, model_config
    if model is None:
        raise ClipadaptError(
            f"--pretrained {pretrained}: an open_clip pretrained tag needs the open_clip model it belongs to, e.g. "
            "--model ViT-B-32 --pretrained openai (`clipadapt models` lists the models; a file path needs no --model)"
        )
    if not isinstance(model, str) or open_clip.get_model_config(model.replace("/", "-")) is None:
        raise ClipadaptError(
            f"--pretrained {pretrained}: model {model} is not one of open_clip's, which have pretrained tags; "
            "give a weights file's path"
        )
    name = model.replace("/", "-")
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ClipadaptError(
            f"open_clip has no pretrained '{pretrained}' for {name}"
            + (f"; its tags: {', '.join(tags)}" if tags else " (it lists no pretrained weights for it)")
        )
    try:
        if cfg.get("hf_hub") and "file" not in cfg:  # ORG/REPO/FILE, or ORG/REPO/ for open_clip's default names
            repo, filename = cfg["hf_hub"].rsplit("/", 1)
            target = hub_file(repo, filename or None)
        else:  # a URL only (open_clip's own download, which does not retry)
            target = open_clip.download_pretrained(cfg)
    except Exception as e:
        raise _fetch_failed(f"{name} '{pretrained}'", cfg.get("hf_hub", ""), cfg.get("url", ""), e) from e
    settings: dict = {"preprocess": {k: cfg[k] for k in PREPROCESS_KEYS if cfg.get(k)}}
    if cfg.get("quick_gelu"):
        settings["quick_gelu"] = True
    return Path(target), settings, None


def build_model(config: dict) -> nn.Module:
    """An open_clip CLIP / CustomTextCLIP with random weights from a config dict (never downloads)."""
    config = copy.deepcopy(config)
    config.pop("preprocess", None)
    text_cfg = config.get("text_cfg", {})
    if "hf_model_name" in text_cfg or "hf_tokenizer_name" in text_cfg:
        raise ClipadaptError("models with Hugging Face text towers are not supported (they need downloads)")
    if "timm_model_name" in config.get("vision_cfg", {}):
        config["vision_cfg"]["timm_model_pretrained"] = False
    model_class = open_clip.CustomTextCLIP if config.pop("custom_text", False) else open_clip.CLIP
    try:
        return model_class(**config)
    except TypeError as e:
        raise ClipadaptError(f"invalid model config: {e}") from e


def load_backbone(
    model: str | dict | Path | None = None,
    pretrained: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Build a `Backbone` from a model name / config and optional weights: a local file, or an open_clip pretrained
    name (`fetch_pretrained`: a tag of `model` such as `openai`, or `hf-hub:ORG/REPO`).

    With `model=None`, the config stored in our own safetensors file (or a hub repo's) is used; with neither, the
    shipped tiny CLIP.
    """
    source = weights_source(model, pretrained)
    if model is None and pretrained is None and DEFAULT_WEIGHTS.is_file():
        pretrained = DEFAULT_WEIGHTS
    settings: dict = {}
    if pretrained is not None and is_pretrained_name(pretrained):
        pretrained, settings, hub_config = fetch_pretrained(model, str(pretrained))
        if model is None and hub_config is not None:
            model = {"name": str(pretrained), **hub_config}
    state_dict, metadata = read_state_dict(pretrained) if pretrained is not None else (None, {})
    if model is None:
        if CONFIG_METADATA_KEY not in metadata:
            raise ClipadaptError(
                "no model given: pass --model (an open_clip name or config) or a clipadapt safetensors file "
                "that stores its config"
            )
        name, config = resolve_model_config(json.loads(metadata[CONFIG_METADATA_KEY]))
    else:
        name, config = resolve_model_config(model)
    if metadata.get("format") == "openai-torchscript" and not config.get("quick_gelu", False):
        config["quick_gelu"] = True  # every OpenAI release was trained with QuickGELU; open_clip does the same
    if settings.get("quick_gelu"):
        config["quick_gelu"] = True  # open_clip's pretrained config says so (the OpenAI tags)
    if settings.get("preprocess"):
        config["preprocess"] = {**config.get("preprocess", {}), **settings["preprocess"]}
    clip = build_model(config)
    if state_dict is not None:
        state_dict = convert_state_dict(clip, state_dict)
        # As open_clip's load_checkpoint: position embeddings of another length (image size, text context) are
        # interpolated to the model's (e.g. a 16-token checkpoint into a 40-token model, which then trains on).
        # In float32: an fp16 file (ours ship so) cannot be resampled bicubically on the CPU.
        for key in ("visual.positional_embedding", "positional_embedding"):
            if key in state_dict and state_dict[key].is_floating_point():
                state_dict[key] = state_dict[key].float()
        for resize in (open_clip.model.resize_pos_embed, open_clip.model.resize_text_pos_embed):
            try:
                resize(state_dict, clip)
            except (AssertionError, RuntimeError):  # another width: the shape check below names the mismatch
                pass
        _check_state_dict(clip, state_dict, Path(pretrained), name)
        clip.load_state_dict(state_dict)
    backbone = Backbone(clip, config, name=name)
    backbone.source = source
    return backbone.to(device).eval()


def weights_source(model: str | dict | Path | None, pretrained: str | Path | None) -> dict:
    """`load_backbone`'s arguments as a record that loads the same backbone on another machine: names as given,
    files as absolute paths, the shipped model as neither (whatever folder it is installed in)."""

    def where(value: str | Path | None) -> str | None:
        if value is None or (isinstance(value, str) and is_pretrained_name(value)):
            return value
        path = Path(value).expanduser()
        return str(path.absolute()) if path.exists() else str(value)

    shipped = pretrained is not None and Path(pretrained).expanduser().absolute() == DEFAULT_WEIGHTS.absolute()
    if model is None and shipped:  # what load_backbone() loads with neither
        pretrained = None
    return {"model": model if isinstance(model, dict) else where(model), "pretrained": where(pretrained)}


@dataclass
class ImageTokens:
    """Tokens entering a vision block, and that block's attention from the class token to every token."""

    tokens: torch.Tensor  # [B, N, width], index 0 is the class token
    cls_attention: torch.Tensor  # [B, N]: mean over heads of the class-token row of the attention map
    cls_attention_per_head: torch.Tensor  # [B, heads, N]


def vision_tokens(visual: nn.Module, images: torch.Tensor, layer: int, name: str = "model") -> ImageTokens:
    """`Backbone.encode_image_tokens` for any open_clip ViT tower `visual` (e.g. a fine-tuned copy)."""
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise ClipadaptError(f"model '{name}' has no ViT image tower; token attention needs one")
    blocks = visual.transformer.resblocks
    if not -len(blocks) <= layer < len(blocks):
        raise ClipadaptError(f"layer {layer} out of range for a vision tower with {len(blocks)} blocks")
    layer %= len(blocks)
    x = visual._embeds(images)
    for block in blocks[:layer]:
        x = block(x)
    per_head = block_attention(blocks[layer], x, name)
    return ImageTokens(tokens=x, cls_attention=per_head.mean(dim=1), cls_attention_per_head=per_head)


def block_attention(block: nn.Module, x: torch.Tensor, name: str = "model", cls_only: bool = True) -> torch.Tensor:
    """The attention of open_clip residual block `block` over the tokens `x` [B, N, width], recomputed from the
    block's own layer norm and q/k projections: the class token's row [B, heads, N], or with `cls_only=False`
    every token's [B, heads, N, N]."""
    if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
        raise ClipadaptError(f"model '{name}' uses custom attention blocks; token attention needs standard ones")
    attn = block.attn
    heads, width = attn.num_heads, x.shape[-1]
    y = block.ln_1(x)
    q_weight, k_weight, _ = attn.in_proj_weight.chunk(3)
    q_bias, k_bias, _ = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
    queries = y[:, :1] if cls_only else y
    q = F.linear(queries, q_weight, q_bias).view(x.shape[0], -1, heads, width // heads).transpose(1, 2)
    k = F.linear(y, k_weight, k_bias).view(x.shape[0], -1, heads, width // heads).transpose(1, 2)
    weights = ((q @ k.transpose(-1, -2)) / (width // heads) ** 0.5).softmax(dim=-1)  # [B, heads, Q, N]
    return weights.squeeze(2) if cls_only else weights


class Backbone(nn.Module):
    """An open_clip model plus the encoders clipadapt's methods share."""

    def __init__(self, model: nn.Module, config: dict, name: str = "custom"):
        super().__init__()
        self.model = model
        self.config = copy.deepcopy(config)
        self.name = name
        self.text = model.text if hasattr(model, "text") else model  # CustomTextCLIP keeps its tower in .text
        self.context_length = int(self.text.positional_embedding.shape[0])
        self.tokenizer = SimpleTokenizer(context_length=self.context_length)
        self._suffix_cache: dict[tuple[tuple[str, ...], int, str, torch.device], tuple[torch.Tensor, ...]] = {}
        self._fingerprint: str | None = None
        # What `load_backbone` was given (`weights_source`): how a saved classifier finds its backbone again.
        self.source: dict = {"model": dict(config, name=name), "pretrained": None}

    # ---- sizes and preprocessing -------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def text_width(self) -> int:
        return int(self.text.token_embedding.weight.shape[1])

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on this backbone's device. From the CPU to a GPU the copy is asynchronous, from pinned memory
        (a contiguous pinned copy is made unless `tensor` is one: the copy from anything else can wait for every
        kernel already queued, and a training step that copied between its kernels would leave the GPU idle while
        the host queued the rest of the step). A pinned `tensor` must not be changed until the copy is done."""
        device = self.device
        if tensor.device.type != "cpu" or device.type != "cuda":
            return tensor.to(device)
        if not (tensor.is_pinned() and tensor.is_contiguous()):
            tensor = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor)
        return tensor.to(device, non_blocking=True)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The (mean, std) images are normalized with: the config's, else OpenAI CLIP's."""
        pre = self.config.get("preprocess", {})
        return (
            tuple(pre.get("mean") or open_clip.OPENAI_DATASET_MEAN),
            tuple(pre.get("std") or open_clip.OPENAI_DATASET_STD),
        )

    def image_transform(self, train: bool = False, size: int = 0) -> Any:
        """CLIP preprocessing (resize, centre crop, normalize) for this model; random resized crop when training.
        `size`: another input size than the model's (a tower run at a higher resolution)."""
        pre = self.config.get("preprocess", {})
        return open_clip.image_transform(
            size or self.image_size,
            is_train=train,
            mean=pre.get("mean"),
            std=pre.get("std"),
            interpolation=pre.get("interpolation"),
            resize_mode=pre.get("resize_mode"),
        )

    # ---- text ------------------------------------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """BPE token ids [N, context_length], [SOS] ... [EOS] padded with 0 (truncated to fit, EOS kept)."""
        return self.tokenizer([texts] if isinstance(texts, str) else list(texts))

    def context_vectors(self, n_ctx: int, init: str = "") -> int:
        """How many learned context vectors a prompt learner gets (the token count of `init` when a phrase is
        given), checked to leave room for a class name between them and '.', [EOS]."""
        n_ctx = len(self.tokenizer.encode(init)) if init else n_ctx
        room = self.context_length - 4  # SOS, at least one name token, '.', EOS
        if not 1 <= n_ctx <= room:
            raise ClipadaptError(
                f"{n_ctx} context vectors do not fit the {self.context_length}-token prompts of "
                f"model '{self.name}' with a class name: use 1 to {room} (n_ctx, or init's tokens)"
            )
        return n_ctx

    def embed_words(self, text: str) -> torch.Tensor:
        """Token embeddings of `text` without SOS/EOS: [n_tokens, width] (e.g. to initialise CoOp's context)."""
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long, device=self.device)
        return self.text.token_embedding(ids).detach()

    def _runs_causal(self) -> bool:
        # Truncating the sequence is exact only when position i never attends to positions after it.
        return (
            getattr(self.text, "attn_mask", None) is not None
            and getattr(self.text, "cls_emb", None) is None
            and not getattr(self.text, "use_pad_mask", False)
        )

    def _pool_type(self) -> str:
        return getattr(self.text, "text_pool_type", None) or getattr(self.text, "pool_type", "argmax")

    def _run_text_transformer(self, x: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, W] (L <= context length) -> projected features pooled at `eot_index`."""
        length = x.shape[1]
        cast_dtype = self.text.transformer.get_cast_dtype()
        x = x.to(cast_dtype) + self.text.positional_embedding[:length].to(cast_dtype)
        x = self.text.transformer(x, attn_mask=self.text.attn_mask[:length, :length])
        x = self.text.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        projection = self.text.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text features [N, embed_dim], running only over the positions the longest text needs."""
        if not (self._runs_causal() and self._pool_type() == "argmax"):
            return self.model.encode_text(self.to_device(token_ids), normalize=normalize)
        # The length is found where the ids are: ids on the CPU need no wait for a GPU's queued work.
        eot_index = token_ids.argmax(dim=-1)  # EOT has the largest id, as open_clip's argmax pooling assumes
        length = int(eot_index.max()) + 1
        x = self.text.token_embedding(self.to_device(token_ids[:, :length]))
        features = self._run_text_transformer(x, self.to_device(eot_index))
        return F.normalize(features, dim=-1) if normalize else features

    def _prompt_layout(
        self, classnames: Sequence[str], n_ctx: int, class_token_position: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, context mask, context index and EOT index of `[SOS] ctx name . [EOS]` prompts on this
        backbone's device, and the EOT index again on the CPU (to find a length without waiting for the device).

        Cached per class list and device: prompt learners call this every step with the same names, and copying
        to a GPU every step would make each step wait for the one before.
        """
        key = (tuple(classnames), n_ctx, class_token_position, self.device)
        if key not in self._suffix_cache:
            if class_token_position not in CLASS_TOKEN_POSITIONS:
                raise ClipadaptError(
                    f"class_token_position must be one of {CLASS_TOKEN_POSITIONS}, got '{class_token_position}'"
                )
            sot, eot = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
            budget = self.context_length - 2 - n_ctx  # room for name tokens and '.' between context and EOT
            if budget < 1:
                raise ClipadaptError(f"{n_ctx} context vectors do not fit the context length {self.context_length}")
            rows = []
            for name in classnames:
                name_tokens = self.tokenizer.encode(f"{name}.")[:budget]
                name_ids, period = name_tokens[:-1], name_tokens[-1:]  # CoOp keeps '.' after the context
                ctx_slots = [-1] * n_ctx
                if class_token_position == "end":
                    body = ctx_slots + name_ids + period
                elif class_token_position == "front":
                    body = name_ids + ctx_slots + period
                else:
                    half = n_ctx // 2
                    body = ctx_slots[:half] + name_ids + ctx_slots[half:] + period
                rows.append([sot] + body + [eot])
            length = max(len(r) for r in rows)
            ids = torch.zeros(len(rows), length, dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
            ctx_mask = ids == -1
            ctx_index = (ctx_mask.cumsum(dim=1) - 1).clamp(min=0)  # which context vector sits at each slot
            eot_index = torch.tensor([len(r) - 1 for r in rows])
            on_device = tuple(t.to(self.device) for t in (ids.clamp(min=0), ctx_mask, ctx_index, eot_index))
            self._suffix_cache[key] = (*on_device, eot_index)
        return self._suffix_cache[key]  # type: ignore[return-value]

    def encode_prompted_text(
        self,
        ctx: torch.Tensor,
        classnames: Sequence[str],
        class_token_position: str = "end",
        normalize: bool = False,
        class_index: torch.Tensor | None = None,
        class_chunk: int = 0,
    ) -> torch.Tensor:
        """Text features of prompts `[SOS] ctx_1..ctx_n <class name> . [EOS]`, pooled at EOS.

        `ctx` is `[n_ctx, width]` (shared), `[n_cls, n_ctx, width]` (class-specific), or has extra leading
        batch dims `[*batch, n_cls or 1, n_ctx, width]` (per-image contexts, as CoCoOp uses). The output is
        `[n_cls, embed_dim]` or `[*batch, n_cls, embed_dim]`. With `class_index` ([n] labels into `classnames`),
        prompt i is `ctx[i]` with the name `classnames[class_index[i]]` (per-sample pairs, as SHIP generates):
        the layout is built once per class list, however many samples repeat a name. The transformer runs once
        over all prompts, truncated to the longest prompt. With `class_chunk`, a shared or class-specific context
        runs `class_chunk` class names at a time, and when gradients are on each chunk's activations are recomputed
        in the backward pass instead of kept (activation checkpointing): memory stays bounded for 21,000 classes.
        """
        if class_chunk and len(classnames) > class_chunk and class_index is None and ctx.ndim in (2, 3):
            parts = []
            for start in range(0, len(classnames), class_chunk):
                names = classnames[start : start + class_chunk]
                part_ctx = ctx if ctx.ndim == 2 or len(ctx) == 1 else ctx[start : start + class_chunk]
                encode = functools.partial(
                    self.encode_prompted_text,
                    classnames=names,
                    class_token_position=class_token_position,
                    normalize=normalize,
                )
                if torch.is_grad_enabled() and ctx.requires_grad:
                    parts.append(torch.utils.checkpoint.checkpoint(encode, part_ctx, use_reentrant=False))
                else:
                    parts.append(encode(part_ctx))
            return torch.cat(parts)
        if not self._runs_causal() or self._pool_type() != "argmax":
            raise ClipadaptError(f"model '{self.name}' has no causal CLIP text tower; prompt learning needs one")
        if ctx.ndim < 2 or ctx.shape[-1] != self.text_width:
            raise ClipadaptError(f"ctx must end in [n_ctx, {self.text_width}], got shape {tuple(ctx.shape)}")
        n_cls, n_ctx = len(classnames), ctx.shape[-2]
        ids, ctx_mask, ctx_index, eot_index, eot_on_cpu = self._prompt_layout(classnames, n_ctx, class_token_position)
        if class_index is not None:
            if class_index.ndim != 1:
                raise ClipadaptError(f"class_index must be 1-D, got shape {tuple(class_index.shape)}")
            low, high = (int(class_index.min()), int(class_index.max())) if len(class_index) else (0, 0)
            if low < 0 or high >= n_cls:
                raise ClipadaptError(f"class_index values must lie in [0, {n_cls}), got {low}..{high}")
            # The longest of these names only, read on the CPU (free when class_index is there).
            length = int(eot_on_cpu[class_index.cpu()].max()) + 1 if len(class_index) else 1
            class_index = self.to_device(class_index)
            eot_index = eot_index[class_index]
            ids, ctx_mask, ctx_index = (t[class_index, :length] for t in (ids, ctx_mask, ctx_index))
            n_cls = len(class_index)
        if ctx.ndim == 2:
            ctx = ctx.unsqueeze(0)
        if ctx.shape[-3] not in (1, n_cls):
            raise ClipadaptError(f"ctx has {ctx.shape[-3]} class-specific contexts for {n_cls} class names")
        batch_shape = ctx.shape[:-3]
        ctx = ctx.expand(*batch_shape, n_cls, n_ctx, ctx.shape[-1])
        length = ids.shape[1]
        # Place context vector ctx_index[c, t] at every context slot t of prompt c; token embeddings elsewhere.
        gather_index = ctx_index[:, :, None].expand(n_cls, length, ctx.shape[-1])
        ctx_at_slots = torch.gather(ctx, -2, gather_index.expand(*batch_shape, *gather_index.shape))
        token_embeds = self.text.token_embedding(ids).to(ctx.dtype)
        x = torch.where(ctx_mask[..., None], ctx_at_slots, token_embeds)
        features = self._run_text_transformer(
            # expand, not repeat(batch_shape.numel()): an exported graph keeps its batch size free
            x.reshape(-1, length, x.shape[-1]),
            eot_index.expand(*batch_shape, n_cls).reshape(-1),
        ).reshape(*batch_shape, n_cls, -1)
        return F.normalize(features, dim=-1) if normalize else features

    @torch.no_grad()
    def nearest_words(self, vectors: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """For each vector [n, width] in the token-embedding space, the `k` vocabulary tokens with the most
        similar (cosine) embeddings, as (token text, similarity): how CoOp and SHIP interpret learned prompts."""
        table = F.normalize(self.text.token_embedding.weight.float(), dim=-1)
        top = (F.normalize(vectors.float().to(table.device), dim=-1) @ table.T).topk(k, dim=-1)
        return [
            [(self.tokenizer.decode([i]).strip(), round(v, 4)) for v, i in zip(values.tolist(), ids.tolist())]
            for values, ids in zip(top.values, top.indices)
        ]

    # ---- images ----------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features [B, embed_dim]."""
        return self.model.encode_image(self.to_device(images), normalize=normalize)

    def encode_image_tokens(self, images: torch.Tensor, layer: int) -> ImageTokens:
        """The token sequence entering vision block `layer` (negative counts from the end) and its class-token
        attention, recomputed from the block's own q/k projection (open_clip does not return attention)."""
        return vision_tokens(self.model.visual, images.to(self.device), layer, self.name)

    # ---- identity and saving -------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A digest of the config and weights, for keying caches of frozen features."""
        if self._fingerprint is None:
            weights = [part for key, tensor in sorted(self.model.state_dict().items()) for part in (key, tensor)]
            self._fingerprint = fingerprint(self.config, *weights)
        return self._fingerprint

    def identity(self) -> dict:
        """What a saved classifier records of the backbone it was trained on: the name, how to load it again
        (`source`), the digest of its config and weights (`fingerprint`) and the input size."""
        return {"name": self.name, **self.source, "fingerprint": self.fingerprint(), "image_size": self.image_size}

    def save(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Weights as safetensors with the model config in the metadata, so `load_backbone(None, path)` works."""
        state = {
            k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous().cpu()
            for k, v in self.model.state_dict().items()
        }
        metadata = {CONFIG_METADATA_KEY: json.dumps(dict(self.config, name=self.name))}
        write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
