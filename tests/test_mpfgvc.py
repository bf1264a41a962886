"""MP-FGVC and the fine-tuned baseline: SsVP's token selection (and its equivalence with the full forward when
every token is kept), the VLFM against a loop reference, both training stages on images, the ablation switches,
closed-set scoring, and where the kept tokens land."""

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipadapt import CheckpointError, ClipadaptError
from clipadapt.data import load_dataset
from clipadapt.methods import build_method
from clipadapt.methods.mpfgvc import (
    VisionLanguageFusion,
    box_in_crop,
    part_overlap,
    patch_boxes,
    resized_shorter_side,
    ssvp_tokens,
)
from clipadapt.protocols import RunContext, run_protocol

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"stage1_epochs": 8, "stage2_epochs": 8, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-2}


def test_ssvp_keeps_the_most_attended_patches():
    attention = torch.tensor([[[0.5, 0.1, 0.3, 0.05, 0.05], [0.2, 0.4, 0.1, 0.2, 0.1]]])  # [B=1, heads=2, N=5]
    # summed over heads, patches 1..4 score 0.5, 0.4, 0.25, 0.15 (the class token's own 0.7 is not a patch)
    assert ssvp_tokens(attention, 2).tolist() == [[1, 2]]


@pytest.mark.parametrize("layer", [-2, -1])
def test_ssvp_with_every_token_kept_is_the_plain_encoder(backbone, layer):
    config = {"ssvp": True, "top_k": 16, "ssvp_layer": layer}  # micro-vit: 4 x 4 patches
    method = build_method("mpfgvc", backbone, config)
    method.classnames, method.model = ["a", "b"], method._build(["a", "b"], "thing")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        selected, kept = method.encode_images(images, return_kept=True)
        plain = backbone.model.visual(images)  # the tuned copy starts as the backbone's tower
    assert kept.shape == (3, 16) and sorted(kept[0].tolist()) == list(range(1, 17))
    torch.testing.assert_close(selected, plain, atol=1e-5, rtol=0)  # attention is order-free without positions
    method.config.top_k = 4
    with torch.no_grad():
        fewer = method.encode_images(images)
    assert fewer.shape == plain.shape and not torch.allclose(fewer, plain, atol=1e-4)


def test_the_clip_tower_runs_at_a_higher_resolution_as_the_paper_runs_its_vit(backbone, tmp_path):
    """image_size=64 on the 32-pixel micro model (the paper: its 224-pixel ViT-B/16 at 448): the tuned tower is the
    model loaded at that size (position grid resampled as open_clip resamples a checkpoint), its transform follows,
    and the text side and the backbone itself are untouched."""
    from clipadapt.backbone import load_backbone

    method = build_method("finetune", backbone, {"image_size": 64})
    method.classnames, method.model = ["a", "b"], method._build(["a", "b"], "thing")
    tower = method.model["visual"]
    assert (tower.image_size, tower.grid) == (64, 8) and backbone.image_size == 32
    assert tower.transform()(Image.new("RGB", (90, 70))).shape == (3, 64, 64)
    path = tmp_path / "micro.safetensors"
    backbone.save(path)
    larger = {**backbone.config, "vision_cfg": {**backbone.config["vision_cfg"], "image_size": 64}}
    reference = load_backbone(larger, path)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(method.encode_images(images), reference.encode_image(images), atol=1e-5, rtol=0)
    at_its_own_size = build_method("finetune", backbone, {"image_size": 32})._build(["a"], "x")["visual"]
    assert torch.equal(at_its_own_size.visual.positional_embedding, backbone.model.visual.positional_embedding)
    with pytest.raises(ClipadaptError, match="image_size=60 is not a multiple of .* patch size 8"):
        build_method("finetune", backbone, {"image_size": 60})._build(["a"], "x")


