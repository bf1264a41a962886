"""SHIP: the generator learns to put synthetic features of unseen classes beside their real ones, the MLP
ablation, exact resume, per-batch mixing of synthetic features, METHOD+ship composition, and the base2new run."""

import json

import pytest
import torch
from conftest import flip_last_byte

from clipadapt import ClipadaptError
from clipadapt.cli import main
from clipadapt.features import FeatureSet
from clipadapt.methods import build_method
from clipadapt.methods.addons.ship import Ship, ShipConfig, load_synthesis_sample, nearest_class_accuracy
from clipadapt.methods.coop import CoOp
from clipadapt.training.prompt_learner import train_prompt_learner

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = [f"{c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("star", "square", "circle", "heart")]
BASE = NAMES[0::2]
NEW = NAMES[1::2]
SMALL = {"encoder_hidden": 64, "generator_hidden": 64, "batch_size": 32}


def real_features(backbone, classnames, per_class: int, seed: int) -> FeatureSet:
    """ "Image" features that are the text features of "a photo of a {name}." plus noise (unnormalized, as cached
    features are): a generator that learns the prompt from base classes can produce them for unseen names."""
    with torch.no_grad():
        text = backbone.encode_text(backbone.tokenize([f"a photo of a {c}." for c in classnames]), normalize=True)
    labels = torch.arange(len(classnames)).repeat_interleave(per_class)
    noise = torch.randn(len(labels), text.shape[1], generator=torch.Generator().manual_seed(seed))
    return FeatureSet(3.0 * (text[labels] + 0.05 * noise), labels)


@pytest.mark.parametrize("generator", ["clip_text", "mlp"])
def test_synthetic_features_of_unseen_classes_are_nearest_their_own_class(backbone, generator):
    train, new_real = real_features(backbone, BASE, 16, seed=1), real_features(backbone, NEW, 16, seed=2)
    untrained = Ship(backbone, ShipConfig(**SMALL, generator=generator))
    before = nearest_class_accuracy(untrained.synthesize(NEW, per_class=32, progress=False), new_real)
    ship = Ship(backbone, ShipConfig(**SMALL, generator=generator, epochs=100))
    summary = ship.fit(train, BASE, progress=False)
    after = nearest_class_accuracy(ship.synthesize(NEW, per_class=32, progress=False), new_real)
    assert summary["epoch_losses"][-1] < 0.5 * summary["epoch_losses"][0]
    assert summary["train_classes_nearest_class_accuracy"] > 90
    # chance is 12.5% among the 8 new classes, whose shape words never occur among the base classes: the
    # frozen text encoder carries the generator to them; the MLP generator learns less from the same data.
    assert before < 60 and after > (90 if generator == "clip_text" else 40)


def test_synthesis_is_seeded_and_unit_norm(backbone):
    ship = Ship(backbone, ShipConfig(**SMALL))
    a = ship.synthesize(NEW[:3], per_class=5, progress=False)
    b = ship.synthesize(NEW[:3], per_class=5, chunk=4, progress=False)
    assert a.features.shape == (15, backbone.embed_dim) and a.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.features.norm(dim=-1), torch.ones(15), atol=1e-5, rtol=0)
    assert not torch.allclose(a.features[0], a.features[1])  # each feature has its own z


@pytest.mark.parametrize("damaged", [False, True])
def test_resume_ends_with_the_uninterrupted_weights(backbone, tmp_path, monkeypatch, damaged):
    train = real_features(backbone, BASE, 8, seed=1)
    config = ShipConfig(**{**SMALL, "batch_size": 16}, epochs=4, checkpoint_every=3)
    whole = Ship(backbone, config)
    whole.fit(train, BASE, progress=False)
    calls = {"n": 0}
    interrupted = Ship(backbone, config)
    original = interrupted.loss

    def dies_at_step_7(*args, **kwargs):  # 4 steps an epoch; checkpoints after steps 3, 4 and 6
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(interrupted, "loss", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(train, BASE, out_dir=tmp_path, progress=False)
    if damaged:  # step 6's checkpoint: the run resumes from the one it replaced (step 4)
        flip_last_byte(tmp_path / "checkpoint_last.safetensors")
    resumed = Ship(backbone, config)
    summary = resumed.fit(train, BASE, out_dir=tmp_path, progress=False)
    assert summary["resumed_from_step"] == (4 if damaged else 6)  # 6: mid-epoch
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, atol=1e-6, rtol=0)


def test_every_batch_mixes_real_and_synthetic_features(backbone):
    train = real_features(backbone, BASE, 4, seed=1)  # 32 real features, labels 0..7
    synthetic = FeatureSet(torch.randn(40, backbone.embed_dim), torch.arange(8, 16).repeat_interleave(5))
    seen = []

    def batch_loss(features, labels):
        seen.append(labels.clone())
        return features.sum() * 0 + learner.weight.sum()

    learner = torch.nn.Linear(1, 1)
    config = CoOp.Config(batch_size=8, epochs=2)
    train_prompt_learner(
        learner, batch_loss, backbone, train, config, epochs=2, progress=False, generated=synthetic, generated_ratio=0.5
    )
    assert len(seen) == 8
    for labels in seen:
        assert len(labels) == 12 and (labels[:8] < 8).all() and (labels[8:] >= 8).all()
    assert len({tuple(labels[8:].tolist()) for labels in seen}) > 1  # fresh draws every step


