import json
import pickle
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn

from clipadapt import CheckpointError, ClipadaptError, load_backbone
from clipadapt.backbone import Backbone, resolve_model_config

NAMES = ["cat", "red star", "striped blue square with a hat", "x"]


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return load_backbone("micro-vit")


def test_truncated_text_matches_full_length(micro):
    ids = micro.tokenize(["a photo of a cat.", "hi", "a much longer sentence about a striped blue square"])
    with torch.no_grad():
        full = micro.model.encode_text(ids)
        truncated = micro.encode_text(ids)
    torch.testing.assert_close(truncated, full, atol=1e-5, rtol=0)


def test_prompted_text_equals_tokenized_prompt(micro):
    ctx = micro.embed_words("a photo of a")
    assert ctx.shape == (4, micro.text_width)
    with torch.no_grad():
        prompted = micro.encode_prompted_text(ctx, NAMES)
        reference = micro.model.encode_text(micro.tokenize([f"a photo of a {n}." for n in NAMES]))
    assert prompted.shape == (len(NAMES), micro.embed_dim)
    torch.testing.assert_close(prompted, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position,template", [("front", "{} a photo of a."), ("middle", "a photo {} of a.")])
def test_class_token_positions(micro, position, template):
    ctx = micro.embed_words("a photo of a")
    with torch.no_grad():
        prompted = micro.encode_prompted_text(ctx, NAMES, class_token_position=position)
        reference = micro.model.encode_text(micro.tokenize([template.format(n) for n in NAMES]))
    torch.testing.assert_close(prompted, reference, atol=1e-5, rtol=0)


def test_class_specific_and_batched_contexts_match_per_item_calls(micro):
    torch.manual_seed(1)
    class_ctx = torch.randn(len(NAMES), 3, micro.text_width)
    batched_ctx = torch.randn(2, len(NAMES), 3, micro.text_width)
    with torch.no_grad():
        class_specific = micro.encode_prompted_text(class_ctx, NAMES)
        batched = micro.encode_prompted_text(batched_ctx, NAMES)
        for c, name in enumerate(NAMES):
            one = micro.encode_prompted_text(class_ctx[c], [name])[0]
            torch.testing.assert_close(class_specific[c], one, atol=1e-5, rtol=0)
            for b in range(2):
                torch.testing.assert_close(
                    batched[b, c], micro.encode_prompted_text(batched_ctx[b, c], [name])[0], atol=1e-5, rtol=0
                )
    assert batched.shape == (2, len(NAMES), micro.embed_dim)


def test_per_sample_contexts_with_class_index_match_per_item_calls(micro):
    torch.manual_seed(2)
    class_index = torch.tensor([3, 0, 0, 2, 1, 3])
    ctx = torch.randn(len(class_index), 4, micro.text_width)
    with torch.no_grad():
        paired = micro.encode_prompted_text(ctx, NAMES, class_index=class_index)
        short = micro.encode_prompted_text(ctx[:1], NAMES, class_index=class_index[:1])  # truncated to "x."
        for i, c in enumerate(class_index.tolist()):
            torch.testing.assert_close(paired[i], micro.encode_prompted_text(ctx[i], [NAMES[c]])[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(short[0], paired[0], atol=1e-5, rtol=0)
    with pytest.raises(ClipadaptError, match="class_index"):
        micro.encode_prompted_text(ctx, NAMES, class_index=torch.tensor([0, 4, 1, 1, 1, 1]))


def test_text_encoding_from_cpu_ids_reads_no_device_value():
    """Lengths are read from CPU ids, so nothing reads a device value: on the meta device (where such a read
    raises) a prompt learner's and SHIP's text encodings run."""
    meta = load_backbone("micro-vit")
    meta.model.to("meta")
    ctx = torch.randn(4, meta.text_width, device="meta", requires_grad=True)
    meta.encode_prompted_text(ctx, NAMES).sum().backward()
    assert all(t.device.type == "meta" for t in meta._prompt_layout(NAMES, 4, "end")[:4])  # cached on the device
    assert meta._prompt_layout(NAMES, 4, "end")[0] is meta._prompt_layout(NAMES, 4, "end")[0]
    per_sample = torch.randn(3, 4, meta.text_width, device="meta")
    assert meta.encode_prompted_text(per_sample, NAMES, class_index=torch.tensor([3, 0, 2])).device.type == "meta"
    assert meta.encode_text(meta.tokenize(["a photo of a cat.", "hi"])).shape == (2, meta.embed_dim)
    with pytest.raises(RuntimeError, match="meta"):  # the probe works: reading a length on the device fails
        meta.encode_prompted_text(per_sample, NAMES, class_index=torch.tensor([3, 0, 2], device="meta"))


def test_nearest_words_of_token_embeddings_are_the_tokens(micro):
    vectors = micro.embed_words("photo star")
    nearest = micro.nearest_words(vectors, k=2)
    assert [row[0][0] for row in nearest] == ["photo", "star"] and nearest[0][0][1] == pytest.approx(1.0, abs=1e-4)
    assert nearest[0][1][1] < nearest[0][0][1]


def test_prompted_text_gradients_reach_context(micro):
    ctx = torch.zeros(2, micro.text_width, requires_grad=True)
    micro.encode_prompted_text(ctx, NAMES, normalize=True).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


@pytest.mark.parametrize("contexts", [0, 1, 8])  # shared [n_ctx, w]; broadcast [1, n_ctx, w]; one per class
def test_chunked_prompts_match_one_call_in_outputs_and_gradients(micro, contexts):
    names = [f"{colour} {shape}" for colour in ("red", "green", "blue", "pale yellow") for shape in ("star", "disc")]
    torch.manual_seed(0)
    start = torch.randn(*((contexts,) if contexts else ()), 3, micro.text_width) * 0.1
    weights = torch.randn(len(names), micro.embed_dim)
    results = []
    for chunk in (0, 3):  # one call; chunks of 3 names (the last holds 2), recomputed in the backward pass
        ctx = start.clone().requires_grad_(True)
        features = micro.encode_prompted_text(ctx, names, normalize=True, class_chunk=chunk)
        (features * weights).sum().backward()
        results.append((features.detach(), ctx.grad))
    # each chunk runs to its own longest prompt: other matrix shapes, float rounding only
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=0)


def test_prompted_text_rejects_bad_context(micro):
    with pytest.raises(ClipadaptError, match="ctx must end in"):
        micro.encode_prompted_text(torch.zeros(4, micro.text_width + 1), NAMES)
    with pytest.raises(ClipadaptError, match="class-specific"):
        micro.encode_prompted_text(torch.zeros(3, 4, micro.text_width), NAMES)
    with pytest.raises(ClipadaptError, match="context length"):
        micro.encode_prompted_text(torch.zeros(20, micro.text_width), NAMES)


def test_image_tokens_and_attention_match_reference(micro):
    torch.manual_seed(2)
    images = torch.randn(3, 3, micro.image_size, micro.image_size)
    visual = micro.model.visual
    with torch.no_grad():
        out = micro.encode_image_tokens(images, layer=-1)
        # Tokens entering the last block are the output of the block before it.
        inter = visual.forward_intermediates(images, indices=[0], output_extra_tokens=True)
        entering = torch.cat(
            [inter["image_intermediates_prefix"][0], inter["image_intermediates"][0].flatten(2).transpose(1, 2)], dim=1
        )
        torch.testing.assert_close(out.tokens, entering, atol=1e-5, rtol=0)
        block = visual.transformer.resblocks[-1]
        y = block.ln_1(entering)
        _, weights = block.attn(y, y, y, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out.cls_attention_per_head, weights[:, :, 0, :], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.cls_attention, weights[:, :, 0, :].mean(1), atol=1e-6, rtol=0)
    n_tokens = (micro.image_size // 8) ** 2 + 1
    assert out.cls_attention.shape == (3, n_tokens)
    torch.testing.assert_close(out.cls_attention.sum(-1), torch.ones(3))
    with pytest.raises(ClipadaptError, match="out of range"):
        micro.encode_image_tokens(images, layer=5)


def test_image_tokens_need_a_vit():
    rn = load_backbone("tiny-rn")
    with pytest.raises(ClipadaptError, match="no ViT"):
        rn.encode_image_tokens(torch.randn(1, 3, 64, 64), layer=0)


def _outputs(backbone):
    torch.manual_seed(3)
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    with torch.no_grad():
        return backbone.encode_image(images), backbone.encode_text(backbone.tokenize(["a red star."]))


def test_safetensors_round_trip_keeps_config(micro, tmp_path):
    path = tmp_path / "model.safetensors"
    micro.save(path)
    loaded = load_backbone(None, path)
    assert loaded.name == "micro-vit" and loaded.fingerprint() == micro.fingerprint()
    for a, b in zip(_outputs(micro), _outputs(loaded)):
        torch.testing.assert_close(a, b)


def test_open_clip_checkpoint_with_module_prefix(micro, tmp_path):
    path = tmp_path / "epoch_3.pt"
    state = {f"module.{k}": v for k, v in micro.model.state_dict().items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": state}, path)
    loaded = load_backbone("micro-vit", path)
    for a, b in zip(_outputs(micro), _outputs(loaded)):
        torch.testing.assert_close(a, b)


def _torchscript_archive(state_dict: dict, path) -> None:
    """An OpenAI-style checkpoint: a TorchScript archive whose state dict has OpenAI's key layout."""

    class Root(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Root()
    for key, value in state_dict.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone())
    for key, value in {"input_resolution": 32, "context_length": 16, "vocab_size": 49408}.items():
        root.register_buffer(key, torch.tensor(value))
    torch.jit.save(torch.jit.script(root), str(path))


def test_openai_torchscript_checkpoint_uses_quick_gelu(tmp_path):
    _, config = resolve_model_config("micro-vit")
    torch.manual_seed(4)
    reference = open_clip.CLIP(**dict(config, quick_gelu=True)).eval()
    path = tmp_path / "ViT-micro.pt"
    _torchscript_archive(reference.state_dict(), path)
    loaded = load_backbone("micro-vit", path)
    assert loaded.config["quick_gelu"] is True
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), reference.encode_image(images))


def test_mismatched_checkpoint_names_file_and_keys(micro, tmp_path):
    path = tmp_path / "micro.safetensors"
    micro.save(path)
    with pytest.raises(CheckpointError, match=r"micro\.safetensors.*tiny-vit.*shape mismatch"):
        load_backbone("tiny-vit", path)
    with pytest.raises(CheckpointError, match=r"missing\.pt does not exist"):
        load_backbone("micro-vit", tmp_path / "missing.pt")


def test_corrupt_and_hostile_checkpoints_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        load_backbone("micro-vit", corrupt)

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    hostile = tmp_path / "hostile.pt"
    with open(hostile, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(CheckpointError, match=r"hostile\.pt cannot be loaded safely"):
        load_backbone("micro-vit", hostile)


def test_model_from_yaml_dict_and_bad_names(tmp_path):
    _, config = resolve_model_config("micro-vit")
    from_dict = load_backbone(config)
    assert from_dict.embed_dim == 32
    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text(
        "embed_dim: 16\nvision_cfg: {image_size: 16, patch_size: 8, width: 16, layers: 1, head_width: 8}\n"
        "text_cfg: {context_length: 8, vocab_size: 49408, width: 16, heads: 2, layers: 1}\n"
    )
    assert load_backbone(yaml_path).embed_dim == 16
    with pytest.raises(ClipadaptError, match="unknown model 'not-a-model'"):
        load_backbone("not-a-model")
    broken = tmp_path / "broken.yaml"
    broken.write_text("embed_dim: 16\nvision_cfg: {image_size: 16\n")
    with pytest.raises(ClipadaptError, match=r"^cannot read model config .*broken.yaml: line 3, column 1: expected"):
        load_backbone(broken)
    plain = tmp_path / "plain.pt"
    torch.save(from_dict.model.state_dict(), plain)
    with pytest.raises(ClipadaptError, match="no model given"):
        load_backbone(None, plain)  # a foreign file does not say which architecture it is for


def test_tiny_vit_size():
    tiny = load_backbone("tiny-vit")
    n_params = sum(p.numel() for p in tiny.parameters())
    assert 3e5 < n_params < 8e6
    assert tiny.image_size == 64


def test_default_is_the_shipped_world_model():
    from clipadapt.backbone import DEFAULT_WEIGHTS

    shipped = load_backbone()
    assert shipped.name == "tiny-vit" and DEFAULT_WEIGHTS.stat().st_size < 15e6


def test_the_shipped_model_runs_coops_defaults_with_every_coop_class_name():
    from clipadapt.methods import build_method

    shipped = load_backbone()
    for method in ("coop", "cocoop", "coop+ship"):
        build_method(method, shipped)  # the official defaults: 16 context vectors for CoOp, 4 for CoCoOp
    # StanfordCars' longest name is the longest of the 11 CoOp data sets: 16 BPE tokens, 35 with 16 context
    # vectors, '.', SOS and EOS; nothing of it may be cut.
    name = "2012 Lamborghini Gallardo LP 570-4 Superleggera"
    ids, ctx_mask, _, eot, _ = shipped._prompt_layout([name, "red star"], 16, "end")
    assert eot.tolist() == [34, 20] and shipped.context_length >= 35 and ctx_mask[0, 1:17].all()
    assert ids[0, 17:34].tolist() == shipped.tokenizer.encode(f"{name}.")


def test_a_checkpoint_of_another_text_context_is_interpolated_as_open_clip_does(tmp_path):
    import torch.nn.functional as F

    torch.manual_seed(0)
    short = load_backbone("micro-vit")  # context 16
    path = tmp_path / "short.safetensors"
    short.save(path)
    config = {**short.config, "text_cfg": {**short.config["text_cfg"], "context_length": 24}}
    long = load_backbone(config, path)
    old = short.model.positional_embedding.detach()
    expected = F.interpolate(old.T[None], size=24, mode="linear", align_corners=False)[0].T
    torch.testing.assert_close(long.model.positional_embedding.detach(), expected)
    assert long.context_length == 24
    torch.testing.assert_close(long.model.token_embedding.weight, short.model.token_embedding.weight)


def test_an_fp16_checkpoint_is_run_at_another_image_size_as_open_clip_resamples(tmp_path):
    """Our shipped weights are fp16, which the CPU cannot resample bicubically: the grid is resampled in float32."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    small = load_backbone("micro-vit")  # 32 pixels: 4 x 4 patches
    path = tmp_path / "small.safetensors"
    small.save(path, dtype=torch.float16)
    config = {**small.config, "vision_cfg": {**small.config["vision_cfg"], "image_size": 64}}
    large = load_backbone(config, path)
    old = small.model.visual.positional_embedding.detach().half().float()
    grid = old[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    resampled = large.model.visual.positional_embedding.detach()
    torch.testing.assert_close(resampled[0], old[0])  # the class token's
    torch.testing.assert_close(resampled[1:], expected.permute(0, 2, 3, 1).reshape(64, -1))
    assert large.encode_image(torch.randn(2, 3, 64, 64)).shape == (2, small.embed_dim)


# ---- open_clip's pretrained names, from a Hugging Face cache laid out as the hub lays it out -------------------
def hub_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """`root` as a Hugging Face hub cache holding `files` in `repo`'s main revision (refs/main -> snapshot)."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return root


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache, and no network: what the hub library does offline, read where it reads it."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _micro_files(tmp_path: Path) -> tuple[dict[str, bytes], Backbone]:
    torch.manual_seed(3)
    micro = load_backbone("micro-vit")
    micro.save(tmp_path / "micro.safetensors")
    return {"open_clip_model.safetensors": (tmp_path / "micro.safetensors").read_bytes()}, micro


def test_an_hf_hub_name_loads_from_the_cache_with_the_repos_config(offline_hub, tmp_path):
    weights, micro = _micro_files(tmp_path)
    model_cfg = {k: v for k, v in micro.config.items() if k != "preprocess"}
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    hub_cache(
        offline_hub, "clipadapt-test/micro-vit", {**weights, "open_clip_config.json": json.dumps(config).encode()}
    )
    backbone = load_backbone(None, "hf-hub:clipadapt-test/micro-vit")
    assert backbone.normalization() == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # the repo's preprocessing
    for name, tensor in micro.model.state_dict().items():
        assert torch.equal(backbone.model.state_dict()[name], tensor), name
    with pytest.raises(ClipadaptError, match="holds no clipadapt-test/absent/open_clip_pytorch_model.bin"):
        load_backbone(None, "hf-hub:clipadapt-test/absent")


def test_an_open_clip_tag_resolves_through_open_clips_registry_and_the_cache(offline_hub, tmp_path, monkeypatch):
    from open_clip import factory, pretrained

    weights, micro = _micro_files(tmp_path)
    # micro-vit as an open_clip architecture with one pretrained tag whose weights live on the hub (as laion's do).
    monkeypatch.setitem(
        factory._MODEL_CONFIGS, "micro-vit", {k: v for k, v in micro.config.items() if k != "preprocess"}
    )
    tag = pretrained._pcfg(hf_hub="clipadapt-test/micro-vit-tag/", quick_gelu=True, mean=(0.1, 0.2, 0.3))
    monkeypatch.setitem(pretrained._PRETRAINED, "micro-vit", {"test_tag": tag})
    with pytest.raises(
        ClipadaptError, match="holds no clipadapt-test/micro-vit-tag/open_clip_pytorch_model.bin.*HF_HUB_OFFLINE"
    ):
        load_backbone("micro-vit", "test_tag")
    hub_cache(offline_hub, "clipadapt-test/micro-vit-tag", weights)
    backbone = load_backbone("micro-vit", "test_tag")
    assert backbone.config["quick_gelu"] and backbone.normalization()[0] == (0.1, 0.2, 0.3)
    assert torch.equal(backbone.model.visual.proj, micro.model.visual.proj)
    with pytest.raises(ClipadaptError, match="no pretrained 'other' for micro-vit; its tags: test_tag"):
        load_backbone("micro-vit", "other")
    with pytest.raises(ClipadaptError, match="needs the open_clip model it belongs to"):
        load_backbone(None, "test_tag")
    with pytest.raises(ClipadaptError, match="model tiny-vit is not one of open_clip's"):
        load_backbone("tiny-vit", "openai")
    with pytest.raises(CheckpointError, match="does not exist"):  # a path is a path, not a tag
        load_backbone("micro-vit", str(tmp_path / "missing.safetensors"))


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """An empty hub cache on a machine whose network is down (every connection fails as DNS fails here), without
    HF_HUB_OFFLINE. The hub library's requests (method, URL) are recorded, and its back-off sleeps recorded, not
    slept."""
    import socket

    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    requests, sleeps = [], []
    backoff = _http.http_backoff

    def recorded(method, url, **kwargs):
        requests.append((method, url))
        return backoff(method, url, **kwargs)

    monkeypatch.setattr(_http, "http_backoff", recorded)
    monkeypatch.setattr(_http.time, "sleep", sleeps.append)
    return cache, requests, sleeps


@pytest.fixture
def micro_tag(tmp_path, monkeypatch):
    """micro-vit as an open_clip architecture with a pretrained tag on the hub, and its weights' files."""
    from open_clip import factory, pretrained

    weights, micro = _micro_files(tmp_path)
    monkeypatch.setitem(
        factory._MODEL_CONFIGS, "micro-vit", {k: v for k, v in micro.config.items() if k != "preprocess"}
    )
    monkeypatch.setitem(pretrained._PRETRAINED, "micro-vit", {"test_tag": pretrained._pcfg(hf_hub="clipadapt-test/t/")})
    return weights, micro


def test_cached_hub_weights_are_used_without_a_network_call_or_a_download(no_network, micro_tag, monkeypatch):
    cache, requests, _ = no_network
    weights, micro = micro_tag

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the file is in the cache")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", no_download)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", no_download)
    hub_cache(cache, "clipadapt-test/t", weights)
    model_cfg = {k: v for k, v in micro.config.items() if k != "preprocess"}
    hub_cache(
        cache, "clipadapt-test/r", {**weights, "open_clip_config.json": json.dumps({"model_cfg": model_cfg}).encode()}
    )
    for backbone in (load_backbone("micro-vit", "test_tag"), load_backbone(None, "hf-hub:clipadapt-test/r")):
        assert torch.equal(backbone.model.visual.proj, micro.model.visual.proj)
    assert requests == []


@pytest.mark.parametrize(
    "model, name, first",  # first: the file the fetch needs first (an hf-hub name's config, then its weights)
    [
        ("micro-vit", "test_tag", "open_clip_model.safetensors"),
        (None, "hf-hub:clipadapt-test/t", "open_clip_config.json"),
    ],
)
def test_without_cache_or_network_the_error_comes_after_one_attempt(no_network, micro_tag, model, name, first):
    _, requests, sleeps = no_network
    with pytest.raises(ClipadaptError) as error:
        load_backbone(model, name)
    message = str(error.value)
    assert "\n" not in message
    assert "holds no clipadapt-test/t/open_clip_pytorch_model.bin" in message
    assert "`hf download clipadapt-test/t open_clip_pytorch_model.bin` puts it there" in message
    assert "cannot be reached: [Errno -2] Name or service not known" in message
    # One request, not retried: huggingface_hub's own download asks 12 times, sleeping 46 s between them.
    assert requests == [("HEAD", f"https://huggingface.co/clipadapt-test/t/resolve/main/{first}")]
    assert sleeps == []


def test_when_the_hub_answers_open_clip_downloads_into_the_cache(no_network, micro_tag, monkeypatch):
    import huggingface_hub

    cache, _, _ = no_network
    weights, micro = micro_tag
    asked, downloads = [], []
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kwargs: asked.append(url))

    def download(repo, filename=None, **kwargs):
        downloads.append((repo, filename))
        hub_cache(cache, repo, weights)
        return huggingface_hub.try_to_load_from_cache(repo, "open_clip_model.safetensors")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", download)
    assert torch.equal(load_backbone("micro-vit", "test_tag").model.visual.proj, micro.model.visual.proj)
    assert asked == ["https://huggingface.co/clipadapt-test/t/resolve/main/open_clip_model.safetensors"]
    assert downloads == [("clipadapt-test/t", None)]
    load_backbone("micro-vit", "test_tag")  # now from the cache: neither asked nor downloaded again
    assert len(asked) == 1 and len(downloads) == 1
