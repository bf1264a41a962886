"""The method and protocol contracts: registration checks, a method defined here run through every protocol it
declares, every registered method's weights saved and loaded back, and a protocol defined here run and reported."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from conftest import COLOURS, TEMPLATE, colour_images

from clipadapt import ClipadaptError, load_backbone
from clipadapt.checkpoint import load_method_weights, save_method_weights
from clipadapt.cli import main
from clipadapt.data import load_dataset
from clipadapt.errors import CheckpointError
from clipadapt.methods import METHODS, build_method, register_method
from clipadapt.methods.contract import Capabilities, Evaluated
from clipadapt.protocols import (
    PROTOCOL_SPECS,
    PROTOCOLS,
    ProtocolSpec,
    RunContext,
    evaluate_accuracy,
    protocol_shots,
    register_protocol,
    run_protocol,
)
from clipadapt.text import zeroshot_weights
from clipadapt.views import DIAGNOSTIC_VIEWS, Column, DiagnosticView, ReportTable, Table, register_view

NAME = "test_text_mean"


class TextMean:
    """Each class's weight is its prompt's text embedding plus, for a class it trained on, the mean of its normalized
    training (and generated) features: it scores any class name, and training moves the classes it saw."""

    capabilities = Capabilities(trains=True, trains_on_generated=True)

    @dataclass
    class Config:
        mix: float = 1.0  # weight of the class mean beside the text embedding

    def __init__(self, backbone, config: TextMean.Config):
        self.backbone, self.config = backbone, config
        self.means: dict[str, torch.Tensor] = {}

    def fit(
        self,
        train,
        classnames,
        val=None,
        template_key=None,
        out_dir=None,
        progress=True,
        generated=None,
        generated_ratio=1.0,
    ) -> dict:
        features, labels = train.features.float(), train.labels
        if generated is not None:
            features = torch.cat([features, generated.features.float()])
            labels = torch.cat([labels, generated.labels])
        features = F.normalize(features, dim=-1)
        self.means = {name: features[labels == c].mean(0) for c, name in enumerate(classnames) if (labels == c).any()}
        return {"classes": len(self.means)}

    @torch.no_grad()
    def logits(self, features, classnames, template_key=None) -> torch.Tensor:
        text = zeroshot_weights(self.backbone, list(classnames), [TEMPLATE]).float()
        means = [self.means.get(name, torch.zeros_like(text[0])) for name in classnames]
        weights = F.normalize(text + self.config.mix * torch.stack(means).to(text), dim=-1)
        return 100 * F.normalize(features.float().to(weights), dim=-1) @ weights.T

    def save(self, path, **header) -> None:
        save_method_weights(
            path, {"means": torch.stack(list(self.means.values()))}, NAME, self.config, names=list(self.means), **header
        )

    def load(self, path) -> None:
        tensors, metadata = load_method_weights(path, NAME)
        self.means = dict(zip(metadata["names"], tensors["means"]))


@pytest.fixture
def registered():
    register_method(NAME)(TextMean)
    yield
    METHODS.pop(NAME, None)


def test_registration_refuses_a_second_name_and_a_class_that_breaks_its_declarations(registered):
    with pytest.raises(ClipadaptError, match=f"'{NAME}' is already registered"):
        register_method(NAME)(TextMean)

    def declaring(capabilities, *members):
        namespace = {"capabilities": capabilities, "Config": TextMean.Config}
        namespace.update({member: getattr(TextMean, member) for member in members})
        return type("Broken", (), namespace)

    cases = [
        (type("Broken", (), {"Config": TextMean.Config, "logits": TextMean.logits}), "must declare `capabilities"),
        (declaring(Capabilities(trains=True), "fit", "logits"), "lacks: save, load"),
        (declaring(Capabilities(needs_images=True, trains=True), "logits", "save", "load"), "fit_images, image_logits"),
        (
            declaring(Capabilities(trains=True, uses_unseen_classnames=True), "fit", "logits", "save", "load"),
            "fit\\(..., unseen_classnames=\\) for uses_unseen_classnames",
        ),
        (declaring(Capabilities(diagnoses=True), "logits"), "lacks: diagnose"),
    ]
    for cls, message in cases:
        with pytest.raises(ClipadaptError, match=message):
            register_method("test_broken")(cls)
        assert "test_broken" not in METHODS
    with pytest.raises(ClipadaptError, match="'\\+' joins a method and an add-on"):
        register_method("a+b")(TextMean)
    # What the registry offers follows the declarations: a method that trains on generated features takes SHIP.
    assert build_method(f"{NAME}+ship", load_backbone("micro-vit")).capabilities.diagnoses


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    # Two of the source's colours, drawn afresh, whose zero-shot answer is known, and one the source lacks (what
    # SHIP synthesizes for): at least two thirds right.
    colours = {"yellow": COLOURS["yellow"], "red": COLOURS["red"], "cyan": (30, 210, 220)}
    return colour_images(tmp_path_factory.mktemp("target"), {"test": 3}, colours, seed=5)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_method_defined_here_runs_through_every_protocol(protocol, registered, colour_world, target, tmp_path):
    root, weights = colour_world
    backbone = load_backbone(None, weights)
    splits = load_dataset(f"imagefolder:{root}")
    options = {
        "fewshot": {"shots": 2},
        "base2new": {"shots": 2},
        "crossdataset": {"targets": [f"imagefolder:{target}"], "shots": 2},
    }
    names = [NAME, f"{NAME}+ship"] if protocol in ("base2new", "gzsl", "crossdataset") else [NAME]
    for name in names:
        out = tmp_path / name
        method = build_method(name, backbone, {"ship.epochs": 2, "ship.batch_size": 4} if "+" in name else {})
        ctx = RunContext(backbone, cache_dir=tmp_path / "cache", out_dir=out, progress=False)
        result = run_protocol(protocol, method, ctx, splits, **options.get(protocol, {}))
        headline = {
            "full": "accuracy",
            "fewshot": "accuracy",
            "base2new": "harmonic_mean",
            "gzsl": "harmonic_mean",
            "crossdataset": "average_target_accuracy",
        }[protocol]
        # The colour world's zero-shot answer is right and the class means keep it so: far above chance (25%).
        assert result[headline] > 60, (name, result)
        assert result["training"]["classes" if name == NAME else "method"]
        (saved,) = out.glob(f"train-*/{name}.safetensors")
        if name.endswith("+ship"):
            scored = next(iter(result["targets"].values())) if protocol == "crossdataset" else result
            assert scored["synthesis"]["classes"] >= 1 and saved.with_name(f"{name}.ship.safetensors").is_file()
        # What the protocol saved scores test features as the trained method does.
        reloaded = build_method(name, backbone)
        reloaded.load(saved)
        features = torch.randn(5, backbone.embed_dim)
        torch.testing.assert_close(
            reloaded.logits(features, splits.classnames), method.logits(features, splits.classnames)
        )


FAST = {
    "coop": {"n_ctx": 4, "epochs": 2},
    "cocoop": {"n_ctx": 2, "init": "", "epochs": 1},
    "clip_adapter": {"epochs": 2},
    "tip_adapter": {"finetune": True, "epochs": 2, "select": "last", "beta_steps": 4, "alpha_steps": 4},
    "linear_probe": {},
}


def test_every_registered_method_that_trains_is_covered_here():
    trained = {name for name, cls in METHODS.items() if cls.capabilities.trains}
    # The methods that train on images save and load in test_mpfgvc.py, with a fitted model of their own.
    assert trained - {name for name, cls in METHODS.items() if cls.capabilities.needs_images} == set(FAST)


@pytest.mark.parametrize("name", sorted(FAST))
def test_a_trained_method_saves_and_loads_its_weights(name, colour_world, tmp_path, one_thread):
    root, weights = colour_world
    backbone = load_backbone(None, weights)
    splits = load_dataset(f"imagefolder:{root}")
    method = build_method(name, backbone, FAST[name])
    ctx = RunContext(backbone, cache_dir=tmp_path / "cache", out_dir=tmp_path / "run", progress=False)
    run_protocol("fewshot", method, ctx, splits, shots=2)
    (saved,) = (tmp_path / "run").glob(f"train-*/{name}.safetensors")
    fresh = build_method(name, backbone, FAST[name])
    features = ctx.features(splits, "test").features
    fresh.load(saved)
    torch.testing.assert_close(fresh.logits(features, splits.classnames), method.logits(features, splits.classnames))
    other = next(n for n in FAST if n != name)
    with pytest.raises(CheckpointError, match=f"holds no {other} weights"):
        build_method(other, backbone, FAST[other]).load(saved)


def run_on_train_images(method, ctx, splits, seed, **_) -> dict:
    """A protocol defined here: zero-shot scoring of the train images (what a memorization check looks like)."""
    return {"train_accuracy": evaluate_accuracy(method, ctx, replace(splits, test=splits.train))["accuracy"]}


@pytest.fixture
def train_protocol():
    table = ReportTable(
        "On the train images",
        (Column("method", "method"), Column("data set", "dataset"), Column("train", key="train_accuracy")),
        position=9,
    )
    spec = register_protocol(ProtocolSpec("test_train", run_on_train_images, table, ("train_accuracy",)))
    yield spec
    PROTOCOL_SPECS.pop(spec.name)


def test_a_protocol_registered_here_runs_from_the_command_line_and_reports(train_protocol, colour_world, tmp_path):
    root, weights = colour_world
    with pytest.raises(ClipadaptError, match="'test_train' is already registered"):
        register_protocol(train_protocol)
    with pytest.raises(ClipadaptError, match="--shots is for fewshot, base2new and crossdataset"):
        protocol_shots("test_train", shots=4)
    common = ["--dataset", f"imagefolder:{root}", "--pretrained", str(weights), "--cache", str(tmp_path / "cache")]
    argv = ["run", "zeroshot", "--protocol", "test_train", *common, "--no-progress", "templates=" + TEMPLATE]
    assert main([*argv, "--out", str(tmp_path / "runs" / "train")]) == 0
    assert main(["run", "zeroshot", "--protocol", "full", *common, "--out", str(tmp_path / "runs" / "full")]) == 0
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report.html")]) == 0
    tables = (tmp_path / "report.md").read_text()
    # Its own table, after the built-in ones (position 9), with the column it declares: the colour world's
    # zero-shot answer is right on the train images too.
    assert tables.index("### Accuracy on all classes") < tables.index("### On the train images")
    assert "| method | data set | train |" in tables
    assert f"| zeroshot | imagefolder:{root} | 100.0 |" in tables


class TextMeanWithMargin(TextMean):
    """TextMean that measures something of its own: how far each test image's right class scores above the best
    wrong one (`margin`), as a diagnostic, with a column in the full protocol's table and a table of its own."""

    capabilities = Capabilities(trains=True, diagnoses=True)

    def diagnose(self, evaluated: Evaluated) -> dict:
        test = evaluated.test_features()
        logits = self.logits(test.features, evaluated.splits.classnames)
        right = logits.gather(1, test.labels[:, None]).squeeze(1)
        wrong = logits.scatter(1, test.labels[:, None], float("-inf")).amax(dim=1)
        return {
            "margin": {"mean": (right - wrong).mean().item(), "positive": 100.0 * (right > wrong).float().mean().item()}
        }