def test_composition_and_its_errors(backbone):
    method = build_method("coop+ship", backbone, {"n_ctx": 4, "ship.kl_weight": 0.5, "ship.epochs": 2}, seed=3)
    assert method.method.config.n_ctx == 4 and method.config.kl_weight == 0.5 and method.config.seed == 3
    with pytest.raises(
        ClipadaptError, match="cannot train on synthesized features; ship works with clip_adapter, coop, tip_adapter"
    ):
        build_method("zeroshot+ship", backbone)
    with pytest.raises(ClipadaptError, match="unknown add-on 'gan'"):
        build_method("coop+gan", backbone)
    with pytest.raises(ClipadaptError, match="generator must be one of"):
        build_method("coop+ship", backbone, {"n_ctx": 4, "ship.generator": "diffusion"})
    with pytest.raises(ClipadaptError, match="no training data"):
        method.fit(real_features(backbone, BASE, 2, seed=1), BASE, progress=False)


def test_coop_ship_base2new_run(colour_world, tmp_path):
    root, weights = colour_world
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "coop+ship",
                "--dataset",
                f"imagefolder:{root}",
                "--pretrained",
                str(weights),
                "--protocol",
                "base2new",
                "--shots",
                "4",
                "--cache",
                str(tmp_path / "cache"),
                "--out",
                str(out),
                "--no-progress",
                "init=a photo of a",
                "epochs=2",
                "batch_size=4",
                "ship.epochs=3",
                "ship.encoder_hidden=32",
                "ship.generator_hidden=32",
                "ship.synthetic_per_class=8",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["ship"]["epochs"] == 3 and metrics["config"]["n_ctx"] == 16
    assert metrics["training"]["synthetic_features"] == 2 * 8 and metrics["training"]["ship"]["steps"] == 3
    assert metrics["training"]["method"]["steps"] == 2 * 2
    assert 0 <= metrics["synthesis"]["nearest_class_accuracy"] <= 100 and metrics["synthesis"]["classes"] == 2
    assert (
        metrics["new_accuracy"] is not None
        and len(list(out.glob("train-*-base-seed1/coop+ship.ship.safetensors"))) == 1
    )
    assert main(["interpret", str(out), "--pretrained", str(weights), "--top", "3"]) == 0
    (words,) = json.loads((out / "interpret.json").read_text()).values()
    assert len(words["prompts"]) == 4 and all(len(row) == 3 for row in words["mean_latent_prompts"])
    # The sample of real and synthetic new-class features that `report` projects, and the report itself.
    (sample_file,) = out.glob("synthesis-*.safetensors")
    real, synthetic, names = load_synthesis_sample(sample_file)
    assert len(names) == 2 and len(synthetic) == 2 * 8 and set(real.labels.tolist()) == {0, 1}
    torch.testing.assert_close(synthetic.features.float().norm(dim=-1), torch.ones(16), atol=2e-3, rtol=0)
    assert main(["report", str(out), "--out", str(tmp_path / "report.html")]) == 0
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "report_files").glob("*.png")) == ["base2new", "synthesis"]
    assert main(["interpret", str(tmp_path / "cache")]) == 2  # no SHIP weights there: a one-line error


def test_gan_objective_trains_generator_and_critic_in_turn(backbone):
    train, new_real = real_features(backbone, BASE, 16, seed=1), real_features(backbone, NEW, 16, seed=2)
    config = ShipConfig(**SMALL, objective="gan", epochs=20, critic_steps=2)
    ship = Ship(backbone, config)
    critic_before = [p.clone() for p in ship.model.critic.parameters()]
    ctx_before = ship.model.ctx.clone()
    # A generator step changes the generator only; a critic step the critic only.
    x, y = train.features[:8], train.labels[:8]
    optimizer = torch.optim.SGD(ship.model.parameters(), lr=0.1)
    ship.gan_loss(x, y, BASE, critic_step=False).backward()
    assert all(p.grad is None for p in ship.model.critic.parameters()) and ship.model.ctx.grad is not None
    optimizer.zero_grad(set_to_none=True)
    ship.gan_loss(x, y, BASE, critic_step=True).backward()
    assert ship.model.ctx.grad is None and all(p.grad is not None for p in ship.model.critic.parameters())
    optimizer.zero_grad(set_to_none=True)
    summary = ship.fit(train, BASE, progress=False)
    assert summary["steps"] == 20 * 4 * 3  # 4 batches an epoch, each served to 2 critic steps and 1 generator step
    assert not torch.equal(ship.model.ctx, ctx_before)
    assert not all(torch.equal(a, b) for a, b in zip(critic_before, ship.model.critic.parameters()))
    assert nearest_class_accuracy(ship.synthesize(NEW, per_class=32, progress=False), new_real) > 25  # chance 12.5
    with pytest.raises(ClipadaptError, match="objective must be one of"):
        Ship(backbone, ShipConfig(objective="flow"))


def test_synthetic_validation_features_join_the_validation_split(backbone, monkeypatch):
    train, val = real_features(backbone, BASE, 4, seed=1), real_features(backbone, BASE, 2, seed=3)
    method = build_method(
        "tip_adapter+ship",
        backbone,
        {
            "ship.epochs": 1,
            "ship.synthetic_val": True,
            "ship.synthetic_per_class": 4,
            **{f"ship.{k}": v for k, v in SMALL.items()},
        },
    )
    seen = {}
    monkeypatch.setattr(method.method, "fit", lambda *args, **kwargs: seen.update(kwargs) or {})
    method.fit(train, BASE, val=val, unseen_classnames=NEW[:3], progress=False)
    labels = seen["val"].labels
    assert len(labels) == len(val) + 3 * 2 and labels[len(val) :].tolist() == [8, 8, 9, 9, 10, 10]
    assert not any(torch.equal(f, g) for f in seen["val"].features[len(val) :] for g in seen["generated"].features)
