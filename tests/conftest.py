"""Shared fixtures: a small colour data set and a micro CLIP whose zero-shot answer on it is known."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from clipadapt import load_backbone
from clipadapt.data import load_dataset
from clipadapt.text import zeroshot_weights
from clipadapt.training.distributed import available_cores


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers) each worker takes its share of the cores: the suite's
    micro and tiny models run small matrix products, which a second thread speeds up far less than a second test
    running beside them does."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, available_cores() // workers))


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
TEMPLATE = "a photo of a {}."


def flip_last_byte(path):
    """Damage a safetensors file where its header still parses: in the tensor data."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def tensorboard_scalars(log_dir, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of scalar `tag` in the event files under `log_dir`, as tensorboard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir)).Reload().Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def colour_images(root, per_split=None, colours=COLOURS, seed=0):
    per_split = per_split or {"train": 4, "test": 6}
    rng = np.random.default_rng(seed)
    for split, count in per_split.items():
        for name, rgb in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def colour_world(tmp_path_factory):
    """A colour data set and a micro CLIP whose image projection is solved so that each colour's images point at
    the text embedding of "a photo of a <colour>.": zero-shot's answer is known to be right."""
    root = colour_images(tmp_path_factory.mktemp("colours"))
    torch.manual_seed(0)
    backbone = load_backbone("micro-vit")
    names = list(COLOURS)
    targets = zeroshot_weights(backbone, names, [TEMPLATE])
    visual = backbone.model.visual
    splits = load_dataset(f"imagefolder:{root}")
    transform = backbone.image_transform()
    hidden, wanted = [], []
    with torch.no_grad():
        for sample in splits.train:
            image = transform(Image.open(sample.path).convert("RGB"))[None]
            tokens = visual.transformer(visual._embeds(image))
            hidden.append(visual.ln_post(tokens[:, 0]))
            wanted.append(targets[names.index(splits.classnames[sample.label])])
        solution = torch.linalg.lstsq(torch.cat(hidden), torch.stack(wanted)).solution
        visual.proj.copy_(solution)
    weights = tmp_path_factory.mktemp("weights") / "colour.safetensors"
    backbone.save(weights)
    return root, weights


@pytest.fixture(scope="module")
def backbone():
    """A micro CLIP with seeded random weights."""
    torch.manual_seed(0)
    return load_backbone("micro-vit")


@pytest.fixture
def one_thread():
    """Micro models run many tiny matrix products, where a second thread only adds synchronisation (and stalls
    badly when another process holds the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
