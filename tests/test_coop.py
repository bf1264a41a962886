"""CoOp: the initialised prompt is zero-shot's, the official schedule, learning, determinism, exact resume,
class token positions, class-specific contexts, saving, and the augmented (official) training path."""

import warnings

import pytest
import torch
from conftest import tensorboard_scalars
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from clipadapt import CheckpointError, ClipadaptError, load_backbone
from clipadapt.data import load_dataset
from clipadapt.features import FeatureSet, extract_features
from clipadapt.methods import build_method
from clipadapt.methods.coop import epochs_for_shots
from clipadapt.training.schedules import dassl_lr

NAMES = ["ant", "bee", "cat", "dog"]
FAST = {"n_ctx": 4, "epochs": 50, "batch_size": 8}  # 4 steps an epoch on 32 training features


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic(per_class: int, seed: int, dim: int = 32) -> FeatureSet:
    """Cached image features around random class directions (the same for every seed), which the random text
    tower knows nothing about: a prompt learner starts at chance and has to learn them."""
    means = torch.randn(len(NAMES), dim, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(len(NAMES)).repeat_interleave(per_class)
    noise = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return FeatureSet(features=means[labels] + 0.3 * noise, labels=labels)


def accuracy(method, data: FeatureSet, names=NAMES) -> float:
    return 100.0 * (method.logits(data.features, names).argmax(dim=-1) == data.labels).float().mean().item()


def test_phrase_init_is_zero_shot(backbone):
    names = ["red star", "striped blue square", "dog", "a b c d e"]
    coop = build_method("coop", backbone, {"init": "a photo of a"})
    zeroshot = build_method("zeroshot", backbone, {"templates": "a photo of a {}."})
    features = torch.randn(7, backbone.embed_dim)
    assert coop.ctx.shape == (4, backbone.text_width)  # n_ctx is the phrase's token count
    torch.testing.assert_close(coop.logits(features, names), zeroshot.logits(features, names), atol=1e-5, rtol=0)


def test_scoring_encodes_the_prompts_once_until_the_context_changes(backbone, monkeypatch):
    coop = build_method("coop", backbone, {"init": "a photo of a"})
    calls = []
    encode = backbone.encode_prompted_text
    monkeypatch.setattr(backbone, "encode_prompted_text", lambda *a, **k: calls.append(1) or encode(*a, **k))
    features = torch.randn(6, backbone.embed_dim)
    first = coop.logits(features[:3], NAMES)
    coop.logits(features[3:], NAMES)  # the next block of test features: the same prompts
    assert len(calls) == 1
    with torch.no_grad():
        coop.ctx.add_(torch.randn_like(coop.ctx))  # what an optimizer step does to the context
    assert not torch.allclose(coop.logits(features[:3], NAMES), first) and len(calls) == 2
    coop.logits(features, NAMES[:2])
    assert len(calls) == 3


class DasslConstantWarmup(LRScheduler):
    """Dassl's ConstantWarmupScheduler (dassl/optim/lr_scheduler.py), transcribed."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer)

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


@pytest.mark.parametrize("epochs,warmup", [(10, 1), (7, 2), (200, 1)])
def test_schedule_is_dassls(epochs, warmup):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.002)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about scheduler steps without optimizer steps
        scheduler = DasslConstantWarmup(optimizer, CosineAnnealingLR(optimizer, float(epochs)), warmup, 1e-5)
        expected = []
        for _ in range(epochs):
            expected.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    ours = [dassl_lr(e, epochs, 0.002, warmup, 1e-5) for e in range(epochs)]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_epochs_by_shots(backbone):
    assert [epochs_for_shots(k) for k in (1, 2, 4, 8, 16, 100)] == [50, 100, 100, 200, 200, 200]
    assert [epochs_for_shots(k, "ImageNet") for k in (1, 4, 16)] == [50, 50, 50]  # COOP.md: ep50 for ImageNet
    coop = build_method("coop", backbone, {"n_ctx": 4})
    history = coop.fit(synthetic(1, seed=1), NAMES, progress=False)  # one shot: one step an epoch
    assert history["epochs"] == 50 and history["steps"] == 50
    on_imagenet = build_method("coop", backbone, {"n_ctx": 4, "batch_size": 32})
    assert on_imagenet.fit(synthetic(16, seed=1), NAMES, template_key="ImageNet", progress=False)["epochs"] == 50


def test_ships_coop_recipe_keeps_the_last_batch_and_steps_a_cosine_every_batch(backbone, monkeypatch):
    """mrflogs/SHIP trains CoOp with plain SGD, a cosine over all steps without warm-up, and the last partial batch
    kept (configs/coop_ship_vit_b16_base2new.yaml)."""
    from clipadapt.training.loop import Trainer

    rates = []
    step = Trainer.fit

    def recording_fit(trainer, batches, step_fn):
        rates.extend(trainer.lr_at(s) for s in range(trainer.total_steps))
        return step(trainer, batches, step_fn)

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    config = {
        **FAST,
        "epochs": 3,
        "batch_size": 12,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "schedule": "cosine_steps",
        "drop_last": False,
    }
    history = build_method("coop", backbone, config).fit(synthetic(8, seed=1), NAMES, progress=False)
    assert history["steps_per_epoch"] == 3 and history["steps"] == 9  # 32 features: 12 + 12 + 8
    assert rates[0] == pytest.approx(0.002) and rates == sorted(rates, reverse=True) and rates[-1] < 1e-4
    dassl = build_method("coop", backbone, {**FAST, "epochs": 3, "batch_size": 12}).fit(
        synthetic(8, seed=1), NAMES, progress=False
    )
    assert dassl["steps_per_epoch"] == 2  # Dassl drops the last partial batch


def test_learns_and_is_deterministic(backbone):
    train, test = synthetic(8, seed=1), synthetic(20, seed=2)
    coop = build_method("coop", backbone, FAST)
    before = accuracy(coop, test)
    history = coop.fit(train, NAMES, progress=False)
    assert history["steps"] == 200 and history["steps_per_epoch"] == 4
    losses = history["epoch_losses"]
    assert losses[-1] < 0.3 * losses[0]
    assert before < 50 and accuracy(coop, test) >= 90 and accuracy(coop, train) >= 90
    again = build_method("coop", backbone, FAST)
    again.fit(train, NAMES, progress=False)
    assert torch.equal(again.ctx, coop.ctx)
    other_seed = build_method("coop", backbone, {**FAST, "seed": 2})
    other_seed.fit(train, NAMES, progress=False)
    assert not torch.equal(other_seed.ctx, coop.ctx)
    # CLIP stays frozen and gets its gradient flags back.
    assert all(p.requires_grad and p.grad is None for p in backbone.model.parameters())


def test_resume_matches_uninterrupted_run(backbone, tmp_path, monkeypatch):
    train, val = synthetic(8, seed=1), synthetic(4, seed=3)
    config = {**FAST, "epochs": 6, "checkpoint_every": 5, "select": "val"}
    straight = build_method("coop", backbone, config)
    straight.fit(train, NAMES, val=val, out_dir=tmp_path / "straight", progress=False)

    original, calls = backbone.encode_prompted_text, []

    def crash_in_step_10(*args, **kwargs):
        if torch.is_grad_enabled():  # training steps; validation runs under no_grad
            calls.append(1)
            if len(calls) == 11:
                raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(backbone, "encode_prompted_text", crash_in_step_10)
    with pytest.raises(KeyboardInterrupt):
        build_method("coop", backbone, config).fit(train, NAMES, val=val, out_dir=tmp_path / "resumed", progress=False)
    monkeypatch.undo()
    resumed = build_method("coop", backbone, config)
    history = resumed.fit(train, NAMES, val=val, out_dir=tmp_path / "resumed", progress=False)
    assert history["resumed_from_step"] == 10  # the checkpoint every 5 steps
    assert history["val_accuracies"] == straight.history["val_accuracies"]
    assert history["best_epoch"] == straight.history["best_epoch"]
    assert torch.equal(resumed.ctx, straight.ctx)
    # TensorBoard's reader sees each epoch's end once, across the interruption.
    steps, _ = tensorboard_scalars(tmp_path / "resumed" / "tensorboard", "train/loss")
    per_epoch = history["steps"] // len(history["epoch_losses"])
    assert steps == list(range(per_epoch, history["steps"] + 1, per_epoch))
    _, accuracies = tensorboard_scalars(tmp_path / "resumed" / "tensorboard", "val/accuracy")
    assert accuracies == pytest.approx(history["val_accuracies"])
    with pytest.raises(CheckpointError, match="different configuration"):
        build_method("coop", backbone, {**config, "lr": 0.01}).fit(
            train, NAMES, val=val, out_dir=tmp_path / "resumed", progress=False
        )


def test_select_on_validation(backbone):
    train, val = synthetic(8, seed=1), synthetic(4, seed=3)
    coop = build_method("coop", backbone, {**FAST, "epochs": 8, "select": "val"})
    history = coop.fit(train, NAMES, val=val, progress=False)
    best = history["best_epoch"]
    assert len(history["val_accuracies"]) == 8
    assert history["val_accuracy"] == max(history["val_accuracies"]) == history["val_accuracies"][best - 1]
    assert accuracy(coop, val) == pytest.approx(history["val_accuracy"])
    with pytest.raises(ClipadaptError, match="validation set"):
        build_method("coop", backbone, {"n_ctx": 4, "select": "val"}).fit(train, NAMES)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_positions_and_class_specific_contexts(backbone, position, csc):
    coop = build_method("coop", backbone, {**FAST, "epochs": 2, "class_token_position": position, "csc": csc})
    coop.fit(synthetic(8, seed=1), NAMES, progress=False)
    assert coop.ctx.shape == ((4, 4, backbone.text_width) if csc else (4, backbone.text_width))
    features = torch.randn(5, backbone.embed_dim)
    assert coop.logits(features, NAMES).shape == (5, 4)
    other = ["eel", "fox", "gnu"]
    if csc:
        with pytest.raises(ClipadaptError, match="cannot score other class names"):
            coop.logits(features, other)
        with pytest.raises(ClipadaptError, match="cannot score other class names"):
            coop.logits(features, NAMES[::-1])
    else:
        assert coop.logits(features, other).shape == (5, 3)


def test_csc_with_phrase_starts_every_class_from_it(backbone):
    coop = build_method("coop", backbone, {"csc": True, "init": "a photo of a", "epochs": 1})
    with pytest.raises(ClipadaptError, match="fit it first"):
        coop.logits(torch.randn(2, backbone.embed_dim), NAMES)
    coop.fit(synthetic(1, seed=1), NAMES, progress=False)
    assert coop.ctx.shape == (4, 4, backbone.text_width)


def test_save_and_load(backbone, tmp_path):
    for config in (FAST, {**FAST, "csc": True, "class_token_position": "middle"}):
        coop = build_method("coop", backbone, {**config, "epochs": 2})
        coop.fit(synthetic(8, seed=1), NAMES, progress=False)
        coop.save(tmp_path / "ctx.safetensors")
        loaded = build_method("coop", backbone, config)
        loaded.load(tmp_path / "ctx.safetensors")
        features = torch.randn(5, backbone.embed_dim)
        torch.testing.assert_close(loaded.logits(features, NAMES), coop.logits(features, NAMES), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="does not fit"):
        build_method("coop", backbone, {"n_ctx": 4, "class_token_position": "front"}).load(tmp_path / "ctx.safetensors")


def test_augmented_training_reencodes_images(colour_world, tmp_path, monkeypatch):
    root, weights = colour_world
    backbone = load_backbone(None, weights)
    splits = load_dataset(f"imagefolder:{root}")
    train = extract_features(backbone, splits.train, cache_dir=tmp_path, progress=False)
    encoded = []
    original = backbone.encode_image

    def counting_encode_image(images, **kwargs):
        encoded.append(len(images))
        return original(images, **kwargs)

    monkeypatch.setattr(backbone, "encode_image", counting_encode_image)
    config = {"init": "a photo of a", "epochs": 2, "batch_size": 8, "augment": True}
    coop = build_method("coop", backbone, config)
    start = coop.ctx.detach().clone()
    coop.fit(train, splits.classnames, progress=False)
    assert encoded == [8] * 4  # 16 images: 2 steps an epoch, every batch re-encoded
    assert not torch.equal(coop.ctx, start)
    again = build_method("coop", backbone, config)
    again.fit(train, splits.classnames, progress=False)
    assert torch.equal(again.ctx, coop.ctx)  # the random crops and flips are seeded too
    with pytest.raises(ClipadaptError, match="carry no samples"):
        build_method("coop", backbone, config).fit(FeatureSet(train.features, train.labels), splits.classnames)


def test_augmented_batches_decoded_in_workers_train_identically(colour_world, tmp_path, monkeypatch):
    """Batches decoded ahead in DataLoader workers are the main process's batches: the same context after training,
    and after an interruption resumed from a mid-epoch checkpoint."""
    from clipadapt.training import batches
    from clipadapt.training.batches import decoding_workers

    root, weights = colour_world
    backbone = load_backbone(None, weights)
    splits = load_dataset(f"imagefolder:{root}")
    train = extract_features(backbone, splits.train, cache_dir=tmp_path, progress=False)
    config = {"init": "a photo of a", "epochs": 2, "batch_size": 4, "augment": True, "checkpoint_every": 1}
    in_process = build_method("coop", backbone, config)
    in_process.fit(train, splits.classnames, progress=False)
    original_load_batch = batches.load_batch

    def in_a_worker_only(*args, **kwargs):
        if torch.utils.data.get_worker_info() is None:
            raise AssertionError("a batch was decoded in the main process")
        return original_load_batch(*args, **kwargs)

    monkeypatch.setattr(batches, "load_batch", in_a_worker_only)  # the forked workers inherit it
    with decoding_workers(2):
        in_workers = build_method("coop", backbone, config)
        in_workers.fit(train, splits.classnames, progress=False)
    monkeypatch.setattr(batches, "load_batch", original_load_batch)
    assert torch.equal(in_workers.ctx, in_process.ctx)

    original, calls = backbone.encode_image, []

    def interrupted(images, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # step 5 of 8, mid second epoch
            raise KeyboardInterrupt
        return original(images, **kwargs)

    monkeypatch.setattr(backbone, "encode_image", interrupted)
    with decoding_workers(2), pytest.raises(KeyboardInterrupt):
        build_method("coop", backbone, config).fit(train, splits.classnames, out_dir=tmp_path / "run", progress=False)
    monkeypatch.setattr(backbone, "encode_image", original)
    with decoding_workers(2):
        resumed = build_method("coop", backbone, config)
        history = resumed.fit(train, splits.classnames, out_dir=tmp_path / "run", progress=False)
    assert history["resumed_from_step"] == 5 and torch.equal(resumed.ctx, in_process.ctx)


def test_context_must_leave_room_for_names(backbone):
    assert backbone.context_length == 16
    for method in ("coop", "cocoop"):
        for config in ({"n_ctx": 13, "init": ""}, {"n_ctx": 0, "init": ""}, {"init": " "}):
            with pytest.raises(ClipadaptError, match="do not fit the 16-token prompts"):
                build_method(method, backbone, config)
        build_method(method, backbone, {"n_ctx": 12, "init": ""})


@pytest.mark.parametrize(
    "method, values, problem",
    [
        ("coop", {"select": "best", "n_ctx": 4}, "select must be one of last, val"),
        ("cocoop", {"schedule": "linear"}, "schedule must be one of dassl, cosine_steps"),
        ("clip_adapter", {"optimizer": "adam"}, "optimizer must be one of sgd, adamw"),
        ("tip_adapter", {"batch_size": 0}, "batch_size must be at least 1"),
        ("coop", {"crop_scale": 0.0, "n_ctx": 4}, "crop_scale must lie in"),
        ("coop", {"sched": "dassl", "n_ctx": 4}, "sched"),  # a misspelt key is refused, not defaulted
    ],
)
def test_training_settings_are_checked_for_every_learner(backbone, method, values, problem):
    with pytest.raises(ClipadaptError, match=problem):
        build_method(method, backbone, values)


def test_a_training_fingerprint_holds_every_setting_but_the_ignored_ones():
    """A run's checkpoints resume only under the same fingerprint: any setting that changes what is learned changes
    it, whatever its value; the ignored ones (how the work is batched) and nothing else leave it as it was."""
    from dataclasses import fields, replace

    from clipadapt.methods.coop import CoOp
    from clipadapt.training.prompt_learner import training_fingerprint

    def of(config, classnames=("red", "blue")) -> str:
        return training_fingerprint(config, list(classnames), "coop", ignore=("class_chunk",))

    config = CoOp.Config()
    coop = of(config)
    assert of(replace(config, class_chunk=8)) == coop and of(config, ("red", "green")) != coop
    other_values = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v / 2 + 0.25, str: lambda v: v + "x"}
    for field in fields(config):
        if field.name == "class_chunk":
            continue
        value = getattr(config, field.name)
        changed = object.__new__(CoOp.Config)  # no __post_init__: a value it would refuse still names a setting
        changed.__dict__.update({**config.__dict__, field.name: other_values[type(value)](value)})
        assert of(changed) != coop, field.name
