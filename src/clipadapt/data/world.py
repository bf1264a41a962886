"""The image world: procedurally generated data sets, the embedded default data.

Every photo-like image shows one object (a shape with a colour, a fill pattern and a size, jittered in position,
radius and rotation) on a textured background, plus pixel noise. Class names compose words ("red star", "striped
star", "star on sand"), so a text encoder that learned the words can name compositions it never saw.

Pretraining is web-like: image-label data and noisy image-text pairs, photos of single objects.
- `pretrain` (image-label) and `captions` (image-text) show only the 48 "seen" colour-shape compositions. Captions
  run from 4 to 40 tokens, as web alt-texts do (mostly short, a long tail), so a text tower pretrained on them
  has used every position a 16-word learned prompt plus a class name needs; 3% of them are line drawings called
  "a drawing of ..." / "a sketch of ...", as the web holds a few sketches of everything. `captions` also holds
  4,800 captioned birds, as CLIP's web data and ImageNet-21k hold many: every crown and breast colour of the
  palette, every wing pattern, captions that name no part, one or two (never all three: never a species' name);
  and `pretrain` labels 64 bird species (as ImageNet-21k's bird synsets label species), 75 photos each, whose
  crowns and breasts take the palette's other four colours: every wing pattern, no downstream species.

Downstream targets sit at graded distances from that pretraining, as the CoOp benchmarks sit from CLIP's web data
(ImageNet and Caltech101 near; DTD, EuroSAT, FGVCAircraft far). Each far target models one property of a real one:
- near, drawn exactly as pretraining: `objects`, the base-to-new target: labels 0-15 are seen compositions (base),
  16-31 the 16 held-out ones (new), so CoOp's base/new split (`base_new_split`) separates seen from unseen
  compositions. Every colour and every shape is in exactly two classes of each half, so no single attribute names
  a class. `patterns` ("striped star") and `scenes` ("star on sand") are cross-data-set targets whose name words
  appear only in captions.
- the objects' 32 classes seen through a shift (as ImageNet's classes in its variants):
  `sensor`, another camera (colour cast, low light, blur and sensor noise; as ImageNet-C's corruptions or a new
  camera's photos); `clutter`, the object among two or three smaller distractor objects (as ObjectNet's and
  ImageNet-A's cluttered, non-iconic views); `sketch`, coloured line drawings on paper, which pretraining saw
  rarely (as ImageNet-Sketch).
- new tasks pretraining never showed: `textures` ("striped red": the whole frame one coloured surface at a random
  scale and angle, no object; as DTD's texture classes) and `aerial` ("star on grass": a top-down view of many
  tiny objects over a ground cover; as EuroSAT's 64-pixel land-cover tiles).
- `fine` is one superclass ("badge") whose 9 subcategories differ only in the colour of a small spot, drawn at
  the badge's top, left, right or bottom (per image); `parts.json` holds each image's spot box. A diagnostic set:
  one part, one attribute, many clean images.
- `birds` is fine-grained recognition in CUB-200-2011's regime (its regime, not its look). CUB has 200 species of
  one superclass, about 30 training and 29 test images a species; species differ in small parts (crown, wing bars,
  breast) under large variation that does not name a species (pose, scale, background, light, the rest of the
  plumage); its species names are made of words CLIP knows ("Red-winged Blackbird"). Here: 64 species of "bird",
  each a combination of three small parts, the crown's colour, the wing's pattern and the breast's colour (4 x 4 x
  4, every combination: each part value is shared by 16 species, each pair of values by 4, and every species has
  9 nearest neighbours that differ in one part only, as CUB's sparrows and warblers do); 30 training images a
  species, the world's 10 val and 30 test. Per image, shared by every species: facing left or right, tilted by up
  to 30 degrees, the bird's length 55-80% of the frame, anywhere it fits, on any of the 6 backgrounds, brown, grey or
  olive plumage elsewhere, daylight from 60% to 115% with a white-balance tint of up to 8% per channel. Names are
  "red-crowned striped-winged white-breasted bird": the colour and pattern words are the ones pretraining taught
  (and the part words and "bird" too: pretraining's birds), so the text encoder knows something about
  each part. The birds are drawn at twice the world's size (128 pixels at 64), where each part spans several
  8-pixel patches, as CUB's parts do at the paper's 448 pixels. `parts.json` holds each image's crown, wing and
  breast boxes (CUB's part locations), in the pixels of the image as written.

The world is written in the formats the loaders of `datasets.py` read (CoOp split JSON, image-text CSV), to a
temp folder renamed into place at the end, and is byte-identical for the same seed and sizes.
Specs: `world:NAME` (the default world, generated into the cache on first use) and `world:NAME:DIR`.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from clipadapt.data.datasets import (
    SPLIT_NAMES,
    DatasetSplits,
    PerClass,
    Sample,
    load_csv,
    read_split_file,
    register_dataset,
    save_split_file,
)
from clipadapt.errors import DataError
from clipadapt.paths import default_cache_dir

# Bump when the images, the layout or DEFAULT_SIZES change: the default world's cache folder is named by it.
VERSION = 6

# Saturated colours, far from each other and from the muted or dark backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (245, 225, 40),
    "green": (45, 195, 65),
    "blue": (40, 90, 235),
    "purple": (145, 60, 205),
    "pink": (250, 135, 200),
    "white": (245, 245, 245),
}
# Silhouettes chosen to stay distinct at 32-64 pixels under +-20 degrees of rotation (no square/diamond pairs).
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "moon", "arrow")
PATTERNS = ("solid", "striped", "dotted", "checkered")
SIZES = ("small", "large")
# Each background's phrases for captions, the first also used in `scenes` class names ("star on grass").
BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "grass": ("on grass", "in the grass"),
    "sand": ("on sand", "on the sand"),
    "water": ("on water", "over water"),
    "brick": ("on brick", "against a brick wall"),
    "night": ("at night", "in the night sky"),
    "stone": ("on stone", "on a stone floor"),
}

# The objects' classes seen through a shift of rendering, camera or scene (each with the objects' base/new split).
SHIFTED_DATASETS = ("sensor", "clutter", "sketch")
# Each image's random draws are seeded by its data set's place in this tuple: new data sets go at the end, so the
# images of the others stay the same.
WORLD_DATASETS = (
    "pretrain",
    "captions",
    "objects",
    "patterns",
    "scenes",
    *SHIFTED_DATASETS,
    "textures",
    "aerial",
    "fine",
    "birds",
)
TARGET_DATASETS = tuple(name for name in WORLD_DATASETS if name not in ("pretrain", "captions"))
# `textures` classes are pattern x colour (a plain "solid" surface has no texture); `aerial` ground covers are the
# backgrounds one can look down on (not a wall, not the night sky).
TEXTURE_PATTERNS = ("striped", "dotted", "checkered")
AERIAL_BACKGROUNDS = ("grass", "sand", "water", "stone")

# Colour i is held out of pretraining with shapes i and i+3, and `objects` takes colour i with shapes i+1 and i+5
# as its base classes (indices mod 8): each colour and each shape is in exactly two classes of either half.
HELD_OUT_OFFSETS = (0, 3)
BASE_OFFSETS = (1, 5)

FINE_SUPERCLASS = "badge"
# The badge's own colours exclude the spot colours, so the spot is always visible on it.
BADGE_COLOURS = ("red", "green", "blue", "purple")
MARK_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "white": (250, 250, 250),
    "yellow": (250, 230, 30),
    "orange": (250, 140, 20),
    "cyan": (30, 230, 230),
    "pink": (250, 120, 190),
    "gray": (128, 128, 128),
    "brown": (120, 70, 30),
    "lime": (150, 250, 60),
}
# Direction of the spot from the badge centre (degrees, image y axis down), before the badge's rotation.
MARK_POSITIONS: dict[str, float] = {"top": -90.0, "left": 180.0, "right": 0.0, "bottom": 90.0}

BIRD_SUPERCLASS = "bird"
# The crown and breast take the same four colours (so a colour word alone says nothing about which part it is on),
# four of the palette's that stay apart under the lighting and from the plumage; the wing takes the four patterns.
BIRD_COLOURS = ("red", "yellow", "blue", "white")
BIRD_PARTS = ("crown", "wing", "breast")
# Pretraining's labelled species (ImageNet-21k's bird synsets): crowns and breasts of the palette's other four
# colours with every wing pattern, so they share the downstream species' kinds of field marks but none of them.
PRETRAIN_BIRD_COLOURS = tuple(colour for colour in COLOURS if colour not in BIRD_COLOURS)
# The rest of the plumage, drawn per image: dull colours, as most of CUB's species are mainly brown, grey or olive.
PLUMAGE: dict[str, tuple[int, int, int]] = {"brown": (125, 90, 55), "grey": (120, 120, 116), "olive": (112, 112, 58)}
SUPERCLASSES = {"fine": FINE_SUPERCLASS, "birds": BIRD_SUPERCLASS}

# Images per class (`captions`: per seen composition); override with generate_world(..., NAME=count).
DEFAULT_SIZES: dict[str, int] = {
    # 300 labelled images and 300 captioned ones per seen composition: at 150 the tiny CLIP's validation loss
    # stopped falling (docs/world.md, "The shipped model").
    "pretrain_train": 300,
    "pretrain_val": 10,
    "pretrain_test": 10,
    "captions": 300,
    "train": 40,  # the target data sets (CoOp's 16 shots, and room for its 1-8 shot subsets)
    "val": 10,
    "test": 30,
    # The badges' train split: at 40 a class, fine-tuning the tiny model varies by +-4 points across seeds and
    # reaches 33%; at 120 it reaches 77%, where the fine-grained methods' differences can be seen.
    "fine_train": 120,
    "birds_train": 30,  # CUB-200-2011: 5,994 training images of 200 species, 30 a species
    # Captioned bird photos in `captions`: each crown and breast colour on 600 of them, each wing pattern on
    # 1,200, the exposure a seen object composition gets (300 labelled + 300 captioned photos).
    "bird_captions": 4800,
    # Labelled birds in `pretrain`: 75 photos of each of its 64 species, as many as the captioned birds.
    "pretrain_bird_train": 75,
}
# Data sets drawn at a multiple of the world's image size: CUB's photos are about 500x375 and the paper reads
# them at 448 with a 224-pixel tower, so the birds are drawn at 128 (at the default 64), where each part spans
# several 8-pixel patches; the frozen model reads them resized to its own size, a tuned tower at `image_size`.
IMAGE_SCALE: dict[str, int] = {"birds": 2}

_SUPERSAMPLE = 4  # polygons are drawn at 4x and box-filtered down: antialiased edges
_RADIUS = {"small": 0.2, "large": 0.32}  # object radius as a fraction of the image side
_MAX_ROTATION = 20.0
_MARK_RADIUS = 0.05
_MARK_DISTANCE = 0.55  # spot centre from the badge centre, in badge radii (inside the hexagon's inner circle)
_OUTLINE = (25, 25, 25)
_PATTERN_SHADE = 0.35  # pattern marks are the object's colour darkened: the hue stays visible
_PATTERN_PERIOD = 0.45  # in object radii, so a small object carries the same pattern as a large one
_NOISE_STD = 5.0
_PAPER = (236, 230, 214)
_GRAPHITE = (60, 60, 66)
# Birds: length as a fraction of the frame, tilt, daylight gain and white-balance tint (see the module docstring).
_BIRD_LENGTH = (0.55, 0.8)
_BIRD_TILT = 30.0
_DAYLIGHT_GAIN = (0.6, 1.15)
_DAYLIGHT_TINT = 0.08
_AERIAL_RADIUS = 0.07  # 4.5 pixels at 64: objects a few pixels across, as buildings in a 10 m/pixel EuroSAT tile
# The `sensor` camera: a warm white balance (tungsten light uncorrected), a third to half the light, a soft lens
# (blur sigma in pixels at 64) and high-ISO noise on top of the usual; each image jitters within these ranges.
_SENSOR_CAST = (1.2, 0.95, 0.6)
_SENSOR_GAIN = (0.35, 0.55)
_SENSOR_BLUR = (0.7, 1.2)
_SENSOR_NOISE_STD = 6.0

_CAPTION_TEMPLATES = (
    "a {size} {pattern} {colour} {shape} {where}",
    "photo of a {pattern} {colour} {shape}, {size}, {where}",
    "there is a {colour} {shape} with {pattern} fill {where}",
    "a {colour} {shape} {where}",
    "{colour} {shape}, {pattern}",
    "a {size} {colour} {shape}",
    "the {shape} is {colour} and {pattern}",
    "a {pattern} {shape} in {colour}, {where}",
    "{where}, a {size} {colour} {shape}",
    "an image of a {colour} {pattern} {shape}",
    "a {colour} {shape}, {size} and {pattern}, {where}",
    "close-up of a {size} {colour} {shape} {where}",
    # The long tail of web alt-texts: 25-40 tokens (the shipped model's text context is 40).
    "a photo taken outside of a {size} {colour} {shape} with a {pattern} fill, seen {where}; the {shape} has a "
    "dark outline around its edge and sits off the centre of the frame",
    "this is a picture of a {colour} {shape} that has a {pattern} fill; it is {size} and it was photographed {where}",
    "here you can see one {size} {colour} {shape}, {pattern}, {where}, in the middle of the frame, slightly turned",
)
# Captions of the few line drawings in pretraining (`SKETCH_CAPTION_SHARE` of them).
_SKETCH_CAPTION_TEMPLATES = (
    "a drawing of a {colour} {shape}",
    "a sketch of a {colour} {shape}",
    "a {colour} pencil drawing of a {shape}",
    "a line drawing of a {size} {colour} {shape}",
)
SKETCH_CAPTION_SHARE = 0.03

# Pretraining's birds (in `captions`): any of the world's colours on the crown and breast, any wing pattern, so the
# 64 downstream species are a quarter of the 256 combinations shown; a caption names no part, one or two (never a
# species' three), each in the species-name form ("red-crowned") or in a phrase ("with a red crown").
BIRD_CAPTION_PARTS_NAMED = (0.2, 0.5, 0.3)  # P(0, 1, 2 parts named)
_BIRD_CAPTION_TEMPLATES = (
    "a {bird} {where}",
    "photo of a {bird}, {where}",
    "{where}, a {bird}",
    "a {bird}",
    "close-up of a {bird} {where}",
    "a wild {bird} photographed {where}",
    "a photo taken outside of a {bird}, seen {where}; the bird sits off the centre of the frame and is slightly turned",
)
_BIRD_SKETCH_CAPTION_TEMPLATES = ("a drawing of a {bird}", "a sketch of a {bird}", "a pencil drawing of a {bird}")
_BIRD_PART_PHRASES = {"crown": "a {} crown", "wing": "{} wings", "breast": "a {} breast"}
# Seeds of pretraining's birds: an index of their own, past any data set's, so no other image changes.
_BIRD_CAPTIONS_SEED_INDEX = 100


# ---------------------------------------------------------------- classes


def _name(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def _compositions(offsets: Iterable[int]) -> list[tuple[str, str]]:
    return [(c, SHAPES[(i + k) % len(SHAPES)]) for i, c in enumerate(COLOURS) for k in offsets]


HELD_OUT = _compositions(HELD_OUT_OFFSETS)
SEEN = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT]


def _class_list(name: str) -> list[dict[str, str]]:
    """The defining attribute values of each class of data set `name` (index = label)."""
    if name == "pretrain":
        species = [
            {"crown": c, "wing": w, "breast": b}
            for c in PRETRAIN_BIRD_COLOURS
            for w in PATTERNS
            for b in PRETRAIN_BIRD_COLOURS
        ]
        return [{"colour": c, "shape": s} for c, s in SEEN] + species
    if name == "captions":
        return [{"colour": c, "shape": s} for c, s in SEEN]
    if name == "objects" or name in SHIFTED_DATASETS:
        return [{"colour": c, "shape": s} for c, s in _compositions(BASE_OFFSETS) + HELD_OUT]
    if name == "patterns":
        return [{"pattern": p, "shape": s} for p in PATTERNS for s in SHAPES]
    if name == "scenes":
        return [{"shape": s, "background": b} for s in SHAPES for b in BACKGROUNDS]
    if name == "textures":
        return [{"pattern": p, "colour": c} for p in TEXTURE_PATTERNS for c in COLOURS]
    if name == "aerial":
        return [{"shape": s, "background": b} for s in SHAPES for b in AERIAL_BACKGROUNDS]
    if name == "birds":
        return [{"crown": c, "wing": w, "breast": b} for c in BIRD_COLOURS for w in PATTERNS for b in BIRD_COLOURS]
    return [{"mark_colour": c} for c in MARK_COLOURS]  # fine: the spot's position is drawn per image


def _class_name(attributes: dict[str, str]) -> str:
    if "mark_colour" in attributes:
        return f"{FINE_SUPERCLASS} with {attributes['mark_colour']} spot"
    if "crown" in attributes:
        return (
            f"{attributes['crown']}-crowned {attributes['wing']}-winged {attributes['breast']}-breasted "
            f"{BIRD_SUPERCLASS}"
        )
    if "background" in attributes:
        return f"{attributes['shape']} {BACKGROUNDS[attributes['background']][0]}"
    if "shape" not in attributes:  # textures
        return f"{attributes['pattern']} {attributes['colour']}"
    return f"{attributes.get('colour') or attributes['pattern']} {attributes['shape']}"


def _split_file_name(name: str) -> str:
    return f"split_zhou_World{name.capitalize()}.json"


# How each data set draws its images: "style" (photo, sketch, or a photo through the `sensor` camera) and "layout"
# (one object, one among distractors, a full-frame texture, or a top-down view of many tiny objects).
_RENDERING: dict[str, dict[str, str]] = {
    "sensor": {"style": "sensor"},
    "clutter": {"layout": "clutter"},
    "sketch": {"style": "sketch"},
    "textures": {"layout": "texture"},
    "aerial": {"layout": "aerial"},
    "birds": {"layout": "bird"},
    "bird_captions": {"layout": "bird"},
}


_BIRD_NUISANCES = {"background": tuple(BACKGROUNDS), "plumage": tuple(PLUMAGE), "facing": ("left", "right")}


def _draw_attributes(dataset: str, fixed: dict[str, str], rng: np.random.Generator) -> dict[str, str]:
    """All attribute values of one image: the class's own, the others drawn uniformly (in a fixed key order)."""
    if dataset == "pretrain" and "crown" in fixed:  # pretraining's labelled species, drawn as the downstream birds
        dataset = "birds"
    if dataset == "textures":
        free = {"colour": tuple(COLOURS), "pattern": TEXTURE_PATTERNS}
    elif dataset == "aerial":  # each tiny object's colour and heading are drawn as it is drawn
        free = {"shape": SHAPES, "background": AERIAL_BACKGROUNDS}
    elif dataset == "fine":
        # Everything but the spot has the same distribution in every subcategory.
        free = {
            "colour": BADGE_COLOURS,
            "shape": (FINE_SUPERCLASS,),
            "pattern": ("solid",),
            "size": ("large",),
            "background": tuple(BACKGROUNDS),
            "mark_position": tuple(MARK_POSITIONS),
        }
    elif dataset == "birds":  # the nuisances; the tilt, size, place and light are drawn as the image is drawn
        free = _BIRD_NUISANCES
    elif dataset == "bird_captions":  # pretraining's birds: every part drawn, from the whole palette
        free = {"crown": tuple(COLOURS), "wing": PATTERNS, "breast": tuple(COLOURS), **_BIRD_NUISANCES}
    else:
        free = {
            "colour": tuple(COLOURS),
            "shape": SHAPES,
            "pattern": PATTERNS,
            "size": SIZES,
            "background": tuple(BACKGROUNDS),
        }
    drawn = {key: fixed[key] if key in fixed else values[rng.integers(len(values))] for key, values in free.items()}
    if dataset in ("captions", "bird_captions") and rng.uniform() < SKETCH_CAPTION_SHARE:
        drawn["style"] = "sketch"
    return {**drawn, **{key: value for key, value in fixed.items() if key not in drawn}, **_RENDERING.get(dataset, {})}


