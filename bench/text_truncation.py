"""Prompt-learner text encoding: truncated to the longest prompt vs the full context length.

Both runs encode the same CoOp-style prompts (16 learned context vectors + class name) for the same model, in the
same process; the ratio (full time / truncated time) is what to read, not the seconds. Outputs are checked equal.

    python bench/text_truncation.py [--model ViT-B-16] [--classes 100] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
from timing import add_device_arg, timed

from clipadapt import load_backbone

CLASS_WORDS = ["red", "striped", "small", "star", "square", "dotted", "blue", "circle", "large", "green"]


def full_length_prompted_text(backbone, ctx: torch.Tensor, classnames: list[str]) -> torch.Tensor:
    """The baseline: CoOp's official path, every prompt padded to the model's context length."""
    text = backbone.text
    prompts = [" ".join(["X"] * ctx.shape[0]) + f" {name}." for name in classnames]
    ids = backbone.tokenize(prompts).to(ctx.device)
    x = text.token_embedding(ids)
    x = torch.cat([x[:, :1], ctx.expand(len(classnames), -1, -1), x[:, 1 + ctx.shape[0] :]], dim=1)
    x = x + text.positional_embedding
    x = text.transformer(x, attn_mask=text.attn_mask)
    x = text.ln_final(x)
    return x[torch.arange(len(classnames)), ids.argmax(-1)] @ text.text_projection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16", help="architecture (random weights)")
    add_device_arg(parser)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone(args.model, device=args.device)
    classnames = [
        f"{CLASS_WORDS[i % 10]} {CLASS_WORDS[(i // 10) % 10]} {CLASS_WORDS[(i // 3) % 10]}" for i in range(args.classes)
    ]
    ctx = (torch.randn(args.n_ctx, backbone.text_width) * 0.02).to(args.device).requires_grad_()

    def step(encode):
        features = encode()
        features.square().sum().backward()  # prompt learners pay for the backward pass too
        return features

    with torch.no_grad():
        torch.testing.assert_close(
            backbone.encode_prompted_text(ctx, classnames),
            full_length_prompted_text(backbone, ctx, classnames),
            atol=1e-4,
            rtol=1e-4,
        )
    full = timed(lambda: step(lambda: full_length_prompted_text(backbone, ctx, classnames)), args.repeats)
    truncated = timed(lambda: step(lambda: backbone.encode_prompted_text(ctx, classnames)), args.repeats)
    length = backbone._prompt_layout(classnames, args.n_ctx, "end")[0].shape[1]
    print(f"model={args.model} classes={args.classes} n_ctx={args.n_ctx} positions={length}/{backbone.context_length}")
    print(f"full={full * 1000:.1f}ms truncated={truncated * 1000:.1f}ms (forward+backward per step)")
    print(f"text_truncation ratio={full / truncated:.2f} target=3")


if __name__ == "__main__":
    main()
