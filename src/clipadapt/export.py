"""A classifier as one file that runs without clipadapt: an ONNX graph from preprocessed images [B, 3, H, W] to
logits [B, C] over its class names, and beside it a JSON file with the preprocessing (resize, crop, mean, std,
interpolation) and the class names.

The graph is what `Classifier.batch_logits` computes, traced by `torch.export` with a free batch size and
converted by `torch.onnx`. Methods whose text side is fixed after training (zero-shot, CoOp, CLIP-Adapter,
Tip-Adapter, the linear probe, MP-FGVC's prompts) carry their class embeddings as constants, computed once before
tracing; CoCoOp, whose prompts depend on the image, carries the text tower.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision import transforms

from .classifier import Classifier
from .errors import ClipadaptError, first_line
from .paths import write_text_atomic

FORMATS = ("onnx",)


class ClassifierGraph(nn.Module):
    """`classifier` as a module: preprocessed images -> logits (what is traced)."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier
        self.model = classifier.backbone.model  # its weights are the graph's; the method's are lifted as constants

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.classifier.batch_logits(images)


def describe_preprocessing(transform: transforms.Compose) -> dict:
    """The steps of an open_clip evaluation transform as plain values, for a runtime without torchvision."""
    steps = {}
    for step in getattr(transform, "transforms", [transform]):
        if isinstance(step, transforms.Resize):
            size = step.size
            steps["resize"] = {
                "size": size if isinstance(size, int) else list(size),
                "mode": "shorter side to size, aspect kept" if isinstance(size, int) else "to [height, width]",
                "interpolation": step.interpolation.value,
            }
        elif isinstance(step, transforms.CenterCrop):
            steps["center_crop"] = list(step.size)
        elif isinstance(step, transforms.Normalize):  # tuples, or tensors (timm's)
            steps["mean"], steps["std"] = [float(v) for v in step.mean], [float(v) for v in step.std]
        elif type(step).__name__ not in ("MaybeConvertMode", "MaybeToTensor", "ToTensor", "function"):
            raise ClipadaptError(f"cannot describe the preprocessing step {step!r} for an exported classifier")
    steps["input"] = "RGB, pixel values / 255, then (x - mean) / std, channels first"
    return steps


def export_classifier(classifier: Classifier, out: str | Path, format: str = "onnx") -> tuple[Path, Path]:
    """Write `classifier` to `out` (an `.onnx` file) and its preprocessing and class names to `out` with suffix
    `.json`; returns both paths. A method the exporter cannot trace for any batch size is refused in one line."""
    if format not in FORMATS:
        raise ClipadaptError(f"export format must be one of {', '.join(FORMATS)}, got '{format}'")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ClipadaptError(f"--out {out}: an ONNX export is written to a .onnx file")
    transform = classifier.transform()
    preprocessing = describe_preprocessing(transform)
    height, width = preprocessing.get("center_crop") or [classifier.backbone.image_size] * 2
    graph = ClassifierGraph(classifier).eval()
    example = torch.randn(2, 3, height, width)
    classifier.batch_logits(example)  # fills the caches (class embeddings) that become the graph's constants
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on deprecated internals are not the user's
            program = torch.export.export(graph, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
            check = torch.randn(3, 3, height, width)
            torch.testing.assert_close(program.module()(check), classifier.batch_logits(check), atol=1e-4, rtol=1e-4)
            onnx_program = torch.onnx.export(
                program, input_names=["images"], output_names=["logits"], dynamo=True, verbose=False
            )
    except Exception as e:  # the exporters raise many types; the first line says why
        raise ClipadaptError(f"{classifier.name} cannot be exported to ONNX: {first_line(e)}") from e
    description = {
        "format": "onnx",
        "input": {"name": "images", "shape": ["batch", 3, height, width], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", len(classifier.classnames)], "probabilities": "softmax"},
        "preprocessing": preprocessing,
        "classnames": classifier.classnames,
        "method": classifier.description(),
    }
    text = json.dumps(description, indent=1) + "\n"  # before anything is written: all of it is JSON
    out.parent.mkdir(parents=True, exist_ok=True)
    # Into a folder of its own first: a graph over 2 GB keeps its weights in `<name>.data` beside it, named after the
    # file it was saved as; both are then moved into place, the data first.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as folder:
        onnx_program.save(str(Path(folder) / out.name))
        for saved in sorted(Path(folder).iterdir(), key=lambda p: p.name == out.name):
            saved.replace(out.parent / saved.name)
    return out, write_text_atomic(out.with_suffix(".json"), text)