def _caption(attributes: dict[str, str], rng: np.random.Generator) -> str:
    sketch = attributes.get("style") == "sketch"
    if attributes.get("layout") == "bird":
        templates = _BIRD_SKETCH_CAPTION_TEMPLATES if sketch else _BIRD_CAPTION_TEMPLATES
        words = {"bird": _bird_words(attributes, rng)}
    else:
        templates = _SKETCH_CAPTION_TEMPLATES if sketch else _CAPTION_TEMPLATES
        words = attributes
    template = templates[rng.integers(len(templates))]
    phrases = BACKGROUNDS[attributes["background"]]
    text = template.format(where=phrases[rng.integers(len(phrases))], **words)
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _bird_words(attributes: dict[str, str], rng: np.random.Generator) -> str:
    """ "bird" with none, one or two of its parts named: "red-crowned bird with striped wings"."""
    count = int(rng.choice(len(BIRD_CAPTION_PARTS_NAMED), p=BIRD_CAPTION_PARTS_NAMED))
    named = sorted(rng.choice(len(BIRD_PARTS), size=count, replace=False))
    before, after = [], []
    for part in (BIRD_PARTS[i] for i in named):
        if rng.uniform() < 0.5:
            before.append(f"{attributes[part]}-{part}ed")
        else:
            after.append(_BIRD_PART_PHRASES[part].format(attributes[part]))
    text = " ".join([*before, BIRD_SUPERCLASS])
    return f"{text} with {' and '.join(after)}" if after else text


