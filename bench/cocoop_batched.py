"""CoCoOp's training step: one text-encoder call for a batch of per-image prompts vs the official per-image loop.

Both compute the loss of the same batch of (cached) image features with the same prompt learner, forward and
backward: ours through `CoCoOp._logits` (context [B, 1, n_ctx, width] -> [B, n_cls, D] in one call), the baseline
as KaiyangZhou/CoOp's CustomCLIP.forward does, one `encode_prompted_text` call per image. Losses and gradients are
checked equal first. The ratio is the loop's time over ours. Model weights are random: only the time is measured.
Both do the same arithmetic, and on CPU each of the loop's calls already batches all class prompts, so the gain
there is small (2 cores: tiny-vit 4.2x at 4 classes, 1.6x at 16, 1.4x at 100; ViT-B-16 1.3x at 16); batching pays
where per-call latency dominates: few classes, or a GPU (not measured here).

    python bench/cocoop_batched.py [--model tiny-vit] [--classes 16] [--batch 32]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import add_device_arg, timed

from clipadapt import load_backbone
from clipadapt.methods import build_method

CLASS_WORDS = ["red", "striped", "small", "star", "square", "dotted", "blue", "circle", "large", "green"]


def per_image_logits(cocoop, features: torch.Tensor, classnames: list[str]) -> torch.Tensor:
    """The official forward: per image, its shifted context and one text-encoder pass over all class prompts."""
    backbone = cocoop.backbone
    image = F.normalize(features, dim=-1)
    rows = []
    for feature in image:
        ctx = cocoop.prompt.ctx + cocoop.prompt.meta_net(feature[None])[0]
        text = backbone.encode_prompted_text(ctx, classnames, normalize=True)
        rows.append(backbone.model.logit_scale.exp() * text @ feature)
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-vit", help="architecture (random weights)")
    add_device_arg(parser)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone(args.model, device=args.device)
    backbone.model.requires_grad_(False)  # CLIP is frozen in both, as in training
    classnames = [
        f"{CLASS_WORDS[i % 10]} {CLASS_WORDS[(i // 10) % 10]} {CLASS_WORDS[(i // 3) % 10]}" for i in range(args.classes)
    ]
    cocoop = build_method("cocoop", backbone, {"batch_size": args.batch})
    features = torch.randn(args.batch, backbone.embed_dim, device=args.device)
    labels = torch.randint(args.classes, (args.batch,), device=args.device)
    params = list(cocoop.prompt.parameters())

    def batched():
        return torch.autograd.grad(F.cross_entropy(cocoop._logits(features, classnames), labels), params)

    def looped():
        return torch.autograd.grad(F.cross_entropy(per_image_logits(cocoop, features, classnames), labels), params)

    with torch.no_grad():
        torch.testing.assert_close(
            cocoop._logits(features, classnames), per_image_logits(cocoop, features, classnames), atol=1e-4, rtol=1e-5
        )
    for ours, reference in zip(batched(), looped()):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    ours, baseline = timed(batched, args.repeats), timed(looped, args.repeats)
    print(
        f"model {args.model}, {args.classes} classes, batch {args.batch}, {torch.get_num_threads()} threads; "
        f"logits and gradients equal"
    )
    print(f"batched step {ours * 1000:.1f} ms, per-image loop {baseline * 1000:.1f} ms")
    print(f"cocoop_batched ratio={baseline / ours:.1f} target=10")


if __name__ == "__main__":
    main()
