"""Evaluation protocols and their metrics. All accuracies are in percent.

A protocol decides which samples a method trains on and which class names it is scored against:
- `full`: train on the whole train split, test on all classes.
- `fewshot`: CoOp's k-shot subset of train (val gets min(k, 4) per class), test on all classes.
- `base2new`: CoOp's split of the sorted classes in halves; train on k-shot base (16 by default), report base
  accuracy among base classes, new accuracy among new classes, and their harmonic mean.
- `gzsl`: train on the seen classes' full train split; test images of all classes are classified over the joint
  label space; per-class mean accuracy on seen and on unseen classes, and their harmonic mean H.
- `crossdataset`: train on a source data set, test on the source and on each target with its own class names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .classifier import Classifier
from .data import DatasetSplits, base_new_split, fewshot, load_dataset, select_classes
from .errors import ClipadaptError
from .features import FeatureSet, default_cache_dir, extract_features
from .methods import build_method, method_config
from .methods.contract import Evaluated, FeatureMethod, ImageMethod
from .paths import write_text_atomic
from .text import read_names
from .training.batches import decoding_workers
from .views import Column, ReportTable

# What the protocols run: they dispatch on its `capabilities`.
AnyMethod = FeatureMethod | ImageMethod


# ---- metrics -----------------------------------------------------------------------------------------------
def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    if len(labels) == 0:
        raise ClipadaptError("accuracy of an empty test set is undefined")
    return 100.0 * (predictions == labels).float().mean().item()


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, classes: Sequence[int] | None = None) -> float:
    """Mean over classes of each class's accuracy (percent), over `classes` (default: the labels present)."""
    classes = sorted(set(labels.tolist())) if classes is None else list(classes)
    per_class = [accuracy(predictions[labels == c], labels[labels == c]) for c in classes if (labels == c).any()]
    if not per_class:
        raise ClipadaptError("per-class accuracy needs at least one test sample of the given classes")
    return sum(per_class) / len(per_class)


