"""SHIP synthesis throughput: features for classes without data, in chunks of prompts through one text-encoder call
each (`Ship.synthesize`) vs one feature at a time (each z and class name through its own call).

Both draw the same latents, so the features are checked equal first; the ratio is the one-at-a-time time over the
batched time, with features/s for each. Random weights: only the time is measured.

    python bench/ship_synthesis.py [--model tiny-vit] [--classes 100] [--per-class 8]
"""

from __future__ import annotations

import argparse

import torch
from timing import add_device_arg, clock

from clipadapt import load_backbone
from clipadapt.methods.addons.ship import Ship, ShipConfig

WORDS = ["red", "striped", "small", "star", "square", "dotted", "blue", "circle", "large", "green"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-vit", help="architecture (random weights)")
    add_device_arg(parser)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone(args.model, device=args.device)
    ship = Ship(backbone, ShipConfig())
    names = [f"{WORDS[i % 10]} {WORDS[(i // 10) % 10]} {WORDS[(i // 3) % 10]}" for i in range(args.classes)]
    n = args.classes * args.per_class

    start = clock()
    batched = ship.synthesize(names, args.per_class, progress=False)
    batched_seconds = clock() - start
    start = clock()
    single = ship.synthesize(names, args.per_class, chunk=1, progress=False)
    single_seconds = clock() - start
    torch.testing.assert_close(batched.features, single.features, atol=1e-4, rtol=0)
    print(
        f"{args.model}, {args.classes} classes x {args.per_class}: batched {n / batched_seconds:.0f} features/s, "
        f"one at a time {n / single_seconds:.0f} features/s"
    )
    print(f"ship_synthesis ratio={single_seconds / batched_seconds:.1f} target=1")


if __name__ == "__main__":
    main()
