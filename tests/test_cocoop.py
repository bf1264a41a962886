"""CoCoOp: batched per-image prompts against the official per-image loop, learning, chunked inference, the lr
scaling of the real batch, saving, and the augmented training path."""

import pytest
import torch
import torch.nn.functional as F
from test_coop import NAMES, accuracy, synthetic

from clipadapt import CheckpointError, ClipadaptError, load_backbone
from clipadapt.data import load_dataset
from clipadapt.features import FeatureSet, extract_features
from clipadapt.methods import build_method

pytestmark = pytest.mark.usefixtures("one_thread")


def per_image_logits(cocoop, features: torch.Tensor, classnames) -> torch.Tensor:
    """The official forward: for each image, its shifted context and one text-encoder call over all classes."""
    backbone = cocoop.backbone
    image = F.normalize(features, dim=-1)
    rows = []
    for feature in image:
        ctx = cocoop.prompt.ctx + cocoop.prompt.meta_net(feature[None])[0]  # [n_ctx, width]
        text = backbone.encode_prompted_text(ctx, classnames, normalize=True)  # [n_cls, D]
        rows.append(backbone.model.logit_scale.exp() * text @ feature)
    return torch.stack(rows)


@pytest.mark.parametrize("init", ["a photo of a", ""])
def test_batched_gradients_match_per_image_loop(backbone, init):
    cocoop = build_method("cocoop", backbone, {"init": init, "n_ctx": 3})
    with torch.no_grad():  # a meta-net bias of the size training reaches, not its near-zero start
        for param in cocoop.prompt.meta_net.parameters():
            param.mul_(20)
    names = ["red star", "striped blue square", "dog", "a very long class name with many words"]
    features = torch.randn(6, backbone.embed_dim, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 0, 2])
    params = list(cocoop.prompt.parameters())
    batched = F.cross_entropy(cocoop._logits(features, names), labels)
    looped = F.cross_entropy(per_image_logits(cocoop, features, names), labels)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=0)
    for ours, reference in zip(torch.autograd.grad(batched, params), torch.autograd.grad(looped, params)):
        assert ours.abs().max() > 0
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


def test_learns_and_scores_any_names(backbone):
    train, test = synthetic(8, seed=1), synthetic(20, seed=2)
    cocoop = build_method("cocoop", backbone, {"epochs": 20, "batch_size": 4})
    assert cocoop.config.lr == pytest.approx(0.008)  # the official 0.002 at batch 1, scaled to the batch
    before = accuracy(cocoop, test)
    history = cocoop.fit(train, NAMES, progress=False)
    assert history["steps"] == 160
    assert history["epoch_losses"][-1] < 0.3 * history["epoch_losses"][0]
    assert before < 50 and accuracy(cocoop, test) >= 90 and accuracy(cocoop, train) >= 90
    assert cocoop.logits(test.features, ["eel", "fox", "gnu"]).shape == (len(test), 3)
    again = build_method("cocoop", backbone, {"epochs": 20, "batch_size": 4})
    again.fit(train, NAMES, progress=False)
    for a, b in zip(again.prompt.parameters(), cocoop.prompt.parameters()):
        assert torch.equal(a, b)


def test_inference_is_chunked_and_equal(backbone, monkeypatch):
    features = torch.randn(10, backbone.embed_dim)
    whole = build_method("cocoop", backbone, {"eval_batch": 100}).logits(features, NAMES)
    chunked = build_method("cocoop", backbone, {"eval_batch": 3})
    original, batch_sizes = backbone.encode_prompted_text, []

    def recording(ctx, *args, **kwargs):
        batch_sizes.append(ctx.shape[0])
        return original(ctx, *args, **kwargs)

    monkeypatch.setattr(backbone, "encode_prompted_text", recording)
    torch.testing.assert_close(chunked.logits(features, NAMES), whole, atol=1e-5, rtol=0)
    assert batch_sizes == [3, 3, 3, 1]


def test_explicit_lr_is_kept(backbone):
    assert build_method("cocoop", backbone, {}).config.lr == pytest.approx(0.064)
    assert build_method("cocoop", backbone, {}).config.warmup_lr == pytest.approx(32e-5)  # scaled with the lr
    explicit = build_method("cocoop", backbone, {"lr": 0.01, "batch_size": 8}).config
    assert (explicit.lr, explicit.warmup_lr) == (0.01, 1e-5)
    with pytest.raises(ClipadaptError, match="eval_batch must be at least 1"):
        build_method("cocoop", backbone, {"eval_batch": 0})
    with pytest.raises(ClipadaptError, match="batch_size must be at least 1"):
        build_method("cocoop", backbone, {"batch_size": 0, "lr": 0.01})


def test_save_and_load(backbone, tmp_path):
    cocoop = build_method("cocoop", backbone, {"epochs": 2, "batch_size": 8})
    cocoop.fit(synthetic(8, seed=1), NAMES, progress=False)
    cocoop.save(tmp_path / "prompt.safetensors")
    loaded = build_method("cocoop", backbone, {})
    loaded.load(tmp_path / "prompt.safetensors")
    features = torch.randn(5, backbone.embed_dim)
    torch.testing.assert_close(loaded.logits(features, NAMES), cocoop.logits(features, NAMES), atol=0, rtol=0)
    build_method("coop", backbone, {"n_ctx": 4}).save(tmp_path / "coop.safetensors")
    with pytest.raises(CheckpointError, match="holds no cocoop weights"):
        loaded.load(tmp_path / "coop.safetensors")


def test_augmented_training_reencodes_images(colour_world, tmp_path, monkeypatch):
    root, weights = colour_world
    backbone = load_backbone(None, weights)
    splits = load_dataset(f"imagefolder:{root}")
    train = extract_features(backbone, splits.train, cache_dir=tmp_path, progress=False)
    test = extract_features(backbone, splits.test, cache_dir=tmp_path, progress=False)
    encoded = []
    original = backbone.encode_image

    def counting_encode_image(images, **kwargs):
        encoded.append(len(images))
        return original(images, **kwargs)

    monkeypatch.setattr(backbone, "encode_image", counting_encode_image)
    cocoop = build_method("cocoop", backbone, {"epochs": 2, "batch_size": 8, "augment": True})
    start = [p.detach().clone() for p in cocoop.prompt.parameters()]
    cocoop.fit(train, splits.classnames, progress=False)
    assert encoded == [8] * 4
    assert all(not torch.equal(a, b) for a, b in zip(cocoop.prompt.parameters(), start))
    assert cocoop.logits(test.features, splits.classnames).shape == (len(test), 4)
    with pytest.raises(ClipadaptError, match="carry no samples"):
        cocoop.fit(FeatureSet(train.features, train.labels), splits.classnames)
