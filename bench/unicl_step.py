"""UniCL pretraining steps: our loop (`UniCLPretrainer` in the shared `Trainer`: text truncated to the longest
prompt, channels-last for convolutional towers, fused AdamW, bf16 autocast on GPUs, the UniCL loss, checkpointing
off) vs a plain open_clip training step on the same model and batch (`model(images, texts)`, open_clip's
`ClipLoss`, default AdamW).

Both start from the same random weights and take the same number of steps on one in-memory batch (half
image-label samples with template prompts, half captions), after one warm-up step each; image decoding is left
out of both. The ratio is the plain step time over ours (target 1.0: the unified loss costs nothing). On a CPU the
plain step is fp32, as ours. On a GPU, with the settings of open_clip's trainer (TF32, cuDNN autotuning) and after
a few untimed steps, the plain step runs both in fp32 and under bf16 autocast (open_clip's `--precision
amp_bf16`), and the ratio is against the bf16 one, since ours autocasts too.

    python bench/unicl_step.py [--model tiny-vit] [--batch 128] [--steps 6] [--device cpu] [--peak-tflops T] \
        [--profile]

On a GPU it also prints where our loop makes the host wait for the GPU (one wait a step is expected: the loss,
read after the backward pass). `--profile` also prints the 15 operations that take the most device time in two of
our steps (torch.profiler).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import open_clip
import torch
from timing import add_device_arg, clock, device_waits

from clipadapt import load_backbone
from clipadapt.data import Sample
from clipadapt.pretraining.unicl import PretrainConfig, PretrainData, UniCLPretrainer
from clipadapt.training.distributed import gpu_training_settings

CAPTION = "a small striped red star on a dark background"
WARM_UP_STEPS = 5  # untimed, on a GPU
PROFILED_STEPS = 2


def our_trainer(backbone, images: torch.Tensor, steps: int, batch: int) -> UniCLPretrainer:
    """A `UniCLPretrainer` of `steps` + 1 steps over the one batch (the loader replaced): half image-label samples,
    half captions."""
    classes = [f"class {c}" for c in range(batch // 2)]
    data = PretrainData(
        classes,
        [Sample(Path("unused.png"), c) for c in range(batch // 2)],
        [Sample(Path("unused.png"), -1, CAPTION) for _ in range(batch - batch // 2)],
    )
    config = PretrainConfig(epochs=steps + 1, batch_size=batch, checkpoint_every=10**9)
    trainer = UniCLPretrainer(backbone, config, data)
    indices = torch.arange(batch)
    trainer._batches = lambda epoch, offset: iter([(images, None, indices)])  # one step per epoch
    return trainer


@contextlib.contextmanager
def after_each_step(trainer: UniCLPretrainer, hook: Callable[[], object]) -> Iterator[None]:
    """`hook` runs after each of the trainer's steps (beside its own after-step work, the logit-scale clamp)."""
    clamp = trainer._clamp_logit_scale
    trainer._clamp_logit_scale = lambda: (clamp(), hook())
    try:
        yield
    finally:
        trainer._clamp_logit_scale = clamp


def our_seconds(trainer: UniCLPretrainer) -> float:
    """Seconds per step of `UniCLPretrainer.fit` over its steps after the first (which builds the optimizer state).
    The clock (which waits for the GPU) is read after the first step and the last only, as in the plain arm: read
    after every step, it would also time the GPU idling while the host queues the next step."""
    steps, ended, stamps = trainer.config.epochs, [0], []  # one step per epoch

    def stamp() -> None:
        ended[0] += 1
        if ended[0] in (1, steps):
            stamps.append(clock())

    with after_each_step(trainer, stamp):
        trainer.fit(progress=False)
    return (stamps[1] - stamps[0]) / (steps - 1)