# ---------------------------------------------------------------- drawing


def _regular(n: int, radius: float, start: float) -> list[tuple[float, float]]:
    return [
        (radius * math.cos(start + 2 * math.pi * k / n), radius * math.sin(start + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star() -> list[tuple[float, float]]:
    outer, inner = _regular(5, 1.0, -math.pi / 2), _regular(5, 0.45, -math.pi / 2 + math.pi / 5)
    return [p for pair in zip(outer, inner) for p in pair]


def _heart() -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 2.5  # centred vertically
    return list(zip(x / 16, y / 16))


_W = 0.33  # half-width of the cross's arms
# Unit outlines (radius about 1, y down, pointing up); circle and moon are drawn as discs.
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": _regular(3, 1.1, -math.pi / 2),
    "star": _star(),
    "cross": [
        (-_W, -1),
        (_W, -1),
        (_W, -_W),
        (1, -_W),
        (1, _W),
        (_W, _W),
        (_W, 1),
        (-_W, 1),
        (-_W, _W),
        (-1, _W),
        (-1, -_W),
        (-_W, -_W),
    ],
    "heart": _heart(),
    "arrow": [(0, -1), (0.75, -0.1), (0.3, -0.1), (0.3, 1), (-0.3, 1), (-0.3, -0.1), (-0.75, -0.1)],
    FINE_SUPERCLASS: _regular(6, 1.0, 0.0),  # a hexagon with flat top and bottom
}


@lru_cache(maxsize=4)
def _pixel_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each [n, n]."""
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    return ys, xs


def _disc(n: int, cx: float, cy: float, radius: float) -> np.ndarray:
    ys, xs = _pixel_grid(n)
    # Coverage falls off over one pixel at the rim: an antialiased disc without supersampling.
    return np.clip(radius + 0.5 - np.hypot(xs - cx, ys - cy), 0.0, 1.0)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return points @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _shape_alpha(shape: str, cx: float, cy: float, radius: float, angle: float, n: int) -> np.ndarray:
    """Coverage [n, n] in [0, 1] of the shape centred at (cx, cy)."""
    if shape == "circle":
        return _disc(n, cx, cy, radius)
    if shape == "moon":
        dx, dy = _rotate(np.array([[0.45, -0.3]]), angle)[0] * radius
        return _disc(n, cx, cy, radius) * (1.0 - _disc(n, cx + dx, cy + dy, 0.8 * radius))
    return _polygon(_rotate(np.array(_POLYGONS[shape]), angle) * radius + (cx, cy), n)


def _polygon(points: np.ndarray, n: int) -> np.ndarray:
    """Coverage [n, n] of the polygon with pixel-space vertices [V, 2]."""
    canvas = Image.new("L", (n * _SUPERSAMPLE, n * _SUPERSAMPLE), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points * _SUPERSAMPLE], fill=255)
    return np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32) / 255.0


def _ellipse(n: int, cx: float, cy: float, a: float, b: float, angle: float) -> np.ndarray:
    """Coverage [n, n] of the ellipse with semi-axes a (along its own x) and b, turned by `angle` degrees."""
    ys, xs = _pixel_grid(n)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u, v = (xs - cx) * c + (ys - cy) * s, -(xs - cx) * s + (ys - cy) * c
    # Edge softened over about a pixel (distance to the rim measured along the shorter axis).
    return np.clip(0.5 + (1.0 - np.hypot(u / a, v / b)) * min(a, b), 0.0, 1.0)


def _pattern_amount(pattern: str, cx: float, cy: float, radius: float, angle: float, n: int) -> np.ndarray:
    """Where the pattern darkens the fill, [n, n] in [0, 1]; in the object's own frame so it turns with it."""
    if pattern == "solid":
        return np.zeros((n, n), dtype=np.float32)
    ys, xs = _pixel_grid(n)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u = ((xs - cx) * c + (ys - cy) * s) / radius
    v = (-(xs - cx) * s + (ys - cy) * c) / radius
    period = _PATTERN_PERIOD
    if pattern == "striped":
        # A steep sine rather than a square wave: stripe edges stay soft instead of aliasing.
        return np.clip(0.5 + 2.0 * np.sin(2 * np.pi * v / period), 0.0, 1.0)
    if pattern == "checkered":
        return np.clip(0.5 + 2.0 * np.sin(np.pi * u / (period / 2)) * np.sin(np.pi * v / (period / 2)), 0.0, 1.0)
    du, dv = u / period - np.round(u / period), v / period - np.round(v / period)
    dot = 0.28 * period * radius  # dot radius in pixels
    return np.clip(dot + 0.5 - np.hypot(du, dv) * period * radius, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, n: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Values in [-1, 1] varying smoothly over n/cells pixels (bilinear upsampling of a random grid)."""
    grid = rng.uniform(-1.0, 1.0, (cells_y + 1, cells_x + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((n, n), Image.BILINEAR))


def _background(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """A [n, n, 3] float texture; sizes are fractions of the image so 32- and 64-pixel worlds look alike."""
    ys, xs = _pixel_grid(n)
    y, x = ys / n, xs / n
    if name == "grass":
        blades = _smooth_noise(rng, n, 2, n // 2)  # thin vertical streaks
        return np.array([55, 105, 40], np.float32) + blades[..., None] * np.array([20, 35, 15], np.float32)
    if name == "sand":
        ripples = np.sin(2 * np.pi * (x + y) * 4 + rng.uniform(0, 2 * np.pi))
        grain = rng.standard_normal((n, n), dtype=np.float32)
        return np.array([205, 180, 130], np.float32) + (8 * ripples + 10 * grain)[..., None]
    if name == "water":
        waves = np.sin(
            2 * np.pi * (5 * y + 0.15 * np.sin(2 * np.pi * 2 * x + rng.uniform(0, 2 * np.pi)))
            + rng.uniform(0, 2 * np.pi)
        )
        return np.array([30, 75, 125], np.float32) + waves[..., None] * np.array([12, 20, 25], np.float32)
    if name == "brick":
        rows, width = 6, 1 / 3
        yy = y + rng.uniform(0, 1)
        row = np.floor(yy * rows).astype(np.int64)
        xx = x + rng.uniform(0, 1) + (row % 2) * width / 2  # alternate rows are offset by half a brick
        col = np.floor(xx / width).astype(np.int64)
        tint = rng.uniform(0.8, 1.15, (rows * 2 + 2, 8)).astype(np.float32)[row % (rows * 2 + 2), col % 8]
        mortar = ((yy * rows) % 1 < 0.13) | ((xx / width) % 1 < 0.06)
        brick = np.array([140, 60, 45], np.float32) * tint[..., None]
        return np.where(mortar[..., None], np.array([170, 165, 155], np.float32), brick)
    if name == "night":
        sky = np.array([10, 12, 32], np.float32) + y[..., None] * np.array([12, 8, 25], np.float32)
        count = n * n // 250
        stars_y, stars_x = rng.integers(0, n, count), rng.integers(0, n, count)
        sky[stars_y, stars_x] = rng.uniform(120, 230, (count, 1)).astype(np.float32)
        return sky
    stone = 30 * _smooth_noise(rng, n, 4, 4) + 12 * _smooth_noise(rng, n, 10, 10)  # blotches
    stone += 6 * rng.standard_normal((n, n), dtype=np.float32)
    return np.array([125, 122, 118], np.float32) + stone[..., None]


def _box(alpha: np.ndarray, threshold: float) -> list[int]:
    """[x0, y0, x1, y1] (x1, y1 exclusive, as PIL's crop) of the pixels with alpha > threshold."""
    rows, cols = np.nonzero((alpha > threshold).any(axis=1))[0], np.nonzero((alpha > threshold).any(axis=0))[0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def _dilate(alpha: np.ndarray) -> np.ndarray:
    padded = np.pad(alpha, 1)
    n_y, n_x = alpha.shape
    return np.max([padded[dy : dy + n_y, dx : dx + n_x] for dy in range(3) for dx in range(3)], axis=0)


def _erode(alpha: np.ndarray) -> np.ndarray:
    return 1.0 - _dilate(1.0 - alpha)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of [n, n, 3] (separable, edges repeated)."""
    taps = np.arange(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2).astype(np.float32)
    kernel /= kernel.sum()
    for axis in (0, 1):
        padded = np.pad(image, [(len(taps) // 2,) * 2 if a == axis else (0, 0) for a in range(3)], mode="edge")
        image = sum(w * np.take(padded, range(i, i + image.shape[axis]), axis=axis) for i, w in enumerate(kernel))
    return image


def _paper(n: int, rng: np.random.Generator) -> np.ndarray:
    """Cream drawing paper with a soft brightness variation and grain, [n, n, 3]."""
    shade = 8 * _smooth_noise(rng, n, 2, 2) + 4 * rng.standard_normal((n, n), dtype=np.float32)
    return np.array(_PAPER, np.float32) + shade[..., None]


def _pencil_ink(n: int, rng: np.random.Generator) -> np.ndarray:
    """How much of a colour loose diagonal pencil hatching lays down, [n, n, 1] in [0.35, 0.85]."""
    ys, xs = _pixel_grid(n)
    turn = math.radians(float(rng.uniform(20, 70)))
    period = max(2.0, n / 16)
    hatch = np.clip(1.5 * np.sin(2 * np.pi * (xs * math.cos(turn) + ys * math.sin(turn)) / period), 0.0, 1.0)
    return (0.35 + 0.5 * hatch)[..., None]


def _draw_object(
    image: np.ndarray,
    shape: str,
    colour: str,
    pattern: str,
    cx: float,
    cy: float,
    radius: float,
    angle: float,
    sketch: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """`image` with the object drawn on it, and the object's coverage [n, n]."""
    n = image.shape[0]
    alpha = _shape_alpha(shape, cx, cy, radius, angle, n)
    rgb = np.array(COLOURS[colour], np.float32)
    shade = _pattern_amount(pattern, cx, cy, radius, angle, n)
    if sketch:
        # A coloured-pencil drawing: a graphite outline, the colour laid in loose diagonal hatching, the pattern
        # pencilled over it.
        colour_ink = alpha[..., None] * _pencil_ink(n, rng)
        image = image * (1.0 - colour_ink) + rgb * colour_ink
        graphite = np.clip(_dilate(alpha) - _erode(alpha) + 0.45 * shade * alpha, 0.0, 1.0)[..., None]
        return image * (1.0 - graphite) + np.array(_GRAPHITE, np.float32) * graphite, alpha
    fill = rgb * (1.0 - shade[..., None] * (1.0 - _PATTERN_SHADE))
    # A one-pixel dark outline keeps the silhouette readable on any background.
    outer = _dilate(alpha)[..., None]
    a = alpha[..., None]
    return image * (1.0 - outer) + np.array(_OUTLINE, np.float32) * (outer - a) + fill * a, alpha


def _free_spot(
    rng: np.random.Generator, n: int, radius: float, taken: list[tuple[float, float, float]], tries: int = 20
) -> tuple[float, float]:
    """A centre for an object of `radius` inside the image, clear of the `taken` (x, y, r) discs if one is found
    in `tries` draws (else the last draw: a crowded image may overlap)."""
    margin = min(1.05 * radius + 1.0, n / 2)  # (a bird at 80% of a small frame just fits)
    for _ in range(tries):
        cx, cy = (float(v) for v in rng.uniform(margin, n - margin, 2))
        if all(math.hypot(cx - x, cy - y) > radius + r for x, y, r in taken):
            break
    return cx, cy


# The bird in its own frame: facing right, y down, the body's centre at the origin, lengths in bird lengths.
# Ellipses: centre, semi-axes and tilt in degrees; the crown is the head's upper half.
_BIRD_ELLIPSES: dict[str, tuple[tuple[float, float], float, float, float]] = {
    "body": ((0.0, 0.0), 0.30, 0.17, 0.0),
    "breast": ((0.14, 0.07), 0.16, 0.12, 0.0),
    "wing": ((-0.11, -0.05), 0.24, 0.11, 8.0),
    "head": ((0.30, -0.17), 0.14, 0.14, 0.0),
    "eye": ((0.345, -0.16), 0.025, 0.025, 0.0),
}
_BIRD_POLYGONS = {
    "tail": [(-0.24, -0.03), (-0.52, -0.13), (-0.50, 0.05)],
    "bill": [(0.39, -0.205), (0.53, -0.155), (0.39, -0.115)],
}
_BIRD_EXTENT = ((0.0, -0.05), 0.56)  # a disc holding the whole bird under any tilt
_WING_PATTERN_PERIOD = 0.15  # in bird lengths: 5-8 pixels at 64, about three periods along the wing
_BILL = (70, 62, 52)
_EYE = (15, 15, 15)


def _draw_bird(
    image: np.ndarray, attributes: dict[str, str], rng: np.random.Generator, sketch: bool = False
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """`image` with the bird drawn on it, the bird's box and its parts' boxes (the visible pixels of each).
    `sketch`: a coloured-pencil drawing (graphite outlines, each colour in loose hatching), as `_draw_object`'s."""
    n = image.shape[0]
    length = n * float(rng.uniform(*_BIRD_LENGTH))
    angle = float(rng.uniform(-_BIRD_TILT, _BIRD_TILT))
    flip = -1.0 if attributes["facing"] == "left" else 1.0
    (ex, ey), extent = _BIRD_EXTENT
    cx, cy = _free_spot(rng, n, extent * length, [])
    origin = np.array([cx, cy]) - _rotate(np.array([[flip * ex, ey]]), angle)[0] * length

    def place(points: list[tuple[float, float]]) -> np.ndarray:  # bird frame -> pixels
        return _rotate(np.array(points) * (flip, 1.0), angle) * length + origin

    alpha = {
        name: _ellipse(n, *place([centre])[0], a * length, b * length, flip * tilt + angle)
        for name, (centre, a, b, tilt) in _BIRD_ELLIPSES.items()
    }
    alpha.update({name: _polygon(place(points), n) for name, points in _BIRD_POLYGONS.items()})
    hx, hy = place([_BIRD_ELLIPSES["head"][0]])[0]
    ys, xs = _pixel_grid(n)
    above = np.clip(
        0.5 - (-(xs - hx) * math.sin(math.radians(angle)) + (ys - hy) * math.cos(math.radians(angle))), 0.0, 1.0
    )
    alpha["crown"] = alpha["head"] * above
    alpha["breast"] = alpha["breast"] * alpha["body"] * (1.0 - alpha["wing"]) * (1.0 - alpha["head"])

    plumage = np.array(PLUMAGE[attributes["plumage"]], np.float32) * float(rng.uniform(0.92, 1.08))
    wing_centre = place([_BIRD_ELLIPSES["wing"][0]])[0]
    marks = _pattern_amount(attributes["wing"], *wing_centre, _WING_PATTERN_PERIOD / _PATTERN_PERIOD * length, angle, n)
    wing = plumage * 0.85 * (1.0 - marks[..., None] * (1.0 - _PATTERN_SHADE))
    silhouette = np.max([alpha[name] for name in ("body", "head", "tail", "bill")], axis=0)
    outline = _dilate(silhouette)[..., None]
    ink = np.ones((n, n, 1), np.float32)
    if sketch:
        ink = _pencil_ink(n, rng)
        outline = np.clip(outline - silhouette[..., None], 0.0, 1.0)  # a line around the bird, not a filled shape
    edge = np.array(_GRAPHITE if sketch else _OUTLINE, np.float32)
    image = image * (1.0 - outline) + edge * outline
    for name, fill in (
        ("tail", plumage * 0.8),
        ("body", plumage),
        ("breast", COLOURS[attributes["breast"]]),
        ("wing", wing),
        ("head", plumage),
        ("crown", COLOURS[attributes["crown"]]),
        ("eye", _EYE),
        ("bill", _BILL),
    ):
        a = alpha[name][..., None] * ink
        image = image * (1.0 - a) + np.asarray(fill, np.float32) * a
    wing_edge = 0.6 * (_dilate(alpha["wing"]) - alpha["wing"])[..., None] * alpha["body"][..., None]
    image = image * (1.0 - wing_edge) + edge * wing_edge
    boxes = {"box": _box(silhouette, 0.5), "parts": {part: _box(alpha[part], 0.0) for part in BIRD_PARTS}}
    return image, boxes


def _daylight(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The scene in another daylight: overall brightness and a white-balance tint."""
    tint = rng.uniform(1.0 - _DAYLIGHT_TINT, 1.0 + _DAYLIGHT_TINT, 3).astype(np.float32)
    return image * tint * float(rng.uniform(*_DAYLIGHT_GAIN))


def _sensor(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo as another camera takes it: warm white balance, low light, a soft lens and high-ISO noise."""
    n = image.shape[0]
    cast = np.array(_SENSOR_CAST, np.float32) * rng.uniform(0.93, 1.07, 3).astype(np.float32)
    image = _blur(image, float(rng.uniform(*_SENSOR_BLUR)) * n / 64) * cast * float(rng.uniform(*_SENSOR_GAIN))
    return image + _SENSOR_NOISE_STD * rng.standard_normal(image.shape, dtype=np.float32)


def _render(attributes: dict[str, str], seed: tuple[int, ...], n: int) -> tuple[np.ndarray, dict[str, list[int]]]:
    """The image [n, n, 3] uint8 and its boxes ("box": the object, the whole frame for textures and aerial views;
    "parts": the named boxes of the parts that decide the class, for badges and birds).

    The spot uses no random draws, so the same seed with another spot gives the same image outside the spot.
    """
    rng = np.random.default_rng(seed)
    style, layout = attributes.get("style", "photo"), attributes.get("layout", "single")
    frame = [0, 0, n, n]
    if layout == "texture":
        # The surface at a random scale (stripe period 4-12 pixels at 64) and angle, lit from one side.
        scale, angle = n * float(rng.uniform(0.15, 0.4)), float(rng.uniform(0, 180))
        centre = rng.uniform(0, n, 2)
        shade = _pattern_amount(attributes["pattern"], *centre, scale, angle, n)[..., None]
        ys, xs = _pixel_grid(n)
        light = (
            1.0
            + 0.3 * ((xs - n / 2) * math.cos(math.radians(angle)) + (ys - n / 2) * math.sin(math.radians(angle))) / n
        )
        image = np.array(COLOURS[attributes["colour"]], np.float32) * (1.0 - shade * (1.0 - _PATTERN_SHADE))
        image = image * light[..., None]
        boxes = {"box": frame}
    elif layout == "aerial":
        # Seen from above: 6-12 tiny objects of the class's shape (any colour, any heading) over the ground cover.
        image = _background(attributes["background"], n, rng)
        taken: list[tuple[float, float, float]] = []
        for _ in range(int(rng.integers(6, 13))):
            radius = n * _AERIAL_RADIUS * float(rng.uniform(0.85, 1.15))
            cx, cy = _free_spot(rng, n, radius, taken)
            taken.append((cx, cy, radius))
            colour = list(COLOURS)[rng.integers(len(COLOURS))]
            image, _ = _draw_object(
                image, attributes["shape"], colour, "solid", cx, cy, radius, float(rng.uniform(0, 360)), False, rng
            )
        boxes = {"box": frame}
    elif layout == "bird" and style == "sketch":
        image, boxes = _draw_bird(_paper(n, rng), attributes, rng, sketch=True)
    elif layout == "bird":
        image, boxes = _draw_bird(_background(attributes["background"], n, rng), attributes, rng)
        image = _daylight(image, rng)
    else:
        sketch = style == "sketch"
        image = _paper(n, rng) if sketch else _background(attributes["background"], n, rng)
        radius = n * _RADIUS[attributes["size"]] * float(rng.uniform(0.9, 1.1))
        angle = float(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
        cx, cy = _free_spot(rng, n, radius, [])
        if layout == "clutter":
            # Two or three smaller objects of any composition, around (and partly under) the class's object.
            for _ in range(int(rng.integers(2, 4))):
                small = radius * float(rng.uniform(0.5, 0.7))
                dx, dy = _free_spot(rng, n, small, [(cx, cy, 0.8 * radius)])
                image, _ = _draw_object(
                    image,
                    SHAPES[rng.integers(len(SHAPES))],
                    list(COLOURS)[rng.integers(len(COLOURS))],
                    PATTERNS[rng.integers(len(PATTERNS))],
                    dx,
                    dy,
                    small,
                    float(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)),
                    False,
                    rng,
                )
        image, alpha = _draw_object(
            image, attributes["shape"], attributes["colour"], attributes["pattern"], cx, cy, radius, angle, sketch, rng
        )
        boxes = {"box": _box(alpha, 0.5)}
        if "mark_colour" in attributes:
            direction = math.radians(MARK_POSITIONS[attributes["mark_position"]] + angle)
            mx = cx + _MARK_DISTANCE * radius * math.cos(direction)
            my = cy + _MARK_DISTANCE * radius * math.sin(direction)
            mark = _disc(n, mx, my, _MARK_RADIUS * n)[..., None]
            image = image * (1.0 - mark) + np.array(MARK_COLOURS[attributes["mark_colour"]], np.float32) * mark
            boxes["parts"] = {"spot": _box(mark[..., 0], 0.0)}
    image = image + _NOISE_STD * rng.standard_normal(image.shape, dtype=np.float32)
    if style == "sensor":
        image = _sensor(image, rng)
    return (np.clip(image, 0, 255) + 0.5).astype(np.uint8), boxes


# ---------------------------------------------------------------- generation


@dataclass(frozen=True)
class _ImageSpec:
    path: str  # relative to the world folder
    seed: tuple[int, ...]
    attributes: dict[str, str]
    split: str
    label: int
    caption: str | None = None


def _folder_name(text: str) -> str:
    return text.replace(" ", "_")


def _counts(name: str, sizes: dict[str, int], attributes: dict[str, str]) -> dict[str, int]:
    """Images per split of the class of data set `name` with the defining `attributes`."""
    if name == "pretrain":
        counts = {split: sizes[f"pretrain_{split}"] for split in SPLIT_NAMES}
        return {**counts, "train": sizes["pretrain_bird_train"]} if "crown" in attributes else counts
    if name == "captions":
        return {"train": sizes["captions"]}
    if name in ("fine", "birds"):
        return {"train": sizes[f"{name}_train"], "val": sizes["val"], "test": sizes["test"]}
    return {split: sizes[split] for split in SPLIT_NAMES}


def _plan(seed: int, sizes: dict[str, int]) -> list[_ImageSpec]:
    """Every image of the world with its attribute values; each image's random draws come from its own seed,
    so the result does not depend on how the work is spread over processes."""
    specs = []
    for index, name in enumerate(WORLD_DATASETS):
        for label, fixed in enumerate(_class_list(name)):
            counts = _counts(name, sizes, fixed)
            folder = _folder_name(_class_name(fixed))
            splits = [split for split, count in counts.items() for _ in range(count)]
            for i, split in enumerate(splits):
                rng = np.random.default_rng([seed, index, label, i, 0])
                attributes = _draw_attributes(name, fixed, rng)
                specs.append(
                    _ImageSpec(
                        path=f"{name}/images/{folder}/{i}.png",
                        seed=(seed, index, label, i, 1),
                        attributes=attributes,
                        split=split,
                        label=label,
                        caption=_caption(attributes, rng) if name == "captions" else None,
                    )
                )
    for i in range(sizes["bird_captions"]):  # pretraining's birds, in the image-text half
        rng = np.random.default_rng([seed, _BIRD_CAPTIONS_SEED_INDEX, 0, i, 0])
        attributes = _draw_attributes("bird_captions", {}, rng)
        specs.append(
            _ImageSpec(
                path=f"captions/images/{BIRD_SUPERCLASS}/{i}.png",
                seed=(seed, _BIRD_CAPTIONS_SEED_INDEX, 0, i, 1),
                attributes=attributes,
                split="train",
                label=len(SEEN),  # unused: each caption is its own class
                caption=_caption(attributes, rng),
            )
        )
    return specs


def _render_file(task: tuple[str, int, _ImageSpec]) -> dict[str, list[int]]:
    root, image_size, spec = task
    pixels, boxes = _render(spec.attributes, spec.seed, image_size * IMAGE_SCALE.get(spec.path.split("/")[0], 1))
    # Level 1: noisy pixels barely compress anyway, and encoding time adds up over the world.
    Image.fromarray(pixels).save(Path(root) / spec.path, format="PNG", compress_level=1)
    return boxes


def _render_all(
    root: Path, image_size: int, specs: list[_ImageSpec], workers: int, progress: bool
) -> Iterator[dict[str, list[int]]]:
    tasks = [(str(root), image_size, spec) for spec in specs]
    bar = dict(total=len(tasks), desc="generating image world", unit="img", disable=not progress)
    if workers <= 1:
        yield from tqdm(map(_render_file, tasks), **bar)
        return
    # fork: the workers need only numpy and PIL, and a spawned one would re-import torch (seconds).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield from tqdm(pool.imap(_render_file, tasks, chunksize=64), **bar)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _world_config(seed: int, image_size: int, sizes: dict[str, int]) -> dict[str, Any]:
    return {"version": VERSION, "seed": seed, "image_size": image_size, "sizes": sizes}


def _write_world(root: Path, seed: int, image_size: int, sizes: dict[str, int], workers: int, progress: bool) -> None:
    specs = _plan(seed, sizes)
    for folder in sorted({str(Path(spec.path).parent) for spec in specs}):
        (root / folder).mkdir(parents=True)
    boxes = list(_render_all(root, image_size, specs, workers, progress))

    datasets: dict[str, Any] = {}
    for name in WORLD_DATASETS:
        folder = root / name
        mine = [(spec, box) for spec, box in zip(specs, boxes) if spec.path.startswith(f"{name}/")]
        # Paths relative to the data set folder, which holds the split file: what `coop:NAME:DIR` expects.
        _write_json(
            folder / "image_attributes.json",
            {
                spec.path[len(name) + 1 :]: {
                    **spec.attributes,
                    **{key: value for key, value in box.items() if key != "parts"},
                }
                for spec, box in mine
            },
        )
        classes = _class_list(name)
        classnames = [_class_name(attributes) for attributes in classes]
        if name == "captions":
            with (folder / "captions.csv").open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(["image", "caption"])
                writer.writerows([spec.path[len(name) + 1 :], spec.caption] for spec, _ in mine)
            birds = sum(spec.attributes.get("layout") == "bird" for spec, _ in mine)
            datasets[name] = {
                "file": f"{name}/captions.csv",
                "compositions": classnames,
                "images": len(mine),
                "birds": birds,
            }
            continue
        splits = {
            split: [Sample(root / spec.path, spec.label) for spec, _ in mine if spec.split == split]
            for split in SPLIT_NAMES
        }
        save_split_file(folder / _split_file_name(name), splits, folder, classnames)
        _write_json(folder / "attributes.json", dict(zip(classnames, classes)))
        datasets[name] = {"split_file": f"{name}/{_split_file_name(name)}", "classes": classnames, "images": len(mine)}
        if name in SUPERCLASSES:
            _write_json(folder / "parts.json", {spec.path[len(name) + 1 :]: box["parts"] for spec, box in mine})
            datasets[name]["superclass"] = SUPERCLASSES[name]
        if name in IMAGE_SCALE:
            datasets[name]["image_size"] = image_size * IMAGE_SCALE[name]
    new_classes = [_name(c, s) for c, s in HELD_OUT]
    (root / "objects" / "unseen_classes.txt").write_text("".join(f"{c}\n" for c in new_classes), encoding="utf-8")
    datasets["objects"].update(
        base_classes=[_name(c, s) for c, s in _compositions(BASE_OFFSETS)], new_classes=new_classes
    )

    _write_json(
        root / "world.json",
        {
            **_world_config(seed, image_size, sizes),
            "vocabulary": {
                "colour": COLOURS,
                "shape": SHAPES,
                "pattern": PATTERNS,
                "size": SIZES,
                "background": BACKGROUNDS,
                "mark_colour": MARK_COLOURS,
                "mark_position": list(MARK_POSITIONS),
                "bird_colour": BIRD_COLOURS,
                "bird_part": BIRD_PARTS,
                "plumage": PLUMAGE,
            },
            "seen_compositions": [_name(c, s) for c, s in SEEN],
            "held_out_compositions": new_classes,
            "datasets": datasets,
        },
    )


def _is_world(path: Path, config: dict[str, Any]) -> bool:
    """Whether `path` holds a complete world generated with `config` (world.json is written last)."""
    try:
        written = json.loads((path / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return {key: written.get(key) for key in config} == config


def generate_world(
    out: Path,
    seed: int = 0,
    image_size: int = 64,
    *,
    progress: bool = True,
    workers: int | None = None,
    **sizes: int,
) -> Path:
    """Write the image world into `out` (which must not exist, or be empty) and return it.

    `sizes` override DEFAULT_SIZES (images per class and split). The world is built in a temp folder beside
    `out` and renamed into place, so an interrupted run leaves no partial world; if `out` already holds the same
    world (same version, seed, size and sizes), e.g. from a concurrent run, it is kept and returned.
    `workers` processes draw the images (default: the CPU count, one process for small worlds).
    """
    unknown = sorted(set(sizes) - set(DEFAULT_SIZES))
    if unknown:
        raise DataError(f"unknown world size(s) {', '.join(unknown)}; expected some of {', '.join(DEFAULT_SIZES)}")
    sizes = {**DEFAULT_SIZES, **sizes}
    bad = [f"{key}={value}" for key, value in sizes.items() if not isinstance(value, int) or value < 1]
    if bad:
        raise DataError(f"world sizes must be positive integers, got {', '.join(bad)}")
    if image_size < 16:
        raise DataError(f"world images must be at least 16 pixels wide, got {image_size}")

    out = Path(out).expanduser().absolute()
    config = _world_config(seed, image_size, sizes)
    if _is_world(out, config):
        return out
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        other_world = (out / "world.json").exists()
        what = "holds a world generated with other settings" if other_world else "is not an empty folder"
        raise DataError(f"cannot generate the image world into {out}: it {what}; remove it or choose another folder")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        total = sizes["bird_captions"] + sum(
            sum(_counts(name, sizes, fixed).values()) for name in WORLD_DATASETS for fixed in _class_list(name)
        )
        # Below a few hundred images starting worker processes costs more than it saves.
        workers = 1 if total < 500 else (workers or os.cpu_count() or 1)
        _write_world(tmp, seed, image_size, sizes, workers, progress)
        try:
            os.rename(tmp, out)  # atomic; replaces an empty folder but never a non-empty one
        except OSError as exc:
            if not _is_world(out, config):
                raise DataError(f"cannot move the generated image world into {out}: {exc}") from exc
            shutil.rmtree(tmp)  # another process finished the same world first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------- loading


def default_world(progress: bool = True) -> Path:
    """The default world (seed 0, default sizes) in the cache folder, generated there on first use."""
    return generate_world(default_cache_dir() / "world" / f"v{VERSION}-seed0", seed=0, progress=progress)


def _world_dir(directory: str) -> Path:
    world = Path(directory).expanduser().absolute() if directory else default_world()
    if not (world / "world.json").is_file():
        raise DataError(f"{world} is not a generated image world (no world.json); generate one with generate_world")
    return world


@register_dataset("world")
def load_world(arg: str) -> DatasetSplits:
    """NAME or NAME:DIR: data set NAME of the default world, or of the world generated into DIR."""
    name, _, directory = arg.partition(":")
    if name not in WORLD_DATASETS:
        raise DataError(
            f"unknown world data set {name!r} in 'world:{arg}'; expected one of {', '.join(WORLD_DATASETS)}"
        )
    folder = _world_dir(directory) / name
    if name == "captions":
        return replace(load_csv(str(folder / "captions.csv")), name="WorldCaptions")

    splits, classnames = read_split_file(folder / _split_file_name(name), folder)
    try:
        attributes = json.loads((folder / "attributes.json").read_text(encoding="utf-8"))
        annotations = {"class_attributes": PerClass(attributes[classname] for classname in classnames)}
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the class attributes of {folder}: {exc!r}") from exc
    if name in SUPERCLASSES:
        annotations["superclass"] = SUPERCLASSES[name]
    if (folder / "parts.json").is_file():
        annotations["part_boxes"] = folder / "parts.json"
    return DatasetSplits(f"World{name.capitalize()}", classnames, root=folder, annotations=annotations, **splits)