def attribute_accuracy(
    predictions: torch.Tensor, labels: torch.Tensor, class_attributes: Sequence[dict[str, str]]
) -> dict[str, float]:
    """Per attribute (colour, shape, ...), the percentage of predictions whose class has the true class's value:
    on composed class names this separates "got the colour right" from "got the composition right"."""
    names = sorted({key for attributes in class_attributes for key in attributes})
    return {
        name: 100.0
        * sum(
            class_attributes[p].get(name) == class_attributes[t].get(name)
            for p, t in zip(predictions.tolist(), labels.tolist())
        )
        / len(labels)
        for name in names
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (as `aggregate_seeds`; the cells of comparison tables)."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean of two accuracies in percent (0 when either is 0), as base/new HM and GZSL H."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


# ---- running a method under a protocol ---------------------------------------------------------------------
@dataclass
class RunContext:
    """What a protocol needs besides the method: how to get features, and run-level options."""

    backbone: object
    cache_dir: Path | None = None
    out_dir: Path | None = None  # the run folder: methods write checkpoints under it and resume from them
    batch_size: int = 64
    num_workers: int = 0
    progress: bool = True
    # How a protocol loads the other data sets it names (cross-data-set targets): the CLI's loader also drops
    # unreadable images under --skip-bad-images, as it does for --dataset.
    dataset_loader: Callable[[str], DatasetSplits] = load_dataset
    # How k-shot subsets are drawn (`FEWSHOT_SAMPLERS`): "dassl" gives the images CoOp's code gives for a seed.
    fewshot_sampler: str = "clipadapt"

    def features(self, splits: DatasetSplits, split: str) -> FeatureSet:
        samples = splits.split(split)
        if not samples:
            raise ClipadaptError(f"data set '{splits.name}' has no {split} samples")
        return extract_features(
            self.backbone,
            samples,
            cache_dir=self.cache_dir,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            progress=self.progress,
            desc=f"{splits.name}/{split}",
        )


def fit_method(
    method: AnyMethod,
    ctx: RunContext,
    splits: DatasetSplits,
    shots: int | None = None,
    seed: int = 1,
    unseen_classnames: Sequence[str] = (),
    whole: DatasetSplits | None = None,
) -> dict | None:
    """Train `method` on `splits` (on its k-shot subset when `shots` is given; `whole`: the data set `splits`' classes
    were taken from, see `fewshot_subset`), save it as a classifier of the training classes to
    `<run folder>/train-<data set>-seed<seed>/<method>.safetensors` (`clipadapt predict` and `load_classifier` read
    it), and return its training summary. Nothing is sampled or extracted for a method that does not train (its
    classifier is saved all the same). A method that `uses_unseen_classnames` also gets the names of the classes
    the protocol will test without training data: names only, never their images."""
    capabilities = method.capabilities
    if shots and capabilities.trains:
        splits = fewshot_subset(ctx, splits, shots, seed, whole)
    out_dir = Path(ctx.out_dir) / f"train-{splits.name}-seed{seed}" if ctx.out_dir else None
    classifier = classifier_of(method, ctx.backbone, splits, seed, shots)
    if not capabilities.trains:
        if out_dir is not None:
            classifier.save(out_dir / f"{method.name}.safetensors")
        return None
    if capabilities.needs_images:  # tunes its image encoder: trains on the images themselves
        summary = method.fit_images(splits, out_dir=out_dir, progress=ctx.progress, num_workers=ctx.num_workers)
    else:
        val = ctx.features(splits, "val") if splits.val else None
        extra = {}
        if capabilities.uses_unseen_classnames:
            extra["unseen_classnames"] = [n for n in dict.fromkeys(unseen_classnames) if n not in splits.classnames]
        with decoding_workers(ctx.num_workers):  # augment=true training decodes in workers too
            summary = method.fit(
                ctx.features(splits, "train"),
                splits.classnames,
                val=val,
                template_key=splits.template_key,
                out_dir=out_dir,
                progress=ctx.progress,
                **extra,
            )
    if out_dir is not None:  # what was learned, as a classifier `load_classifier` rebuilds from the file alone
        classifier.save(out_dir / f"{method.name}.safetensors")
    return summary


def classifier_of(
    method: AnyMethod, backbone, splits: DatasetSplits, seed: int, shots: int | None = None
) -> Classifier:
    """`method` on `backbone`, trained (by `fit_method`) on `splits` with `seed` and `shots`, as a classifier of its
    classes."""
    trained_on = {"dataset": splits.name, "seed": seed, "shots": shots if method.capabilities.trains else None}
    return Classifier(method, backbone, splits.classnames, splits.template_key, trained_on)


def with_training(result: dict, summary: dict | None) -> dict:
    return {**result, "training": summary} if summary is not None else result


PREDICT_ELEMENTS = 1 << 26  # logits held at once while scoring test features (256 MB of float32)


def predict(
    method: AnyMethod,
    ctx: RunContext,
    splits: DatasetSplits,
    classnames: Sequence[str] | None = None,
    split: str = "test",
) -> tuple[torch.Tensor, torch.Tensor]:
    classnames = list(classnames or splits.classnames)
    if method.capabilities.needs_images:  # a tuned image encoder: frozen cached features do not apply
        samples = splits.split(split)
        if not samples:
            raise ClipadaptError(f"data set '{splits.name}' has no {split} samples")
        logits = method.image_logits(
            samples, classnames, batch_size=ctx.batch_size, num_workers=ctx.num_workers, progress=ctx.progress
        )
        return logits.argmax(dim=-1).cpu(), torch.tensor([s.label for s in samples])
    scored = ctx.features(splits, split)
    # Scored in blocks of rows, so that the logits of many test images over many classes (50,000 x 21,000 would
    # be 4 GB) never exist at once.
    rows = max(1, PREDICT_ELEMENTS // max(1, len(classnames)))
    predictions = [
        method.logits(block, classnames, template_key=splits.template_key).argmax(dim=-1).cpu()
        for block in scored.features.split(rows)
    ]
    return torch.cat(predictions), scored.labels


def evaluate_accuracy(method: AnyMethod, ctx: RunContext, splits: DatasetSplits, split: str = "test") -> dict:
    predictions, labels = predict(method, ctx, splits, split=split)
    result = {
        "accuracy": accuracy(predictions, labels),
        "per_class_accuracy": per_class_accuracy(predictions, labels),
        "num_classes": len(splits.classnames),
    }
    attributes = splits.annotations.get("class_attributes")
    if attributes:
        result["attribute_accuracy"] = attribute_accuracy(predictions, labels, attributes)
    return result


def run_full(method: AnyMethod, ctx: RunContext, splits: DatasetSplits, seed: int, **_) -> dict:
    summary = fit_method(method, ctx, splits, seed=seed)
    result = evaluate_accuracy(method, ctx, splits)
    if splits.val:  # what a choice between configurations is made on (never the test accuracy)
        result["val_accuracy"] = evaluate_accuracy(method, ctx, splits, "val")["accuracy"]
    return with_training(with_diagnostics(result, method, ctx, splits), summary)


# What metrics.json holds besides a protocol's own numbers: the run's description (`clipadapt run`, the demo), the
# training summary and the seeds' numbers. A diagnostic of that name would replace it.
RUN_KEYS = frozenset(
    {"method", "dataset", "protocol", "shots", "fewshot_sampler", "seed", "seconds", "model", "pretrained", "config"}
    | {"skipped_images", "training", "per_seed"}
)


def with_diagnostics(result: dict, method: AnyMethod, ctx: RunContext, splits: DatasetSplits) -> dict:
    """`result` with what a method that `diagnoses` measures of its own on `splits`, the data set just scored (its
    `diagnose` hook; named results beside the protocol's numbers, which they may not replace, nor `RUN_KEYS`)."""
    if not method.capabilities.diagnoses:
        return result
    evaluated = Evaluated(splits, lambda: ctx.features(splits, "test"), ctx.out_dir, ctx.progress)
    found = method.diagnose(evaluated)
    clashing = sorted(set(found) & (set(result) | RUN_KEYS))
    if clashing:
        raise ClipadaptError(f"{method.name}'s diagnostics would replace the run's {', '.join(clashing)}")
    return {**result, **found}


def fewshot_subset(
    ctx: RunContext, splits: DatasetSplits, shots: int, seed: int, whole: DatasetSplits | None = None
) -> DatasetSplits:
    """The k-shot subset of `splits`, drawn by `ctx.fewshot_sampler`. With "dassl", a subset of `whole`'s classes
    (base-to-new's base half) is drawn over every class of `whole` and then restricted, as CoOp draws before it
    keeps the base half: only so are the images Dassl's for the seed."""
    cache_dir, sampler = _split_cache(ctx), ctx.fewshot_sampler
    if sampler != "dassl" or whole is None:
        return fewshot(splits, shots, seed, cache_dir=cache_dir, sampler=sampler)
    drawn = fewshot(whole, shots, seed, cache_dir=cache_dir, sampler=sampler)
    kept = select_classes(drawn, [whole.classnames.index(name) for name in splits.classnames], "")
    return replace(splits, train=kept.train, val=kept.val)


def run_fewshot(method: AnyMethod, ctx: RunContext, splits: DatasetSplits, shots: int, seed: int, **_) -> dict:
    summary = fit_method(method, ctx, splits, shots, seed)
    return with_training(with_diagnostics(evaluate_accuracy(method, ctx, splits), method, ctx, splits), summary)


def run_base2new(method: AnyMethod, ctx: RunContext, splits: DatasetSplits, shots: int, seed: int, **_) -> dict:
    base, new = base_new_split(splits)
    summary = fit_method(method, ctx, base, shots, seed, unseen_classnames=new.classnames, whole=splits)
    base_result = evaluate_accuracy(method, ctx, base)
    base_acc = base_result["accuracy"]
    counts = {
        "num_classes": len(splits.classnames),
        "num_base_classes": len(base.classnames),
        "num_new_classes": len(new.classnames),
    }
    if not method.capabilities.scores_unseen_classes:  # e.g. a linear probe: base numbers only
        result = {"base_accuracy": base_acc, "new_accuracy": None, "harmonic_mean": None, **counts}
        if "attribute_accuracy" in base_result:
            result["attribute_accuracy"] = {"base": base_result["attribute_accuracy"]}
        return with_training(result, summary)
    new_result = evaluate_accuracy(method, ctx, new)
    new_acc = new_result["accuracy"]
    result = {
        "base_accuracy": base_acc,
        "new_accuracy": new_acc,
        "harmonic_mean": harmonic_mean(base_acc, new_acc),
        **counts,
    }
    if "attribute_accuracy" in base_result:
        result["attribute_accuracy"] = {
            "base": base_result["attribute_accuracy"],
            "new": new_result["attribute_accuracy"],
        }
    return with_training(with_diagnostics(result, method, ctx, new), summary)


def gzsl_classes(splits: DatasetSplits, unseen: str | Sequence[str] | None) -> list[int]:
    """Labels of the unseen classes: the listed names (a comma list, or a file with one name a line), or by
    default the new half of CoOp's base/new split."""
    if not unseen:
        return list(range(math.ceil(len(splits.classnames) / 2), len(splits.classnames)))
    names = read_names(unseen)
    missing = [n for n in names if n not in splits.classnames]
    if missing:
        raise ClipadaptError(f"unseen class(es) not in data set '{splits.name}': {', '.join(missing[:5])}")
    return sorted({splits.classnames.index(n) for n in names})  # a name listed twice is one class


def _check_scores_unseen(method: AnyMethod, protocol: str) -> None:
    if not method.capabilities.scores_unseen_classes:
        raise ClipadaptError(
            f"{method.name} scores only the classes it was trained on: it has no "
            f"{protocol} numbers (base2new reports its base accuracy)"
        )


def run_gzsl(
    method: AnyMethod, ctx: RunContext, splits: DatasetSplits, seed: int, unseen: str | None = None, **_
) -> dict:
    _check_scores_unseen(method, "gzsl")
    unseen_labels = gzsl_classes(splits, unseen)
    unseen_set = set(unseen_labels)
    seen_labels = [c for c in range(len(splits.classnames)) if c not in unseen_set]
    if not seen_labels or not unseen_labels:
        raise ClipadaptError("gzsl needs at least one seen and one unseen class")
    # Train on seen classes only (relabelled 0..S-1); test over the joint space of every class name.
    seen = select_classes(splits, seen_labels, "-seen")
    summary = fit_method(method, ctx, seen, seed=seed, unseen_classnames=[splits.classnames[c] for c in unseen_labels])
    predictions, labels = predict(method, ctx, splits)
    seen_acc = per_class_accuracy(predictions, labels, seen_labels)
    unseen_acc = per_class_accuracy(predictions, labels, unseen_labels)
    result = {
        "seen_accuracy": seen_acc,
        "unseen_accuracy": unseen_acc,
        "harmonic_mean": harmonic_mean(seen_acc, unseen_acc),
        "num_classes": len(splits.classnames),
        "num_seen_classes": len(seen_labels),
        "num_unseen_classes": len(unseen_labels),
    }
    attributes = splits.annotations.get("class_attributes")
    if attributes:
        is_unseen = torch.isin(labels, torch.tensor(unseen_labels))
        result["attribute_accuracy"] = {
            part: attribute_accuracy(predictions[mask], labels[mask], attributes)
            for part, mask in (("seen", ~is_unseen), ("unseen", is_unseen))
        }
    return with_training(with_diagnostics(result, method, ctx, splits), summary)


def run_crossdataset(
    method: AnyMethod, ctx: RunContext, splits: DatasetSplits, shots: int, seed: int, targets: Sequence[str], **_
) -> dict:
    _check_scores_unseen(method, "crossdataset")
    target_splits = {spec: ctx.dataset_loader(spec) for spec in dict.fromkeys(targets)}  # each target once
    target_names = [name for target in target_splits.values() for name in target.classnames]
    summary = fit_method(method, ctx, splits, shots, seed, unseen_classnames=target_names)
    result = with_training(evaluate_accuracy(method, ctx, splits), summary)
    result["targets"] = {
        spec: with_diagnostics(evaluate_accuracy(method, ctx, target), method, ctx, target)
        for spec, target in target_splits.items()
    }
    result["average_target_accuracy"] = sum(t["accuracy"] for t in result["targets"].values()) / len(target_splits)
    return result


# ---- the registry: how each protocol runs, which options it takes and how the report shows it ------------------
@dataclass(frozen=True)
class ProtocolSpec:
    """A protocol: `run(method, ctx, splits, seed=, shots=, targets=, unseen=)` returns its numbers; `shots` is
    `never` (it trains on every train image), `optional` (`default_shots` without --shots) or `required`;
    `options` are the other command-line options it takes (`targets`, `unseen`), `required_options` those it
    needs; `summary` the metrics.json keys `clipadapt run` prints; `table` where the report shows its runs."""

    name: str
    run: Callable[..., dict]
    table: ReportTable
    summary: tuple[str, ...]
    shots: str = "never"
    default_shots: int | None = None
    options: tuple[str, ...] = ()
    required_options: tuple[str, ...] = ()


PROTOCOL_SPECS: dict[str, ProtocolSpec] = {}
OPTION_USAGE = {"shots": "--shots K", "targets": "--targets SPEC[,SPEC...]", "unseen": "--unseen NAMES"}


def register_protocol(spec: ProtocolSpec) -> ProtocolSpec:
    """Add a protocol (a second one of the same name is an error)."""
    if spec.name in PROTOCOL_SPECS:
        raise ClipadaptError(f"protocol '{spec.name}' is already registered")
    if spec.shots not in ("never", "optional", "required") or not set(spec.options) <= {"targets", "unseen"}:
        raise ClipadaptError(
            f"protocol '{spec.name}': shots must be never, optional or required; options targets, unseen"
        )
    PROTOCOL_SPECS[spec.name] = spec
    return spec


def _lead(*kinds: str, dataset: str = "data set") -> tuple[Column, ...]:
    headers = {"method": "method", "dataset": dataset, "protocol": "protocol", "shots": "shots", "seeds": "seeds"}
    return tuple(Column(headers[kind], kind) for kind in kinds)


ALL_CLASSES_TABLE = ReportTable(
    "Accuracy on all classes (full and few-shot)",
    (
        *_lead("method", "dataset", "protocol", "shots", "seeds"),
        Column("accuracy", key="accuracy"),
        Column("per-class accuracy", key="per_class_accuracy"),
    ),
    position=3,
)
# CoOp and CoCoOp (and the papers after them) train base-to-new and cross-data-set sources on 16 shots per class.
for _spec in (
    ProtocolSpec("full", run_full, ALL_CLASSES_TABLE, ("accuracy",)),
    ProtocolSpec("fewshot", run_fewshot, ALL_CLASSES_TABLE, ("accuracy",), shots="required"),
    ProtocolSpec(
        "base2new",
        run_base2new,
        # Data sets that know their classes' attributes (a `class_attributes` annotation) add how often the new
        # classes' predictions got each attribute right.
        ReportTable(
            "Base-to-new",
            (
                *_lead("method", "dataset", "shots", "seeds"),
                Column("base", key="base_accuracy"),
                Column("new", key="new_accuracy"),
                Column("HM", key="harmonic_mean"),
                Column("new", "attributes", "new"),
            ),
            position=0,
        ),
        ("base_accuracy", "new_accuracy", "harmonic_mean"),
        shots="optional",
        default_shots=16,
    ),
    ProtocolSpec(
        "gzsl",
        run_gzsl,
        ReportTable(
            "Generalized zero-shot",
            (
                *_lead("method", "dataset", "seeds"),
                Column("seen", key="seen_accuracy"),
                Column("unseen", key="unseen_accuracy"),
                Column("H", key="harmonic_mean"),
            ),
            position=1,
            note="per-class mean accuracy over the joint label space of seen and unseen classes",
        ),
        ("seen_accuracy", "unseen_accuracy", "harmonic_mean"),
        options=("unseen",),
    ),
    ProtocolSpec(
        "crossdataset",
        run_crossdataset,
        ReportTable(
            "Cross-data-set transfer",
            (
                *_lead("method", "dataset", "shots", "seeds", dataset="source"),
                Column("source accuracy", key="accuracy"),
                Column("", "targets"),
                Column("average", key="average_target_accuracy"),
            ),
            position=2,
        ),
        ("accuracy", "average_target_accuracy"),
        shots="optional",
        default_shots=16,
        options=("targets",),
        required_options=("targets",),
    ),
):
    register_protocol(_spec)
PROTOCOLS = tuple(PROTOCOL_SPECS)


def _split_cache(ctx: RunContext) -> Path:
    return Path(ctx.cache_dir or default_cache_dir()) / "splits"


def _protocols_taking(option: str) -> str:
    names = [
        n
        for n, spec in PROTOCOL_SPECS.items()
        if (spec.shots != "never" if option == "shots" else option in spec.options)
    ]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def protocol_spec(protocol: str) -> ProtocolSpec:
    if protocol not in PROTOCOL_SPECS:
        raise ClipadaptError(f"unknown protocol '{protocol}'; choose from {', '.join(PROTOCOL_SPECS)}")
    return PROTOCOL_SPECS[protocol]


def protocol_shots(
    protocol: str,
    shots: int | None = None,
    targets: Sequence[str] = (),
    unseen: str | Sequence[str] | None = None,
    fewshot_sampler: str = "clipadapt",
) -> int | None:
    """The shots per class `protocol` trains with (None: every train image), once the options are checked against
    it: an option the protocol would ignore is an error, not a number in metrics.json that did not happen."""
    spec = protocol_spec(protocol)
    if fewshot_sampler != "clipadapt" and spec.shots == "never":
        raise ClipadaptError(
            f"protocol {protocol} draws no k-shot subset; --fewshot-sampler is for {_protocols_taking('shots')}"
        )
    if shots is not None and spec.shots == "never":
        raise ClipadaptError(
            f"protocol {protocol} trains on every train image (of the seen classes); --shots is for "
            f"{_protocols_taking('shots')}"
        )
    if shots is not None and shots < 1:
        raise ClipadaptError(f"--shots must be 1 or more, got {shots}")
    if spec.shots == "required" and shots is None:
        raise ClipadaptError(f"protocol {protocol} needs {OPTION_USAGE['shots']}")
    for option, value in (("targets", targets), ("unseen", unseen)):
        if value and option not in spec.options:
            raise ClipadaptError(f"--{option} is for protocol {_protocols_taking(option)}, not {protocol}")
        if not value and option in spec.required_options:
            raise ClipadaptError(f"protocol {protocol} needs {OPTION_USAGE[option]}")
    return shots if shots is not None else spec.default_shots


def trained(numbers: dict) -> bool:
    """Whether a run trained: its numbers, or one of its seeds', hold a training summary (a zero-shot run's do not)."""
    return "training" in numbers or any("training" in result for result in numbers.get("per_seed", {}).values())


def shots_trained(numbers: dict, shots: int | None) -> int | None:
    """`shots` for a run that trained, else None: a zero-shot method trains on nothing, whatever the protocol's
    default."""
    return shots if trained(numbers) else None


def run_protocol(
    protocol: str,
    method: AnyMethod,
    ctx: RunContext,
    splits: DatasetSplits,
    seed: int = 1,
    shots: int | None = None,
    targets: Sequence[str] = (),
    unseen: str | Sequence[str] | None = None,
) -> dict:
    """The protocol's numbers for `method` on `splits` (`protocol_shots` checks the options)."""
    shots = protocol_shots(protocol, shots, targets, unseen)
    return PROTOCOL_SPECS[protocol].run(method, ctx, splits, seed=seed, shots=shots, targets=targets, unseen=unseen)


def run_seeds(
    method_name: str,
    values: dict,
    protocol: str,
    ctx: RunContext,
    splits: DatasetSplits,
    seeds: Sequence[int],
    source: str = "overrides",
    **options,
) -> tuple[dict, dict]:
    """What `clipadapt run` does: for each seed, torch seeded, a fresh method built from `values`, run under the
    protocol. Returns one seed's numbers (or the seeds' aggregate) and the method's resolved config."""
    results = []
    for seed in seeds:
        torch.manual_seed(seed)
        method = build_method(method_name, ctx.backbone, values, source=source, seed=seed)
        results.append(run_protocol(protocol, method, ctx, splits, seed=seed, **options))
    numbers = results[0] if len(seeds) == 1 else aggregate_seeds(results, seeds)
    return numbers, method_config(method)


def _mean_of(values: list):
    """Mean of numbers (every seed has one), or of dicts key by key (attribute accuracies, per-target results);
    anything else is kept when every seed has the same value and is None otherwise (a resumed seed's
    `resumed_from_step` beside a fresh one's None, per-epoch losses: each seed's are under `per_seed`)."""
    first = values[0]
    if all(isinstance(v, dict) for v in values):
        return {key: _mean_of([v[key] for v in values]) for key in first if all(key in v for v in values)}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sum(values) / len(values)
    return first if all(v == first for v in values) else None


def rederive_harmonic_mean(means: dict) -> None:
    """Set `harmonic_mean` of averaged numbers from the averaged base and new (or seen and unseen) accuracies, as
    CoOp's and CoCoOp's tables report it, not as the mean of the harmonic means."""
    for a, b in (("base_accuracy", "new_accuracy"), ("seen_accuracy", "unseen_accuracy")):
        if isinstance(means.get(a), float) and isinstance(means.get(b), float):
            means["harmonic_mean"] = harmonic_mean(means[a], means[b])


def aggregate_seeds(results: list[dict], seeds: Sequence[int]) -> dict:
    """Several seeds' numbers as one result: means under the usual keys, population standard deviations of the
    top-level accuracies as `<key>_std` (as CoOp's parse_test_res.py reports), each seed's numbers under
    `per_seed`. Counts (`num_*`) are the same for every seed and kept as they are. The harmonic mean is that of
    the mean base and new (or seen and unseen) accuracies, as CoOp's and CoCoOp's tables report it; its `_std`
    is the spread of the seeds' own harmonic means."""
    merged = {
        key: (values[0] if key.startswith("num_") else _mean_of(values))
        for key, values in ((k, [r[k] for r in results]) for k in results[0])
    }
    for key, value in results[0].items():
        if isinstance(value, float) and not key.startswith("num_"):
            mean = merged[key]
            merged[f"{key}_std"] = math.sqrt(sum((r[key] - mean) ** 2 for r in results) / len(results))
    rederive_harmonic_mean(merged)
    merged["per_seed"] = {str(seed): result for seed, result in zip(seeds, results)}
    return merged


def write_metrics(out_dir: str | Path, metrics: dict) -> Path:
    """`out_dir/metrics.json`, written to a temp file and renamed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "metrics.json"
    write_text_atomic(path, json.dumps(metrics, indent=2, default=str) + "\n")
    return path