@pytest.mark.parametrize("layer", [-2, -1])
def test_rollout_chooses_by_the_product_of_attention_maps(backbone, layer):
    method = build_method("mpfgvc", backbone, {"ssvp": True, "top_k": 4, "ssvp_layer": layer, "ssvp_score": "rollout"})
    method.classnames, method.model = ["a", "b"], method._build(["a", "b"], "thing")
    torch.manual_seed(3)
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        _, kept = method.encode_images(images, return_kept=True)
        # Reference: open_clip's own per-head attention weights, block by block, multiplied as TransFG does.
        visual = backbone.model.visual
        x, product = visual._embeds(images), None
        for block in visual.transformer.resblocks[: len(visual.transformer.resblocks) + layer + 1]:
            y = block.ln_1(x)
            _, weights = block.attn(y, y, y, need_weights=True, average_attn_weights=False)
            product = weights if product is None else weights @ product
            x = block(x)
        expected = product[:, :, 0].sum(dim=1)[:, 1:].topk(4, dim=-1).indices + 1
    assert [sorted(row) for row in kept.tolist()] == [sorted(row) for row in expected.tolist()]
    method.config.ssvp_score = "attention"
    with torch.no_grad():
        _, by_attention = method.encode_images(images, return_kept=True)
    # micro-vit has 2 blocks: at -2 the product is the first block's map alone, at -1 two maps multiplied
    same = [sorted(row) for row in by_attention.tolist()] == [sorted(row) for row in kept.tolist()]
    assert same == (layer == -2)
    with pytest.raises(ClipadaptError, match="ssvp_score must be one of attention, rollout"):
        build_method("mpfgvc", backbone, {"ssvp_score": "max"})


def test_vlfm_matches_a_loop_reference():
    torch.manual_seed(0)
    fusion = VisionLanguageFusion(dim=8, num_classes=3)
    visual, text = torch.randn(2, 8), torch.randn(3, 8)
    with torch.no_grad():
        logits = fusion(visual, text)
        attention = fusion.attention(visual, text)
        for b in range(2):
            q = fusion.query(visual[b])
            tokens = [visual[b]] + list(text)
            scores = torch.stack([q @ fusion.key(t) / math.sqrt(8) for t in tokens])
            weights = scores.softmax(dim=0)
            fused = sum(w * fusion.value(t) for w, t in zip(weights, tokens))
            torch.testing.assert_close(attention[b], weights, atol=1e-6, rtol=0)
            torch.testing.assert_close(logits[b], fusion.classifier(fusion.translation(fused)), atol=1e-5, rtol=0)
    assert logits.shape == (2, 3)
    concat = VisionLanguageFusion(dim=8, num_classes=3, fusion="concat")
    assert concat(visual, text).shape == (2, 3)


def test_ssvp_starts_at_its_epoch(colour_world, backbone, monkeypatch):
    root, _ = colour_world
    config = {**FAST, "stage1_epochs": 3, "stage2_epochs": 1, "ssvp": True, "ssvp_start_epoch": 2, "top_k": 4}
    method = build_method("mpfgvc", backbone, config)
    calls = []
    encode = method.encode_images
    monkeypatch.setattr(
        method, "encode_images", lambda images, **kw: calls.append(kw.get("ssvp")) or encode(images, **kw)
    )
    method.fit_images(load_dataset(f"imagefolder:{root}"), progress=False)
    # 16 images in batches of 8: 2 steps an epoch; then stage 2's one embedding pass, with the config's SsVP
    assert calls == [False] * 4 + [True] * 2 + [None]
    with pytest.raises(ClipadaptError, match="ssvp_start_epoch must lie in"):
        build_method("mpfgvc", backbone, {**config, "ssvp_start_epoch": 3})


def test_augmented_training_decodes_in_workers_identically(colour_world, backbone, monkeypatch):
    """augment=true decodes every step's images; in DataLoader workers (each batch there) the tuned weights are
    the same as decoding in this process."""
    from clipadapt.training import batches

    root, _ = colour_world
    config = {**FAST, "stage1_epochs": 2, "stage2_epochs": 1, "augment": True}
    splits = load_dataset(f"imagefolder:{root}")
    here = build_method("mpfgvc", backbone, config)
    here.fit_images(splits, progress=False)
    decode = batches.load_batch
    monkeypatch.setattr(
        batches,
        "load_batch",
        lambda *args, **kwargs: (
            decode(*args, **kwargs)
            if torch.utils.data.get_worker_info()
            else pytest.fail("decoded in the main process")
        ),
    )
    in_workers = build_method("mpfgvc", backbone, config)
    in_workers.fit_images(splits, progress=False, num_workers=2)
    for (key, tensor), (_, other) in zip(here.model.state_dict().items(), in_workers.model.state_dict().items()):
        assert torch.equal(tensor, other), key


