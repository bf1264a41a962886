"""CLIP-Adapter and Tip-Adapter: equivalences with zero-shot CLIP and a loop reference, learning, the official
hyper-parameter search, unseen class names, Tip-Adapter-F, and synthetic features in the cache."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipadapt import ClipadaptError
from clipadapt.features import FeatureSet
from clipadapt.methods import build_method
from clipadapt.methods.tip_adapter import search_grid

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["ant", "bee", "cat", "dog"]


def clustered(per_class: int, seed: int, dim: int = 32, classes: int = len(NAMES)) -> FeatureSet:
    """Features around random class directions (the same for every seed) that the random text tower knows
    nothing about: zero-shot is near chance, a cache or an adapter has to learn them."""
    means = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(classes).repeat_interleave(per_class)
    noise = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return FeatureSet(features=means[labels] + 0.3 * noise, labels=labels)


def accuracy(method, data: FeatureSet, names=NAMES) -> float:
    return 100.0 * (method.logits(data.features, names).argmax(dim=-1) == data.labels).float().mean().item()


def test_clip_adapter_at_ratio_zero_is_zero_shot(backbone):
    adapter = build_method("clip_adapter", backbone, {"ratio": 0.0})
    zeroshot = build_method("zeroshot", backbone, {"templates": "coop"})
    features = clustered(3, seed=1).features
    torch.testing.assert_close(adapter.logits(features, NAMES), zeroshot.logits(features, NAMES), atol=1e-5, rtol=0)


def test_clip_adapter_learns_and_transfers_to_other_names(backbone):
    train, test = clustered(8, seed=1), clustered(20, seed=2)
    adapter = build_method("clip_adapter", backbone, {"epochs": 30, "batch_size": 8, "ratio": 0.6, "lr": 0.02})
    before = accuracy(adapter, test)
    history = adapter.fit(train, NAMES, progress=False)
    assert history["epoch_losses"][-1] < history["epoch_losses"][0]
    assert accuracy(adapter, test) > max(60.0, before + 20)  # chance 25%
    assert adapter.logits(test.features, ["eel", "fox"]).shape == (len(test), 2)


@pytest.mark.parametrize("clip_scale", [0.0, 100.0])  # the model's learned scale; the official constant
def test_tip_adapter_logits_match_a_loop_reference(backbone, clip_scale):
    train, test = clustered(4, seed=1), clustered(2, seed=2)
    tip = build_method("tip_adapter", backbone, {"search": False, "alpha": 1.7, "beta": 3.0, "clip_scale": clip_scale})
    tip.fit(train, NAMES, progress=False)
    weights = tip.text(NAMES)
    scale = torch.tensor(clip_scale) if clip_scale else backbone.model.logit_scale.exp()
    keys = F.normalize(train.features, dim=-1)
    scale, weights = scale.detach(), weights.detach()
    for f, row in zip(test.features, tip.logits(test.features, NAMES)):
        f = F.normalize(f, dim=0)
        expected = []
        for c in range(len(NAMES)):
            cache = sum(math.exp(-3.0 * (1 - float(f @ k))) for k, y in zip(keys, train.labels) if y == c)
            expected.append(float(scale * f @ weights[c]) + 1.7 * cache)
        torch.testing.assert_close(row, torch.tensor(expected), atol=1e-4, rtol=1e-5)


def test_tip_adapter_search_and_unseen_names(backbone):
    train, val, test = clustered(4, seed=1), clustered(4, seed=3), clustered(20, seed=2)
    tip = build_method("tip_adapter", backbone, {"beta_steps": 20, "alpha_steps": 10})
    zeroshot_accuracy = accuracy(tip, test)  # not fitted yet: zero-shot CLIP
    summary = tip.fit(train, NAMES, val=val, progress=False)
    assert summary["alpha"] in search_grid(3.0, 10) and summary["beta"] in search_grid(7.0, 20)
    assert summary["val_accuracy"] == pytest.approx(accuracy(tip, val), abs=1e-4)
    assert accuracy(tip, test) > max(80.0, zeroshot_accuracy + 30)
    zeroshot = build_method("zeroshot", backbone, {"templates": "coop"})
    torch.testing.assert_close(
        tip.logits(test.features, ["eel", "fox"]),  # no cache entries: zero-shot
        zeroshot.logits(test.features, ["eel", "fox"]),
        atol=1e-5,
        rtol=0,
    )


def test_tip_adapter_f_learns_the_keys(backbone):
    train, val = clustered(8, seed=1), clustered(4, seed=3)
    tip = build_method(
        "tip_adapter",
        backbone,
        {"finetune": True, "epochs": 10, "batch_size": 8, "search": False, "lr": 1e-2, "augment": False},
    )  # features without images
    summary = tip.fit(train, NAMES, val=val, progress=False)
    assert summary["finetune"]["epoch_losses"][-1] < summary["finetune"]["epoch_losses"][0]
    assert not torch.allclose(tip.cache["cache_keys"], F.normalize(train.features, dim=-1))
    assert len(summary["finetune"]["val_accuracies"]) == 10
    # Without a validation split (ImageNet, the fine-grained sets) the last epoch is kept, with a warning.
    with pytest.warns(UserWarning, match="no validation split"):
        assert tip.fit(train, NAMES, val=None, progress=False)["finetune"]["steps"] == 10 * 32 // 8


def test_tip_adapter_f_follows_the_official_loop(backbone, monkeypatch):
    """Every batch, the last partial one too, and a cosine over all steps to 0 (CosineAnnealingLR per batch);
    with images, crops of scale 0.5-1."""
    from clipadapt.training.batches import dassl_train_transform
    from clipadapt.training.loop import Trainer

    lrs = []
    fit = Trainer.fit
    monkeypatch.setattr(
        Trainer, "fit", lambda self, *a: (lrs.extend(self.lr_at(i) for i in range(self.total_steps)), fit(self, *a))[1]
    )
    train = clustered(3, seed=1)  # 12 features in batches of 5: 3 steps an epoch
    tip = build_method(
        "tip_adapter",
        backbone,
        {"finetune": True, "epochs": 2, "batch_size": 5, "search": False, "augment": False, "select": "last"},
    )
    assert tip.fit(train, NAMES, progress=False)["finetune"]["steps"] == 6
    assert lrs[0] == 1e-3 and lrs[3] == pytest.approx(0.5e-3) and 0 < lrs[-1] < lrs[-2]
    assert dassl_train_transform(backbone, tip.config.crop_scale).transforms[0].scale == (0.5, 1.0)
    for bad in (0.0, 1.5):
        with pytest.raises(ClipadaptError, match="crop_scale must lie in"):
            dassl_train_transform(backbone, bad)
    assert build_method("tip_adapter", backbone).config.augment  # by default, as the official code


def test_tip_adapter_refit_searches_afresh(backbone):
    train, val = clustered(4, seed=1), clustered(4, seed=3)
    tip = build_method("tip_adapter", backbone, {"beta_steps": 20, "alpha_steps": 10, "alpha": 1.0, "beta": 1.0})
    tip.fit(train, NAMES, val=val, progress=False)
    assert (tip.alpha, tip.beta) != (1.0, 1.0)
    tip.fit(train, NAMES, val=None, progress=False)  # nothing to search on: the configured values, not the last
    assert (tip.alpha, tip.beta) == (1.0, 1.0)


def test_tip_adapter_caches_as_many_synthetic_features_as_shots(backbone):
    train = clustered(3, seed=1, classes=2)  # classes 0, 1 with 3 shots each
    synthetic = FeatureSet(torch.randn(20, train.features.shape[1]), torch.tensor([2] * 10 + [3] * 10))
    tip = build_method("tip_adapter", backbone, {"search": False})
    assert tip.fit(train, NAMES, generated=synthetic, progress=False)["cache_size"] == 6 + 2 * 3
    assert tip.values.sum(dim=0).tolist() == [3.0, 3.0, 3.0, 3.0]


def test_adapter_errors(backbone):
    with pytest.raises(ClipadaptError, match="ratio"):
        build_method("clip_adapter", backbone, {"ratio": 1.5})
    with pytest.raises(ClipadaptError, match="templates"):
        build_method("tip_adapter", backbone, {"templates": "no placeholder"})
    with pytest.raises(ClipadaptError, match="select"):
        build_method("tip_adapter", backbone, {"select": "test"})


def test_tip_adapter_refuses_a_negative_clip_scale(backbone):
    with pytest.raises(ClipadaptError, match="clip_scale must be positive"):
        build_method("tip_adapter", backbone, {"clip_scale": -1.0})
