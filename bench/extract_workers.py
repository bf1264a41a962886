"""Feature extraction throughput (images/s): DataLoader worker processes decoding and resizing images while the
main process encodes, vs everything in one process (`extract_features(num_workers=0)`).

Both extract the same photo-sized JPEGs (320x240, decoded and resized like real ones) into fresh caches, and the
features are checked equal. The ratio is the single-process time over the time with workers.

    python bench/extract_workers.py [--model tiny-vit] [--images 512] [--workers 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from coop_cached import write_images
from timing import add_device_arg, clock

from clipadapt import load_backbone
from clipadapt.data import load_dataset
from clipadapt.features import extract_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-vit", help="architecture (random weights)")
    add_device_arg(parser)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", type=int, default=1, help="2 cores: one worker decodes, the encoder keeps a core")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone(args.model, device=args.device)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_images(root / "data", classes=8, per_class=args.images // 8)
        samples = load_dataset(f"imagefolder:{root / 'data'}").train
        # A warm-up pass (first forward, the files into the page cache) before either timed run.
        extract_features(backbone, samples, cache_dir=root / "warm-up", progress=False)
        seconds = {}
        features = {}
        for workers in (0, args.workers):
            start = clock()
            features[workers] = extract_features(
                backbone, samples, cache_dir=root / f"cache{workers}", num_workers=workers, progress=False
            ).features
            seconds[workers] = clock() - start
    torch.testing.assert_close(features[0], features[args.workers], atol=0, rtol=0)
    n = len(samples)
    print(
        f"{args.model}, {n} JPEG images 320x240, {torch.get_num_threads()} threads: one process "
        f"{n / seconds[0]:.0f} images/s, {args.workers} workers {n / seconds[args.workers]:.0f} images/s"
    )
    print(f"extract_workers ratio={seconds[0] / seconds[args.workers]:.2f} target=1.0")


if __name__ == "__main__":
    main()