@pytest.mark.parametrize(
    "name,config",
    [
        ("mpfgvc", {"ssvp": True}),  # the paper's configuration
        ("mpfgvc", {}),
        ("mpfgvc", {"datp": False, "fusion": "concat"}),
        ("finetune", {}),
    ],
)
def test_two_stage_training_learns_the_colours(colour_world, backbone, tmp_path, name, config):
    root, _ = colour_world  # the random micro CLIP: whatever it learns, it learns here
    before = backbone.model.visual.proj.clone()
    method = build_method(name, backbone, {**FAST, **config})
    ctx = RunContext(backbone, cache_dir=tmp_path / "cache", out_dir=tmp_path / "run", progress=False)
    result = run_protocol("full", method, ctx, load_dataset(f"imagefolder:{root}"))
    stage1 = result["training"]["stage1"]
    assert stage1["epoch_losses"][-1] < stage1["epoch_losses"][0]
    assert ("stage2" in result["training"]) == (method.config.fusion != "none")
    assert result["accuracy"] > 80.0  # 4 colours: chance 25%
    assert torch.equal(backbone.model.visual.proj, before)  # the backbone itself is not tuned
    assert ("prompts" in method.model) == method.config.datp
    splits = load_dataset(f"imagefolder:{root}")
    with pytest.raises(ClipadaptError, match="cannot score other class names"):
        method.image_logits(splits.test, ["cat", "dog"], progress=False)
    # The protocol saved the tuned networks; a fresh method loads them and predicts the same.
    (saved,) = (tmp_path / "run").glob(f"train-*/{name}.safetensors")
    reloaded = build_method(name, backbone, {**FAST, **config})
    reloaded.load(saved)
    torch.testing.assert_close(
        reloaded.image_logits(splits.test, splits.classnames, progress=False),
        method.image_logits(splits.test, splits.classnames, progress=False),
    )
    with pytest.raises(CheckpointError, match="do not fit this backbone and config"):
        other = {"datp": True, "contrastive": True, "n_text_tokens": 2, "fusion": "vlfm", "expansion": 2}
        build_method(name, backbone, {**FAST, **config, **other}).load(saved)
    if config.get("ssvp"):  # SsVP adds no weights: its setting is checked by name
        with pytest.raises(CheckpointError, match="was trained with ssvp=true: load it with the same setting"):
            build_method(name, backbone, {**FAST, **config, "ssvp": False}).load(saved)


def test_base2new_reports_base_only_and_bad_options(colour_world, tmp_path, backbone):
    root, _ = colour_world
    method = build_method("finetune", backbone, {**FAST, "stage1_epochs": 1})
    ctx = RunContext(method.backbone, cache_dir=tmp_path / "cache", progress=False)
    result = run_protocol("base2new", method, ctx, load_dataset(f"imagefolder:{root}"), shots=2)
    assert result["new_accuracy"] is None and result["base_accuracy"] is not None
    with pytest.raises(ClipadaptError, match="fusion must be one of"):
        build_method("mpfgvc", backbone, {"fusion": "sum"})
    with pytest.raises(ClipadaptError, match="needs contrastive=true"):
        build_method("mpfgvc", backbone, {"contrastive": False})
    with pytest.raises(ClipadaptError, match="ssvp_layer must be"):
        build_method("mpfgvc", backbone, {"ssvp_layer": 0})
    with pytest.raises(ClipadaptError, match="top_k=8, ssvp_layer=-1 set how SsVP .* without SsVP: add ssvp=true"):
        build_method("mpfgvc", backbone, {"top_k": 8, "ssvp_layer": -1})
    with pytest.raises(ClipadaptError, match="finetune runs without SsVP: SsVP is MP-FGVC's"):
        build_method("finetune", backbone, {"ssvp_score": "rollout"})
    with pytest.raises(ClipadaptError, match="fit it first"):
        build_method("mpfgvc", backbone).image_logits([], [], progress=False)