def plain_seconds(
    model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, steps: int, bf16: bool = False
) -> float:
    """Seconds per step of open_clip's own training step (fp32, or bf16 autocast as its `--precision amp_bf16`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    loss_fn = open_clip.loss.ClipLoss()
    model.train()
    start = None
    for step in range(steps + 1):
        if step == 1:  # after the warm-up step
            start = clock()
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            image_features, text_features, scale = model(images, tokens)[:3]
            loss = loss_fn(image_features, text_features, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (clock() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-vit", help="architecture (random weights)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed steps in each run")
    add_device_arg(parser)
    parser.add_argument("--profile", action="store_true", help="print our step's top operations by device time")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="the device's peak (e.g. 989 for an H100's dense bf16): prints MFU",
    )
    args = parser.parse_args()
    if args.steps < 1 or args.batch < 2:
        parser.error("--steps must be 1 or more and --batch 2 or more")
    torch.manual_seed(0)
    backbone = load_backbone(args.model, device=args.device)
    initial = copy.deepcopy(backbone.model)
    fresh = lambda: copy.deepcopy(initial).to(args.device)  # noqa: E731  each open_clip arm from the same weights
    images = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size, device=args.device)

    trainer = our_trainer(backbone, images, args.steps, args.batch)
    tokens = trainer._texts(torch.arange(args.batch), 0)[0]  # the same texts, at full context length
    on_gpu = images.device.type == "cuda"  # our loop autocasts to bf16 there; so can open_clip's
    if on_gpu:
        gpu_training_settings()  # TF32 and cuDNN autotuning, as open_clip's trainer and `clipadapt pretrain` set
        # Untimed steps first: a fresh GPU machine's first heavy run pays for clock ramp-up and lazily loaded
        # kernels (on an H200 the first timed arm of a run took up to twice its later time).
        plain_seconds(fresh(), images, tokens, WARM_UP_STEPS, bf16=True)
    plain = plain_seconds(fresh(), images, tokens, args.steps)
    ours = our_seconds(trainer)
    plain_bf16 = plain_seconds(fresh(), images, tokens, args.steps, bf16=True) if on_gpu else None
    flops = step_flops(fresh(), images, tokens)
    print(
        f"{args.model}, batch {args.batch}, {args.device}, {torch.get_num_threads()} threads: "
        f"ours {args.batch / ours:.0f} images/s ({ours * 1000:.0f} ms/step), "
        f"plain open_clip {'fp32 (TF32 matmuls) ' if on_gpu else ''}{args.batch / plain:.0f} images/s "
        f"({plain * 1000:.0f} ms/step)"
    )
    if plain_bf16 is not None:
        print(
            f"plain open_clip under bf16 autocast {args.batch / plain_bf16:.0f} images/s "
            f"({plain_bf16 * 1000:.0f} ms/step): the baseline of the ratio on a GPU, where ours autocasts too"
        )
    achieved = flops / ours / 1e12
    mfu = f", MFU {100 * achieved / args.peak_tflops:.1f}% of {args.peak_tflops:g}" if args.peak_tflops else ""
    print(f"a full-length step is {flops / 1e9:.1f} GFLOP: ours at {achieved:.3f} TFLOP/s{mfu}")
    if on_gpu:
        trainer.config.epochs = 3  # one step each
        print(
            f"host waits for the GPU in 3 of our steps, fit's start and end included: "
            f"{device_waits(lambda: trainer.fit(progress=False))}"
        )
    if args.profile:
        print(profile_table(trainer, images))
    print(f"unicl_step ratio={(plain_bf16 or plain) / ours:.2f} target=1.0")


def profile_table(trainer: UniCLPretrainer, images: torch.Tensor) -> str:
    """The top operations of our loop by self device time, over PROFILED_STEPS steps of a fresh fit after its first
    (which builds the optimizer state)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if images.is_cuda else [])
    trainer.config.epochs = 1 + PROFILED_STEPS
    sort = "self_cuda_time_total" if images.is_cuda else "self_cpu_time_total"
    tables = []  # the profiler hands over its events when the active steps end
    with (
        profile(
            activities=activities,
            schedule=schedule(wait=0, warmup=1, active=PROFILED_STEPS, repeat=1),
            on_trace_ready=lambda p: tables.append(
                p.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=60)
            ),
        ) as prof,
        after_each_step(trainer, lambda: (clock(), prof.step())),
    ):  # (clock: a step's kernels finish in it)
        trainer.fit(progress=False)
    return f"our loop's top operations over {PROFILED_STEPS} steps:\n" + "".join(tables)


def step_flops(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> float:
    """Forward + backward FLOPs of the plain step (full-length text), as torch's FlopCounterMode counts them: the
    numerator of MFU (our truncated text does less, so ours is credited a little more than it computes)."""
    from torch.utils.flop_counter import FlopCounterMode

    loss_fn = open_clip.loss.ClipLoss()
    with FlopCounterMode(display=False) as counter:
        image_features, text_features, scale = model(images, tokens)[:3]
        loss_fn(image_features, text_features, scale).backward()
    return float(counter.get_total_flops())


if __name__ == "__main__":
    main()
