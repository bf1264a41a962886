"""What a user does with a trained method: classify new images with it, save it as one file and load it back.

A `Classifier` is a method (any registered one, `METHOD+ship` too) with the class names it scores and the backbone
it runs on. `save` writes the method's weights file (`Method.save`) with a header that describes the classifier:
the method's name and whole config, the class names, the data set's template key, the backbone's identity (how to
load it, the digest of its weights, its input size), what it was trained on and the clipadapt version. So
`load_classifier` rebuilds it from the file alone, and refuses in one line a backbone other than its own.

Images go in as file paths, PIL images or preprocessed tensors ([3, H, W] or [B, 3, H, W]); a method that keeps
the image encoder frozen scores the encoder's features as its training and evaluation did (rounded to float16, as
the feature cache stores them), so a prediction here is the one `clipadapt run` scored.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .backbone import load_backbone
from .checkpoint import CHECKSUM_KEY, load_method_weights, read_method_header, save_method_weights
from .config import flatten_sections
from .data.datasets import load_image
from .errors import CheckpointError, ClipadaptError, DataError
from .methods import METHODS, build_method, method_config
from .paths import write_text_atomic
from .version import __version__

HEADER_KEY = "classifier"  # the header entry a classifier file adds to its method's weights file
ImageInput = str | Path | Image.Image | torch.Tensor


class Classifier:
    """A method that scores images over `classnames` (`template_key`: the data set's CoOp template, for methods
    that read one), on the `backbone` it was built with. `trained_on` records the data set, seed and shots it
    learned from."""

    def __init__(
        self,
        method: Any,
        backbone: Any,
        classnames: Sequence[str],
        template_key: str | None = None,
        trained_on: dict | None = None,
    ):
        if not classnames:
            raise ClipadaptError("a classifier needs at least one class name")
        self.method = method
        self.backbone = backbone
        self.classnames = list(classnames)
        self.template_key = template_key
        self.trained_on = dict(trained_on or {})
        self.checksum: str | None = None  # of the file it was loaded from (`load_classifier`)

    @property
    def name(self) -> str:
        return self.method.name

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The preprocessing of an image file before `batch_logits`: the tuned tower's for methods that tune it,
        else the backbone's (the one the feature cache used)."""
        if self.method.capabilities.needs_images:
            return self.method.image_transform()
        return self.backbone.image_transform(train=False)

    # ---- scoring -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def batch_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, len(classnames)] of preprocessed images [B, 3, H, W], on the CPU."""
        if self.method.capabilities.needs_images:
            return self.method.batch_logits(images).float().cpu()
        # The features the method trained and was evaluated on were cached as float16.
        features = self.backbone.encode_image(images).float().half().float()
        return self.method.logits(features, self.classnames, template_key=self.template_key).float().cpu()

    def logits(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64) -> torch.Tensor:
        """Logits [N, len(classnames)] of images: paths, PIL images, preprocessed tensors, or a list of them (decoded
        `batch_size` at a time)."""
        images = [images] if isinstance(images, (str, Path, Image.Image, torch.Tensor)) else list(images)
        if not images:
            raise ClipadaptError("no images to classify")
        logits = []
        for start in range(0, len(images), batch_size):  # decoded and scored a chunk at a time
            chunk = self._preprocess(images[start : start + batch_size])
            logits += [self.batch_logits(batch) for batch in chunk.split(batch_size)]
        return torch.cat(logits)

    def predict_proba(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64) -> torch.Tensor:
        """Class probabilities [N, len(classnames)] (softmax of the logits)."""
        return self.logits(images, batch_size).softmax(dim=-1)

    def predict(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64) -> list[str]:
        """The most likely class name of each image."""
        return [self.classnames[i] for i in self.logits(images, batch_size).argmax(dim=-1).tolist()]

    def topk(
        self, images: ImageInput | Sequence[ImageInput], k: int = 5, batch_size: int = 64
    ) -> list[list[tuple[str, float]]]:
        """Each image's `k` most likely (class name, probability), most likely first."""
        return [self.top_of(row, k) for row in self.predict_proba(images, batch_size)]

    def top_of(self, probabilities: torch.Tensor, k: int) -> list[tuple[str, float]]:
        """The `k` most likely (class name, probability) of one image's probabilities."""
        top = probabilities.topk(min(k, len(self.classnames)))
        return [(self.classnames[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]

    def _preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """One batch [N, 3, H, W] of images given as paths, PIL images or preprocessed tensors."""
        transform = None
        tensors = []
        for image in images:
            if isinstance(image, (str, Path)):
                image = load_image(Path(image))
            if isinstance(image, Image.Image):
                transform = transform or self.transform()
                image = transform(image.convert("RGB"))
            if not torch.is_tensor(image) or image.ndim not in (3, 4) or image.shape[-3] != 3:
                raise ClipadaptError(
                    "an image must be a path, a PIL image or a preprocessed tensor [3, H, W] / [B, 3, H, W], got "
                    + (f"a tensor of shape {tuple(image.shape)}" if torch.is_tensor(image) else f"{image!r:.80}")
                )
            if not image.is_floating_point():
                raise ClipadaptError(
                    f"a {image.dtype} tensor is not preprocessed: give the image itself, or `transform()` of it"
                )
            tensors.append(image if image.ndim == 4 else image[None])
        return torch.cat(tensors)

    def predict_files(
        self,
        paths: Sequence[Path],
        k: int = 5,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
    ) -> Iterator[tuple[Path, list[tuple[str, float]] | None, str | None]]:
        """(path, its top `k` (class name, probability), None), or (path, None, why it cannot be read) for each
        file, in order, decoded in `num_workers` DataLoader processes a batch at a time: one unreadable file is
        reported and the others go on."""
        loader = DataLoader(
            _ImageFiles(paths, self.transform()),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate_readable,
            pin_memory=self.backbone.device.type == "cuda",
        )
        with tqdm(total=len(paths), desc=f"{self.name} predict", unit="img", disable=not progress) as bar:
            for indices, images, failures in loader:
                probabilities = self.batch_logits(images).softmax(dim=-1) if images is not None else []
                tops = dict(zip(indices, (self.top_of(row, k) for row in probabilities)))
                for index in sorted([*indices, *failures]):
                    yield paths[index], tops.get(index), failures.get(index)
                bar.update(len(indices) + len(failures))

    # ---- other class names ---------------------------------------------------------------------------------------
    def with_classes(self, classnames: Sequence[str]) -> Classifier:
        """The same trained method scoring other class names, without training: for methods that score class names
        through text (zero-shot, CoOp, CoCoOp, the adapters); the others say they cannot."""
        csc = getattr(self.method.config, "csc", False)
        if not self.method.capabilities.scores_unseen_classes or csc:
            raise ClipadaptError(
                f"{self.name}{' with csc=true' if csc else ''} scores only the {len(self.classnames)} classes it was "
                f"trained on: it cannot score other class names (methods that can: {', '.join(_text_scoring())})"
            )
        renamed = Classifier(self.method, self.backbone, classnames, self.template_key, self.trained_on)
        renamed.checksum = self.checksum
        return renamed

    # ---- saving ----------------------------------------------------------------------------------------------------
    def description(self) -> dict:
        """The header entry that lets `load_classifier` rebuild this classifier from its file alone."""
        return {
            "method": self.name,
            "config": method_config(self.method),
            "classnames": self.classnames,
            "template_key": self.template_key,
            "backbone": self.backbone.identity(),
            "trained_on": self.trained_on,
            "clipadapt_version": __version__,
        }

    def save(self, path: str | Path) -> Path:
        """One safetensors file: the method's learned weights (none for zero-shot) and `description()`, written
        atomically with a checksum."""
        path = Path(path)
        header = {HEADER_KEY: self.description()}
        if self.method.capabilities.trains:
            self.method.save(path, **header)
        else:
            save_method_weights(path, {}, self.name, self.method.config, **header)
        return path


def predict_to_file(
    classifier: Classifier,
    paths: Sequence[Path],
    out: str | Path,
    k: int = 5,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Each image's top `k` classes, written to `out` (`.csv`: a row an image, `path, label_1, probability_1, ...,
    error`; `.json`: a list of `{path, top: [{label, probability}], error}`), in the order of `paths`; returns the
    records. Rows go to `out.partial` as they are made and `out` is written (atomically) at the end, so a killed run
    leaves no half file and the same command resumes where it stopped. An unreadable image gets its `error` and no
    labels."""
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise ClipadaptError(f"--out {out}: write predictions to a .csv or .json file")
    if k < 1:
        raise ClipadaptError(f"top k must be at least 1, got {k}")
    k = min(k, len(classifier.classnames))
    partial = out.with_name(out.name + ".partial")
    # What the rows in a partial file were made with: rows of another classifier, class list or k are not reused.
    made_with = {"classifier": classifier.checksum, "classes": classifier.classnames, "k": k}
    # A classifier not loaded from a file has no checksum to tell it by: its rows are never reused.
    done = _rows_of_partial(partial, made_with) if classifier.checksum else {}
    todo = [path for path in paths if str(path) not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    # The rows kept, rewritten: a line the kill cut off is not continued by the next row.
    write_text_atomic(partial, "".join(json.dumps(row) + "\n" for row in [made_with, *done.values()]))
    with open(partial, "a", encoding="utf-8") as rows:
        for path, top, error in classifier.predict_files(todo, k, batch_size, num_workers, progress):
            record = {
                "path": str(path),
                "top": [{"label": label, "probability": round(p, 6)} for label, p in top or []],
                "error": error,
            }
            done[record["path"]] = record
            rows.write(json.dumps(record) + "\n")
            rows.flush()
    records = [done[str(path)] for path in paths]
    write_text_atomic(out, _as_json(records) if out.suffix.lower() == ".json" else _as_csv(records, k))
    partial.unlink()
    return records


def _rows_of_partial(partial: Path, made_with: dict) -> dict[str, dict]:
    """The finished rows of an earlier, interrupted run (a line cut off by the kill is dropped)."""
    if not partial.is_file():
        return {}
    lines = partial.read_text(encoding="utf-8").splitlines()
    try:
        if not lines or json.loads(lines[0]) != made_with:
            return {}
    except json.JSONDecodeError:
        return {}
    rows = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[record["path"]] = record
    return rows


def _as_json(records: list[dict]) -> str:
    return json.dumps(records, indent=1) + "\n"


def _as_csv(records: list[dict], k: int) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", *[f"{key}_{i}" for i in range(1, k + 1) for key in ("label", "probability")], "error"])
    for record in records:
        cells = [value for item in record["top"] for value in (item["label"], item["probability"])]
        writer.writerow([record["path"], *cells, *[""] * (2 * k - len(cells)), record["error"] or ""])
    return buffer.getvalue()


class _ImageFiles(Dataset):
    """Image files as (index, preprocessed image or None, why it cannot be read or None)."""

    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.transform(load_image(self.paths[index])), None
        except DataError as e:
            return index, None, str(e).removeprefix(f"cannot read image {self.paths[index]}: ")


def _collate_readable(
    items: list[tuple[int, torch.Tensor | None, str | None]],
) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
    """A batch of the readable images (their indices, stacked) and the unreadable ones' reasons by index."""
    readable = [(index, image) for index, image, _ in items if image is not None]
    failures = {index: error for index, image, error in items if image is None}
    images = torch.stack([image for _, image in readable]) if readable else None
    return [index for index, _ in readable], images, failures


# ---- loading -----------------------------------------------------------------------------------------------------
def classifier_file(source: str | Path, seed: int | None = None) -> Path:
    """The classifier file `source` names: the file itself, or the one a run folder holds (`seed`: which, when
    the run trained several)."""
    source = Path(source)
    if source.is_file():
        return source
    if not source.is_dir():
        raise ClipadaptError(f"{source} is neither a classifier file nor a run folder")
    found, unreadable = {}, []
    for path in sorted(source.glob("**/*.safetensors")):
        try:
            header = read_method_header(path)
        except CheckpointError as e:  # training checkpoints, SHIP's generator, synthesis samples; or damage
            if "holds no clipadapt method weights" not in str(e):
                unreadable.append(str(e))
            continue
        if HEADER_KEY in header:
            found[path] = header[HEADER_KEY].get("trained_on", {}).get("seed")
    if seed is not None:
        found = {path: s for path, s in found.items() if s == seed}
    if len(found) == 1:
        return next(iter(found))
    if not found and unreadable:
        raise CheckpointError(f"{source} holds no readable classifier: {unreadable[0]}")
    if not found:
        raise ClipadaptError(
            f"{source} holds no classifier"
            + (f" of seed {seed}" if seed is not None else "")
            + ": train one with `clipadapt run`"
        )
    listed = ", ".join(f"{path.relative_to(source)} (seed {s})" for path, s in found.items())
    raise ClipadaptError(f"{source} holds {len(found)} classifiers: {listed}; name one file, or a seed")


def load_classifier(
    source: str | Path,
    backbone: Any = None,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> Classifier:
    """The classifier saved in `source` (a file, or a run folder: `classifier_file`), rebuilt from its file: the
    method from its name and config, on the backbone it records (loaded as it was, unless `backbone` is given), with
    its learned weights. A backbone whose weights differ from the ones it was trained on is refused."""
    path = classifier_file(source, seed)
    header = read_method_header(path)
    if HEADER_KEY not in header:
        raise ClipadaptError(
            f"{path} holds {header['method']} weights but no classifier description (a method's `save` alone writes "
            "none): train it with `clipadapt run` or `clipadapt.adapt`"
        )
    description = header[HEADER_KEY]
    recorded = description["backbone"]
    if backbone is None:
        try:
            backbone = load_backbone(recorded["model"], recorded["pretrained"], device=device)
        except ClipadaptError as e:
            raise ClipadaptError(
                f"{path}: cannot load the backbone it was trained on ({_backbone_label(recorded)}): {e}; pass that "
                "backbone (--model/--pretrained)"
            ) from e
    if backbone.fingerprint() != recorded["fingerprint"]:
        raise CheckpointError(
            f"{path} was trained on backbone {_backbone_label(recorded)}, weights {recorded['fingerprint']}; this "
            f"backbone is {_backbone_label(backbone.identity())}, weights {backbone.fingerprint()}"
        )
    method = build_method(description["method"], backbone, flatten_sections(description["config"]), source=str(path))
    if method.capabilities.trains:
        method.load(path)  # checks the file's checksum too
    else:
        load_method_weights(path, description["method"])  # its header only, checked against the checksum
    classifier = Classifier(
        method, backbone, description["classnames"], description["template_key"], description.get("trained_on")
    )
    classifier.checksum = header.get(CHECKSUM_KEY)
    return classifier


def _text_scoring() -> list[str]:
    """The registered methods that score class names through text, so score names they were not trained on."""
    return sorted(name for name, cls in METHODS.items() if cls.capabilities.scores_unseen_classes)


def _backbone_label(identity: dict) -> str:
    pretrained = identity.get("pretrained")
    weights = pretrained if pretrained else "the shipped model" if identity.get("model") is None else "random weights"
    return f"{identity['name']} ({weights})"