def test_part_overlap_counts_patches_on_the_part():
    boxes = patch_boxes(grid=4, image_size=32)  # 8-pixel patches
    assert boxes[5].tolist() == [8.0, 8.0, 16.0, 16.0]
    parts = torch.tensor([[9.0, 9.0, 12.0, 12.0], [6.0, 9.0, 12.0, 12.0]])  # patch 5 only; patches 4 and 5
    kept = torch.tensor([[6, 1], [6, 1]])  # 1-based token indices: patches 5 and 0
    overlap = part_overlap(kept, boxes, parts)
    assert overlap["kept_tokens_on_part"] == 50.0 and overlap["random_tokens_on_part"] == pytest.approx(300 / 32)
    assert overlap["part_patches_kept"] == pytest.approx(200 / 3) and overlap["random_part_patches_kept"] == 12.5
    # Several parts an image (birds: crown, wing, breast): a patch is on a part if it meets any of them; an image
    # with fewer parts is padded with empty boxes, which meet no patch.
    several = torch.tensor([[[9.0, 9.0, 12.0, 12.0], [1.0, 1.0, 2.0, 2.0]], [[6.0, 9.0, 12.0, 12.0], [0, 0, 0, 0]]])
    overlap = part_overlap(kept, boxes, several)
    assert overlap["kept_tokens_on_part"] == 75.0 and overlap["random_tokens_on_part"] == pytest.approx(400 / 32)
    assert overlap["part_patches_kept"] == 75.0
    assert part_overlap(kept, boxes, parts[:, None]) == part_overlap(kept, boxes, parts)


@pytest.mark.parametrize("name, superclass, parts", [("fine", "badge", 1), ("birds", "bird", 3)])
def test_full_protocol_on_the_world_fine_grained_sets_reports_part_overlap(backbone, tmp_path, name, superclass, parts):
    from clipadapt.data.world import DEFAULT_SIZES, generate_world

    root = generate_world(tmp_path / "w", image_size=32, progress=False, **{k: 1 for k in DEFAULT_SIZES})
    splits = load_dataset(f"world:{name}:{root}")
    assert splits.annotations["superclass"] == superclass
    config = {**FAST, "stage1_epochs": 1, "stage2_epochs": 1, "ssvp": True, "top_k": 4}
    method = build_method("mpfgvc", backbone, config)
    result = run_protocol("full", method, RunContext(backbone, cache_dir=tmp_path / "cache", progress=False), splits)
    overlap = result["part_overlap"]
    assert 0 <= result["val_accuracy"] <= 100  # on the val images, through the tuned encoder
    assert overlap["tokens_kept"] == 4 and overlap["tokens"] == 16
    assert 0 <= overlap["kept_tokens_on_part"] <= 100 and 0 < overlap["random_tokens_on_part"] < 100
    assert method.superclass == superclass
    # Overlay examples: the first test image of each of the first six classes, with what SsVP kept and why.
    examples = overlap["examples"]
    assert [e["label"] for e in examples] == sorted({s.label for s in splits.test})[:6]
    for example in examples:
        assert Path(example["path"]).is_file() and example["class"] == splits.classnames[example["label"]]
        assert len(example["scores"]) == 16 and max(example["scores"]) == 1.0
        top = sorted(range(16), key=lambda i: -example["scores"][i])[:4]
        assert example["kept"] == sorted(top) and [len(box) for box in example["parts"]] == [4] * parts


def test_part_boxes_follow_clips_resize_and_centre_crop():
    assert box_in_crop([16, 16, 24, 24], 64, 64, 32) == [8.0, 8.0, 12.0, 12.0]
    # 128 x 64: the shorter side goes to 32 (scale 0.5), the width to 64, of which the centre 32 are kept
    assert box_in_crop([40, 0, 48, 8], 128, 64, 32) == [4.0, 0.0, 8.0, 4.0]


def test_part_boxes_follow_timms_resize_and_crop():
    """timm's ViT transforms resize the shorter side to size / crop_pct (248 for 224) before the centre crop: the
    box must land where the transform puts the part's pixels."""
    import numpy as np
    import timm
    from PIL import Image
    from torchvision import transforms

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    timm_transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    assert resized_shorter_side(timm_transform, 224) == 248
    assert resized_shorter_side(transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32)]), 32) == 32
    # open_clip's squash mode resizes every image to a fixed [height, width]
    assert resized_shorter_side(transforms.Compose([transforms.Resize((32, 48))]), 32) == [32, 48]
    assert box_in_crop([40, 0, 48, 8], 128, 64, 32, [32, 48]) == [7.0, 0.0, 10.0, 4.0]  # x * 48/128 - 8, y / 2
    pixels = np.full((300, 400, 3), 128, dtype=np.uint8)
    pixels[100:140, 250:300] = (255, 0, 0)
    crop = np.asarray(transforms.Compose([transforms.Resize(248), transforms.CenterCrop(224)])(Image.fromarray(pixels)))
    red = (crop[..., 0] > 200) & (crop[..., 1] < 60)
    rows, cols = red.any(axis=1).nonzero()[0], red.any(axis=0).nonzero()[0]
    x0, y0, x1, y1 = box_in_crop([250, 100, 300, 140], 400, 300, 224, 248)
    assert abs(cols.min() - x0) <= 1.5 and abs(cols.max() + 1 - x1) <= 1.5
    assert abs(rows.min() - y0) <= 1.5 and abs(rows.max() + 1 - y1) <= 1.5