def margin_table(runs) -> list[Table]:
    rows = [[run.method, f"{run.metrics['margin']['mean']:.2f}"] for run in runs if "margin" in run.metrics]
    return [Table("Margins of the right class", ["method", "mean margin"], rows)] if rows else []


@pytest.fixture
def diagnosing():
    register_method("test_margin")(TextMeanWithMargin)
    register_view(
        DiagnosticView(
            "margin",
            position=5,
            columns=(("full", Column("right above wrong (%)", "pair", "margin.positive", "margin.mean")),),
            tables=margin_table,
        )
    )
    yield
    METHODS.pop("test_margin", None)
    DIAGNOSTIC_VIEWS.pop("margin", None)


def test_a_method_with_a_diagnostic_of_its_own_reaches_metrics_and_the_report(diagnosing, colour_world, tmp_path):
    """Defined and registered here alone: its diagnostic lands in metrics.json beside the protocol's numbers, as a
    column of the protocol's table and as its own table in the report."""
    root, weights = colour_world
    with pytest.raises(ClipadaptError, match="view of diagnostic 'margin' is already registered"):
        register_view(DiagnosticView("margin", position=5))
    common = ["--dataset", f"imagefolder:{root}", "--pretrained", str(weights), "--cache", str(tmp_path / "cache")]
    for method in ("test_margin", "zeroshot"):
        argv = ["run", method, "--protocol", "full", *common, "--no-progress", "--out", str(tmp_path / "runs" / method)]
        assert main(argv) == 0
    margin = json.loads((tmp_path / "runs" / "test_margin" / "metrics.json").read_text())["margin"]
    # The colour world's classes are told apart: the right class wins on most test images, by a clear margin.
    assert margin["positive"] > 60 and margin["mean"] > 0
    assert "margin" not in json.loads((tmp_path / "runs" / "zeroshot" / "metrics.json").read_text())
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report.html")]) == 0
    tables = (tmp_path / "report.md").read_text()
    assert "| per-class accuracy | right above wrong (%) |" in tables
    assert f"| {margin['positive']:.1f} ({margin['mean']:.1f}) |" in tables and "| - |" in tables
    assert "### Margins of the right class" in tables and f"| test_margin | {margin['mean']:.2f} |" in tables


def test_diagnostics_may_not_replace_the_protocols_numbers(colour_world, tmp_path):
    class Clashing(TextMeanWithMargin):
        def diagnose(self, evaluated: Evaluated) -> dict:
            return {"accuracy": 100.0}

    root, weights = colour_world
    backbone = load_backbone(None, weights)
    ctx = RunContext(backbone, cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(ClipadaptError, match="would replace the run's accuracy"):
        run_protocol("full", Clashing(backbone, Clashing.Config()), ctx, load_dataset(f"imagefolder:{root}"))
