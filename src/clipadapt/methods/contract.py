"""The method contract: what each method declares it can do, the interfaces the protocols call, and the registry.

A registered method class has a `Config` dataclass, is built as `Method(backbone, config)` and declares its
`capabilities`; which interface it implements follows from them (`check_method_class` holds a class to it when it
is registered):
- `FeatureMethod` scores cached frozen image features against any list of class names (`logits`); one that `trains`
  also has `fit` on cached features.
- `ImageMethod` tunes its image encoder, so it trains and predicts on images (`fit_images`, `image_logits`).
- Every method that trains saves its learned weights to one safetensors file and loads them back (`save(path,
  **header)`, `load`); the protocols save them after training, as a classifier (`classifier.Classifier.save`: the
  header also says how to rebuild the method and its backbone) to `<name>.safetensors` in the run's training folder.
- A method that `diagnoses` measures something of its own beyond the protocol's numbers: the protocols call
  `diagnose(Evaluated(...))` on each data set they score it on and put what it returns in metrics.json; the
  method's file registers how the report shows it (`views.register_view`).
An add-on (`METHOD+ADDON`, `methods.ADDONS`) wraps a method that `trains_on_generated` and is itself a
`FeatureMethod`. Pretraining (UniCL) builds a backbone rather than classifying with one: `clipadapt pretrain`
runs it, and it is not registered here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from ..errors import ClipadaptError


@dataclass(frozen=True)
class Capabilities:
    """What a method can do. The protocols dispatch on these declarations, never on which attributes a method has."""

    trains: bool = False  # learns from training data (`fit` or `fit_images`), and saves and loads what it learned
    needs_images: bool = False  # trains and predicts on images (`fit_images`, `image_logits`), not cached features
    scores_unseen_classes: bool = True  # scores class names it was not trained on (else: base2new's base only)
    trains_on_generated: bool = (
        False  # `fit(..., generated=, generated_ratio=)`: what an add-on (`METHOD+ADDON`) feeds it
    )
    uses_unseen_classnames: bool = False  # `fit(..., unseen_classnames=)`: the names (never the images) of the
    # classes the protocol tests without training data
    diagnoses: bool = False  # `diagnose(evaluated)`: what it measures of its own on each data set a protocol scores
    # it on, as named results beside the protocol's numbers in metrics.json (`views.DiagnosticView` shows them)


@dataclass(frozen=True)
class Claim:
    """A direction its paper reports for a method: under `protocol`, the method's `metric` (a metrics.json key) lies
    above (`direction` +1) or below (-1) the `baseline` method's on the same data set; `min_shots`: only for runs of
    at least that many shots. `source`: where the paper shows it. The report checks each claim against the runs it
    is given (`summary.py`); a method declares its own as `claims`."""

    protocol: str
    metric: str
    baseline: str
    direction: int
    source: str
    min_shots: int = 0


@dataclass(frozen=True)
class Evaluated:
    """What a method's `diagnose` hook is given: a data set a protocol has just scored it on. `splits` (a
    `DatasetSplits`): its class names, its test split and what else the data set knows (`annotations`);
    `test_features()`: the test split's cached frozen image features (a `FeatureSet`); `out_dir`: the run folder,
    where a diagnostic may leave the data of a figure (None: write nothing)."""

    splits: Any
    test_features: Callable[[], Any]
    out_dir: Path | None = None
    progress: bool = True


class Method(Protocol):
    name: ClassVar[str]  # the registered name (`clipadapt run NAME`)
    capabilities: Capabilities
    config: Any


class FeatureMethod(Method, Protocol):
    def logits(
        self, features: torch.Tensor, classnames: Sequence[str], template_key: str | None = None
    ) -> torch.Tensor:
        """[N, len(classnames)] scores of cached image features [N, D]."""
        ...


class TrainedFeatureMethod(FeatureMethod, Protocol):
    def fit(
        self,
        train: Any,
        classnames: Sequence[str],
        val: Any = None,
        template_key: str | None = None,
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> dict:
        """Learn from cached features (a `FeatureSet`); checkpoints go to `out_dir`, and a rerun resumes from them.
        Returns the training summary that metrics.json holds under `training`."""
        ...

    def save(self, path: str | Path, **header: Any) -> None: ...

    def load(self, path: str | Path) -> None: ...


class ImageMethod(Method, Protocol):
    def fit_images(
        self, splits: Any, out_dir: str | Path | None = None, progress: bool = True, num_workers: int = 0
    ) -> dict:
        """Learn from the train split's images (a `DatasetSplits`)."""
        ...

    def image_logits(
        self,
        samples: Sequence[Any],
        classnames: Sequence[str],
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
    ) -> torch.Tensor:
        """[N, len(classnames)] scores of the samples' images."""
        ...

    def image_transform(self) -> Callable:
        """The preprocessing (PIL image -> tensor) of the images `batch_logits` scores."""
        ...

    def batch_logits(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C] scores over the training classes of preprocessed images [B, 3, H, W]: what a saved classifier
        runs on new images."""
        ...

    def save(self, path: str | Path, **header: Any) -> None: ...

    def load(self, path: str | Path) -> None: ...


def required_members(capabilities: Capabilities) -> list[str]:
    """The callables a method with these capabilities must have."""
    members = (
        ["fit_images", "image_logits", "image_transform", "batch_logits"] if capabilities.needs_images else ["logits"]
    )
    if capabilities.trains:
        members += ([] if capabilities.needs_images else ["fit"]) + ["save", "load"]
    if capabilities.diagnoses:
        members.append("diagnose")
    return members


def check_method_class(cls: type, name: str) -> None:
    """Hold a class to the contract its capabilities declare: a clear error at registration, not a missing
    attribute in the middle of a run."""
    capabilities = getattr(cls, "capabilities", None)
    if not isinstance(capabilities, Capabilities):
        raise ClipadaptError(f"method '{name}' ({cls.__name__}) must declare `capabilities = Capabilities(...)`")
    if not isinstance(getattr(cls, "Config", None), type):
        raise ClipadaptError(f"method '{name}' ({cls.__name__}) must have a Config dataclass")
    missing = [member for member in required_members(capabilities) if not callable(getattr(cls, member, None))]
    if capabilities.needs_images and not capabilities.trains:
        missing.append("(a method that needs images trains: capabilities.trains)")
    fit_parameters = inspect.signature(cls.fit).parameters if callable(getattr(cls, "fit", None)) else {}
    for flag, parameter in (("trains_on_generated", "generated"), ("uses_unseen_classnames", "unseen_classnames")):
        if getattr(capabilities, flag) and parameter not in fit_parameters:
            missing.append(f"fit(..., {parameter}=) for {flag}")
    save = getattr(cls, "save", None)
    if capabilities.trains and callable(save):
        kinds = {p.kind for p in inspect.signature(save).parameters.values()}
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            missing.append("save(path, **header): a saved classifier adds its description to the header")
    if missing:
        raise ClipadaptError(
            f"method '{name}' ({cls.__name__}) declares {capabilities} but lacks: {', '.join(missing)}"
        )


METHODS: dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Register a method class under `name` (its `name` attribute too) once it meets the contract its
    capabilities declare; a name already taken is an error, not a silent replacement."""

    def register(cls: type) -> type:
        if name in METHODS:
            raise ClipadaptError(f"method name '{name}' is already registered (by {METHODS[name].__qualname__})")
        if "+" in name:
            raise ClipadaptError(f"method name '{name}': '+' joins a method and an add-on (METHOD+ADDON)")
        check_method_class(cls, name)
        cls.name = name
        METHODS[name] = cls
        return cls

    return register