def test_datp_tokens_start_random_or_from_the_class_names(backbone):
    names = ["red badge", "a very long blue badge name"]
    method = build_method("mpfgvc", backbone, {"datp_init": "name"})
    method.classnames, method.model = names, method._build(names, "badge")
    ctx = method.model["prompts"]["ctx"].detach()
    torch.testing.assert_close(ctx[0, :2], backbone.embed_words("red badge"))
    torch.testing.assert_close(ctx[1], backbone.embed_words(names[1])[:4])  # the first J = 4 tokens
    assert ctx[0, 2:].abs().max() < 0.2  # the rest: N(0, 0.02)
    random = build_method("mpfgvc", backbone)
    assert random._initial_prompts(names).abs().max() < 0.2
    with pytest.raises(ClipadaptError, match="datp_init"):
        build_method("mpfgvc", backbone, {"datp_init": "words"})


def test_timm_vit_encoder_from_a_local_weights_file(colour_world, backbone, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)  # with a head, as released
    weights = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    config = {
        **FAST,
        "image_encoder": "timm:vit_tiny_patch16_224",
        "image_encoder_weights": str(weights),
        "stage1_epochs": 1,
        "stage2_epochs": 1,
        "ssvp": True,
        "top_k": 8,
    }
    fresh = build_method("mpfgvc", backbone, config)._build(["a"], "x")["visual"]
    assert torch.equal(fresh.vit.blocks[1].attn.qkv.weight, reference.blocks[1].attn.qkv.weight)  # loaded
    # Another input size (448 for the paper's CUB): position embeddings resampled, the transform follows.
    small = build_method("mpfgvc", backbone, {**config, "image_size": 64})._build(["a"], "x")["visual"]
    assert small.image_size == 64 and small.grid == 4
    assert small.transform()(Image.new("RGB", (90, 70))).shape == (3, 64, 64)
    assert small.embed(torch.randn(1, 3, 64, 64)).shape == (1, 17, reference.embed_dim)
    with pytest.raises(ClipadaptError, match="not a multiple of .* patch size 16"):
        build_method("mpfgvc", backbone, {**config, "image_size": 50})._build(["a"], "x")
    with pytest.raises(ClipadaptError, match="image_size must be positive"):
        build_method("mpfgvc", backbone, {**config, "image_size": -5})
    method = build_method("mpfgvc", backbone, config)
    root, _ = colour_world
    ctx = RunContext(backbone, cache_dir=tmp_path / "cache", progress=False)
    result = run_protocol("full", method, ctx, load_dataset(f"imagefolder:{root}"))
    tower = method.model["visual"]
    assert tower.image_size == 224 and tower.grid == 14 and tower.proj.out_features == backbone.embed_dim
    assert result["training"]["stage2"]["steps"] == 2 and 0 <= result["accuracy"] <= 100
    # cls attention recomputed from the block equals timm's own attention (unfused) on the same input
    x = tower.embed(torch.randn(2, 3, 224, 224))
    block = tower.blocks[0]
    block.attn.fused_attn = False
    captured = {}
    handle = block.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("attn", o))
    with torch.no_grad():
        block.attn(block.norm1(x))
        mine = tower.attention(block, x)
    handle.remove()
    torch.testing.assert_close(mine, captured["attn"][:, :, 0], atol=1e-5, rtol=0)
    bad = tmp_path / "bad.safetensors"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, str(bad))
    with pytest.raises(CheckpointError, match="does not fit timm model"):
        build_method("mpfgvc", backbone, {**config, "image_encoder_weights": str(bad)})._build(["a"], "x")
