"""How the report shows MP-FGVC's `part_overlap` (where SsVP's kept tokens land against the parts the data set
records): two columns in the tables of full and few-shot runs, and the kept tokens drawn on example images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ...data import load_image
from ...errors import ClipadaptError
from ...views import Column, DiagnosticView, Plot, Run, pyplot, register_view, save_figure, skip_plot


def model_input(path: Path, size: int, resize: int | Sequence[int]) -> Image.Image:
    """The image as the model saw it: the shorter side resized to `resize` (or squashed to [height, width]), the
    centre `size` x `size` crop (as the run's transform and `box_in_crop`)."""
    image = load_image(path)
    if isinstance(resize, (list, tuple)):
        width, height = int(resize[1]), int(resize[0])
    else:
        scale = resize / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def _overlay_examples(run: Run) -> tuple[dict, list[dict]]:
    """`part_overlap` with its examples: the run's own, or its first seed's (a multi-seed mean has none)."""
    for result in [run.metrics, *run.per_seed().values()]:
        overlap = result.get("part_overlap")
        if isinstance(overlap, dict) and overlap.get("examples"):
            return overlap, overlap["examples"]
    return {}, []


def plot_kept_tokens(runs: Sequence[Run], folder: Path, taken: set[str]) -> list[Plot]:
    """MP-FGVC's SsVP on example images: the class-token attention over patches as a heat map, the kept patches
    outlined in white, the discriminative parts' boxes in red."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    plots = []
    for run in runs:
        overlap, examples = _overlay_examples(run)
        examples = [e for e in examples if Path(e["path"]).is_file()]  # images moved since the run: nothing to draw
        if not examples:
            continue
        grid, size = overlap["grid"], overlap["image_size"]
        resize, cell = overlap["resize"], size / grid
        try:
            images = [model_input(Path(e["path"]), size, resize) for e in examples]
        except ClipadaptError as e:
            skip_plot(f"no overlays for {run.folder}: {e}")
            continue
        fig, axes = plt.subplots(1, len(examples), figsize=(2.1 * len(examples), 2.5), squeeze=False)
        for ax, example, image in zip(axes[0], examples, images):
            ax.imshow(image, extent=(0, size, size, 0))
            heat = torch.tensor(example["scores"]).reshape(grid, grid).numpy()
            ax.imshow(heat, cmap="inferno", alpha=0.45, extent=(0, size, size, 0), interpolation="nearest")
            for index in example["kept"]:
                row, col = divmod(index, grid)
                ax.add_patch(
                    Rectangle((col * cell, row * cell), cell, cell, fill=False, edgecolor="white", linewidth=1)
                )
            for x0, y0, x1, y1 in example["parts"]:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=1.5))
            ax.set_title(str(example.get("class") or example["label"])[:22], fontsize=7)
            ax.axis("off")
        fig.suptitle(f"{run.method}: kept tokens (white), attention (heat), parts (red)", fontsize=8)
        plots.append(
            Plot(
                f"Where SsVP looks: {run.method} on {run.dataset} "
                f"({overlap.get('tokens_kept')} of {overlap.get('tokens')} patches kept)",
                save_figure(fig, folder, f"kept-tokens-{run.method}-{run.dataset}", taken),
            )
        )
    return plots


register_view(
    DiagnosticView(
        "part_overlap",
        position=1,
        columns=tuple(
            (protocol, column)
            for protocol in ("full", "fewshot")
            for column in (
                Column(
                    "kept tokens on the part (random)",
                    "pair",
                    "part_overlap.kept_tokens_on_part",
                    "part_overlap.random_tokens_on_part",
                ),
                Column(
                    "part patches kept (random)",
                    "pair",
                    "part_overlap.part_patches_kept",
                    "part_overlap.random_part_patches_kept",
                ),
            )
        ),
        plots=plot_kept_tokens,
    )
)
