"""CoOp training steps on cached image features vs the official loop that re-encodes every image at every step.

Both runs are `CoOp.fit` on the same model, images and class names, for the same number of steps (batch 32): the
default (`augment=false`) scores the features extracted once beforehand; `augment=true` does what the official code
does, decoding, randomly cropping/flipping and encoding every batch of images again (image encoder frozen, under
no_grad). Both encode the text prompts the same way (truncated; see text_truncation.py for that gain). The ratio is
the official step time over the cached step time; the one-time extraction is printed beside it, in official steps.
Model weights are random (nothing can be downloaded): only the time is measured. On a GPU it also prints where the
cached steps make the host wait for the GPU (one wait a step is expected: the loss, read after the backward pass).

    python bench/coop_cached.py [--model ViT-B-16] [--classes 8] [--steps 2] [--n-ctx 16] [--workers 0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timing import add_device_arg, clock, device_waits

from clipadapt import load_backbone
from clipadapt.data import load_dataset
from clipadapt.features import extract_features
from clipadapt.methods import build_method
from clipadapt.training.batches import decoding_workers

BATCH = 32


def write_images(root: Path, classes: int, per_class: int) -> None:
    """Photo-sized noise images (320x240 JPEG), decoded and resized like real ones."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "train" / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16", help="architecture (random weights)")
    add_device_arg(parser)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="training steps timed in each run")
    parser.add_argument("--n-ctx", type=int, default=16, help="context vectors (tiny models: 16-token context, use 4)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes decoding the official loop's images (its configs use 8; on a GPU, say so)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone(args.model, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_class = -(-args.steps * BATCH // args.classes)
        write_images(root / "data", args.classes, per_class)
        splits = load_dataset(f"imagefolder:{root / 'data'}")

        start = clock()
        train = extract_features(backbone, splits.train, cache_dir=root / "cache", batch_size=BATCH, progress=False)
        extract_seconds = clock() - start

        def run(augment: bool) -> tuple[float, dict]:
            coop = build_method(
                "coop", backbone, {"n_ctx": args.n_ctx, "epochs": 1, "batch_size": BATCH, "augment": augment}
            )
            with decoding_workers(args.workers if augment else 0):
                history = coop.fit(train, splits.classnames, progress=False)
            assert history["steps"] == args.steps
            return history["seconds"] / history["steps"], history

        run(False)  # warm-up: first-call allocations and the prompt layout cache
        cached, cached_history = run(False)
        official, official_history = run(True)
        if backbone.device.type == "cuda":
            waits = device_waits(lambda: run(False))
    ratio = official / cached
    print(
        f"model {args.model}, {args.classes} classes, {len(train)} images, batch {BATCH}, {args.steps} steps, "
        f"{torch.get_num_threads()} threads, the official loop's images decoded in {args.workers} worker process(es)"
    )
    print(
        f"cached step {cached * 1000:.1f} ms, official (re-encode) step {official * 1000:.1f} ms; "
        f"one-time extraction {extract_seconds:.1f} s = {extract_seconds / official:.1f} official steps"
    )
    print(
        f"mean loss cached {cached_history['epoch_losses'][0]:.4f}, augmented {official_history['epoch_losses'][0]:.4f}"
    )
    if backbone.device.type == "cuda":
        print(f"host waits for the GPU in {args.steps} cached steps, fit's start and end included: {waits}")
    print(f"coop_cached ratio={ratio:.1f} target=20")


if __name__ == "__main__":
    main()
