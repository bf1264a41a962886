"""What classifying new images costs beyond the image tower, and what the ONNX export costs under onnxruntime.

1. `clipadapt predict` (the command's own function: find the files, load the classifier, decode in DataLoader
   workers, score, write the CSV) over world-sized images (64x64 PNG) against a bare loop of the same backbone's
   `encode_image` over the same DataLoader's decoded batches. Ratio: bare seconds / predict seconds (target 0.8:
   prediction should cost little beyond the image tower).
2. The exported ONNX file under onnxruntime against the in-library classifier on the same preprocessed batches.
   Ratio: library seconds / onnxruntime seconds (target 1.0).

The classifier is CoOp trained for one epoch on the shipped world model (the default backbone).

    python bench/predict.py [--images 10000] [--workers 1] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image
from timing import add_device_arg, clock
from torch.utils.data import DataLoader

from clipadapt import adapt, load_classifier
from clipadapt.cli import main as clipadapt
from clipadapt.data import ImageDataset, Sample
from clipadapt.export import export_classifier


def write_images(root: Path, count: int, size: int = 64) -> list[Path]:
    """`count` world-sized RGB images (PNG) of noise around four colours, four classes of train images besides."""
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
    for name, rgb in colours.items():
        (root / "train" / name).mkdir(parents=True)
        for i in range(4):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "train" / name / f"{i}.png")
    (root / "new").mkdir()
    paths = []
    for i in range(count):
        pixels = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        paths.append(root / "new" / f"{i:05d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arg(parser)
    parser.add_argument("--model", default="", help="ignored: the shipped world model is the classifier's backbone")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader processes decoding, for both loops")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        paths = write_images(root / "data", args.images)
        run = root / "coop.safetensors"
        trained = adapt(
            "coop", f"imagefolder:{root / 'data'}", device=args.device, progress=False, cache=root / "cache", epochs=1
        )
        trained.save(run)
        classifier = load_classifier(run, device=args.device)
        backbone = classifier.backbone

        def bare() -> None:
            loader = DataLoader(
                ImageDataset([Sample(p, 0) for p in paths], classifier.transform()),
                batch_size=args.batch_size,
                num_workers=args.workers,
            )
            with torch.no_grad():
                for images, _, _ in loader:
                    backbone.encode_image(images)

        def predict() -> None:
            argv = ["predict", str(run), str(root / "data" / "new"), "--out", str(root / "predictions.csv")]
            argv += ["--workers", str(args.workers), "--batch-size", str(args.batch_size), "--no-progress"]
            with contextlib.redirect_stdout(io.StringIO()):  # its listing of the first rows
                assert clipadapt([*argv, "--device", args.device]) == 0
            (root / "predictions.csv").unlink()

        bare()  # warm-up: the files into the page cache, the first forward
        seconds = {}
        for name, fn in (("bare", bare), ("predict", predict), ("bare again", bare)):
            start = clock()
            fn()
            seconds[name] = clock() - start
        bare_seconds = (seconds["bare"] + seconds["bare again"]) / 2

        onnx_file, _ = export_classifier(classifier, root / "coop.onnx")
        session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        batches = [torch.randn(args.batch_size, 3, 64, 64) for _ in range(max(1, min(args.images, 2048) // 64))]
        library = onnx_time = 0.0
        for batch in batches:  # interleaved: both see the same machine state
            start = clock()
            expected = classifier.batch_logits(batch)
            library += clock() - start
            start = clock()
            got = session.run(None, {"images": batch.numpy()})[0]
            onnx_time += clock() - start
            # Noise images put some features on a float16 rounding boundary (the features are rounded as the cache
            # stores them), where the last bit of the tower's output can move a logit by a rounding step.
            np.testing.assert_allclose(got, expected.numpy(), atol=2e-3, rtol=1e-3)
    n = len(paths)
    print(
        f"tiny-vit coop, {n} PNG images 64x64, {args.workers} workers, {torch.get_num_threads()} threads: "
        f"bare encode_image {n / bare_seconds:.0f} images/s, clipadapt predict {n / seconds['predict']:.0f} images/s"
    )
    images = len(batches) * args.batch_size
    print(f"in-library {images / library:.0f} images/s, onnxruntime {images / onnx_time:.0f} images/s")
    print(f"predict_onnx ratio={library / onnx_time:.2f} target=1.0")
    print(f"predict ratio={bare_seconds / seconds['predict']:.2f} target=0.8")


if __name__ == "__main__":
    main()
