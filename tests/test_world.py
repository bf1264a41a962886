"""The generated image world: determinism, layouts read back by the real loaders, the compositional design of the
class sets, and pixels that show the attributes. Small worlds of 32-pixel images in tmp_path."""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipadapt.data import base_new_split, load_dataset, read_part_boxes, world
from clipadapt.errors import DataError

SMALL = dict(
    pretrain_train=2,
    pretrain_val=1,
    pretrain_test=1,
    captions=2,
    train=3,
    val=1,
    test=2,
    fine_train=4,
    birds_train=2,
    bird_captions=12,
    pretrain_bird_train=2,
)
TINY = {key: 1 for key in world.DEFAULT_SIZES}
SIZE = 32


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    return world.generate_world(tmp_path_factory.mktemp("world") / "w", image_size=SIZE, progress=False, **SMALL)


def image_attributes(world_dir: Path, name: str) -> dict[Path, dict]:
    data = json.loads((world_dir / name / "image_attributes.json").read_text())
    return {(world_dir / name / rel).absolute(): attributes for rel, attributes in data.items()}


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_another_seed_other_images(tmp_path):
    first = files(world.generate_world(tmp_path / "a", image_size=SIZE, progress=False, **TINY))
    # One process here, a pool there (747 images): the images must not depend on who drew them.
    again = files(world.generate_world(tmp_path / "b", image_size=SIZE, progress=False, workers=1, **TINY))
    other = files(world.generate_world(tmp_path / "c", seed=1, image_size=SIZE, progress=False, **TINY))
    assert first == again
    assert first.keys() == other.keys()
    pngs = [rel for rel in first if rel.endswith(".png")]
    assert sum(first[rel] != other[rel] for rel in pngs) > 0.9 * len(pngs)
    assert not list(tmp_path.glob(".*"))  # no temp folders left behind


def test_world_json_and_counts(world_dir):
    meta = json.loads((world_dir / "world.json").read_text())
    assert (meta["version"], meta["seed"], meta["image_size"]) == (world.VERSION, 0, SIZE)
    assert meta["sizes"] == {**world.DEFAULT_SIZES, **SMALL}
    assert meta["datasets"]["fine"]["superclass"] == world.FINE_SUPERCLASS
    assert meta["datasets"]["birds"]["superclass"] == world.BIRD_SUPERCLASS == "bird"
    assert meta["datasets"]["birds"]["image_size"] == 2 * SIZE  # drawn at twice the size, as CUB's photos
    assert meta["datasets"]["captions"]["birds"] == SMALL["bird_captions"]
    assert set(meta["datasets"]) == set(world.WORLD_DATASETS)
    for name in world.TARGET_DATASETS + ("pretrain",):
        splits = load_dataset(f"world:{name}:{world_dir}")
        per_split = {"train": SMALL["train"], "val": SMALL["val"], "test": SMALL["test"]}
        if name == "pretrain":
            per_split = {split: SMALL[f"pretrain_{split}"] for split in per_split}
        if name in ("fine", "birds"):
            per_split["train"] = SMALL[f"{name}_train"]
        for split, count in per_split.items():
            labels = Counter(s.label for s in splits.split(split))
            expected = {label: count for label in range(len(splits.classnames))}
            if name == "pretrain" and split == "train":  # its labelled birds
                expected.update(
                    dict.fromkeys(range(len(world.SEEN), len(splits.classnames)), SMALL["pretrain_bird_train"])
                )
            assert labels == expected
        assert meta["datasets"][name]["classes"] == splits.classnames
        size = SIZE * world.IMAGE_SCALE.get(name, 1)
        with Image.open(splits.train[0].path) as image:
            assert (image.mode, image.size) == ("RGB", (size, size))


def test_world_spec_and_generic_coop_spec_read_the_same_split(world_dir):
    mine = load_dataset(f"world:objects:{world_dir}")
    coop = load_dataset(f"coop:WorldObjects:{world_dir / 'objects'}")
    assert mine.classnames == coop.classnames and len(mine.classnames) == 32
    for split in ("train", "val", "test"):
        assert mine.split(split) == coop.split(split)
    assert (mine.name, mine.root, mine.template_key) == ("WorldObjects", world_dir / "objects", None)
    attributes = json.loads((world_dir / "objects" / "attributes.json").read_text())
    assert mine.annotations["class_attributes"] == [attributes[name] for name in mine.classnames]
    assert all(
        name == f"{a['colour']} {a['shape']}" for name, a in zip(mine.classnames, mine.annotations["class_attributes"])
    )


def test_class_sets_of_the_targets_and_what_pretraining_covers(world_dir):
    classes = {
        name: load_dataset(f"world:{name}:{world_dir}").classnames for name in world.TARGET_DATASETS + ("pretrain",)
    }
    # The shifted targets are the objects' classes in the objects' order (so their base/new halves are the same);
    # aerial views carry the names of scenes (as EuroSAT's land covers are named as ground-level photos are).
    for name in world.SHIFTED_DATASETS:
        assert classes[name] == classes["objects"], name
    assert set(classes["aerial"]) < set(classes["scenes"]) and len(classes["aerial"]) == 32
    distinct = ("objects", "patterns", "scenes", "textures", "fine", "birds")
    for a, b in combinations(distinct, 2):
        assert not set(classes[a]) & set(classes[b]), (a, b)
    base, new = base_new_split(load_dataset(f"world:objects:{world_dir}"))
    assert set(classes["pretrain"]) & set(classes["objects"]) == set(base.classnames)
    assert not set(classes["pretrain"]) & set(sum((classes[name] for name in distinct[1:]), []))


def test_base_is_seen_and_new_is_held_out_of_every_pretraining_image(world_dir):
    base, new = base_new_split(load_dataset(f"world:objects:{world_dir}"))
    held_out = {(a["colour"], a["shape"]) for a in new.annotations["class_attributes"]}
    assert len(held_out) == 16
    assert (world_dir / "objects" / "unseen_classes.txt").read_text().split("\n")[:-1] == new.classnames
    pretraining = [a for name in ("pretrain", "captions") for a in image_attributes(world_dir, name).values()]
    shown = {(a["colour"], a["shape"]) for a in pretraining if "shape" in a}  # (not the birds)
    assert not shown & held_out
    assert {(a["colour"], a["shape"]) for a in base.annotations["class_attributes"]} <= shown
    # Every word of a new class was seen, in other compositions.
    assert {c for c, _ in held_out} <= {c for c, _ in shown} and {s for _, s in held_out} <= {s for _, s in shown}


@pytest.mark.parametrize("half", [0, 1], ids=["base", "new"])
def test_no_single_attribute_names_a_class(world_dir, half):
    classes = base_new_split(load_dataset(f"world:objects:{world_dir}"))[half].annotations["class_attributes"]
    for key in ("colour", "shape"):
        counts = Counter(a[key] for a in classes)
        assert min(counts.values()) >= 2, (key, counts)
    assert len({(a["colour"], a["shape"]) for a in classes}) == len(classes)


def test_captions_load_as_image_text_pairs_naming_the_image(world_dir):
    pairs = load_dataset(f"csv:{world_dir / 'captions' / 'captions.csv'}")
    assert pairs.classnames == [] and len(pairs.train) == 48 * SMALL["captions"] + SMALL["bird_captions"]
    assert load_dataset(f"world:captions:{world_dir}").train == pairs.train
    attributes = image_attributes(world_dir, "captions")
    for sample in pairs.train:
        a = attributes[sample.path]
        words = sample.caption.replace(",", " ").replace(";", " ").split()
        assert sample.label == -1
        if a.get("layout") == "bird":
            assert "bird" in words and a["crown"] in world.COLOURS, sample.caption
            with Image.open(sample.path) as image:  # pretraining's birds at the world's size
                assert image.size == (SIZE, SIZE)
            continue
        assert a["colour"] in words and a["shape"] in words, sample.caption
        assert [w for w in words if w in world.COLOURS] == [a["colour"]], sample.caption
        assert (a["colour"], a["shape"]) in world.SEEN


def test_object_pixels_show_the_object_colour(world_dir):
    palette = np.array(list(world.COLOURS.values()), dtype=np.float32)
    right = total = 0
    for path, a in image_attributes(world_dir, "objects").items():
        x0, y0, x1, y1 = a["box"]
        pixels = np.asarray(Image.open(path), dtype=np.float32)[y0:y1, x0:x1].reshape(-1, 3)
        distances = np.linalg.norm(pixels[:, None] - palette[None], axis=2)
        # Votes of the pixels close to some palette colour: background and pattern shades vote for none.
        close = distances.min(axis=1) < 60
        votes = np.bincount(distances[close].argmin(axis=1), minlength=len(palette))
        right += list(world.COLOURS)[votes.argmax()] == a["colour"]
        total += 1
    assert right >= 0.95 * total


def test_fine_subcategories_differ_only_in_the_spot(world_dir):
    fine = load_dataset(f"world:fine:{world_dir}")
    assert len(fine.classnames) == 9
    assert [a["mark_colour"] for a in fine.annotations["class_attributes"]] == list(world.MARK_COLOURS)
    assert all(set(a) == {"mark_colour"} for a in fine.annotations["class_attributes"])
    parts = read_part_boxes(fine.annotations["part_boxes"])
    assert "part_boxes" not in load_dataset(f"world:objects:{world_dir}").annotations  # no parts decide its classes
    samples = fine.train + fine.val + fine.test
    assert set(parts) == {s.path for s in samples} and all(set(p) == {"spot"} for p in parts.values())
    mark_rgb = np.array(list(world.MARK_COLOURS.values()), dtype=np.float32)
    attributes = image_attributes(world_dir, "fine")
    for sample in samples:
        x0, y0, x1, y1 = parts[sample.path]["spot"]
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE and (x1 - x0) * (y1 - y0) <= 36
        # The rest of the image is drawn from the same distribution in every subcategory.
        a = attributes[sample.path]
        assert a["shape"] == world.FINE_SUPERCLASS and a["colour"] in world.BADGE_COLOURS
        assert (a["pattern"], a["size"]) == ("solid", "large") and a["mark_position"] in world.MARK_POSITIONS
        centre = np.asarray(Image.open(sample.path), dtype=np.float32)[(y0 + y1) // 2, (x0 + x1) // 2]
        nearest = list(world.MARK_COLOURS)[np.linalg.norm(mark_rgb - centre, axis=1).argmin()]
        assert nearest == fine.annotations["class_attributes"][sample.label]["mark_colour"]


def test_the_same_badge_with_another_spot_differs_only_inside_the_spots():
    badge = {
        "colour": "blue",
        "shape": world.FINE_SUPERCLASS,
        "pattern": "solid",
        "size": "large",
        "background": "sand",
    }
    a, boxes_a = world._render({**badge, "mark_colour": "black", "mark_position": "top"}, (3, 1), 64)
    b, boxes_b = world._render({**badge, "mark_colour": "yellow", "mark_position": "left"}, (3, 1), 64)
    spots = np.zeros((64, 64), dtype=bool)
    for x0, y0, x1, y1 in (boxes_a["parts"]["spot"], boxes_b["parts"]["spot"]):
        spots[y0:y1, x0:x1] = True
    differs = (a != b).any(axis=2)
    assert differs.any() and not (differs & ~spots).any()


def test_birds_are_cub_shaped_species_decided_by_three_small_parts(world_dir):
    """64 species of one superclass, each a combination of crown colour, wing pattern and breast colour: every
    value shared by 16 species, every species with 9 one-part neighbours; names made of words pretraining taught."""
    birds = load_dataset(f"world:birds:{world_dir}")
    assert birds.annotations["superclass"] == "bird" and len(birds.classnames) == 64
    combos = [(a["crown"], a["wing"], a["breast"]) for a in birds.annotations["class_attributes"]]
    assert len(set(combos)) == 64 and all(
        set(a) == set(world.BIRD_PARTS) for a in birds.annotations["class_attributes"]
    )
    for k in range(3):
        assert set(Counter(c[k] for c in combos).values()) == {16}
    for combo in combos:
        neighbours = [other for other in combos if sum(x != y for x, y in zip(combo, other)) == 1]
        assert len(neighbours) == 9
    captions = [a for a in image_attributes(world_dir, "captions").values() if "shape" in a]
    taught = {word for a in captions for word in (a["colour"], a["pattern"])}
    for name, (crown, wing, breast) in zip(birds.classnames, combos):
        assert name == f"{crown}-crowned {wing}-winged {breast}-breasted bird" and {crown, wing, breast} <= taught
    # Part boxes for every image, inside the image and the bird, each a small part of the frame (drawn at 2 x SIZE).
    parts = read_part_boxes(birds.annotations["part_boxes"])
    attributes = image_attributes(world_dir, "birds")
    samples = birds.train + birds.val + birds.test
    assert set(parts) == {s.path for s in samples}
    for sample in samples:
        bx0, by0, bx1, by1 = attributes[sample.path]["box"]
        assert list(parts[sample.path]) == list(world.BIRD_PARTS)
        for x0, y0, x1, y1 in parts[sample.path].values():
            # (the bird's box holds its pixels over half covered; a part's box every pixel it touches)
            assert bx0 - 1 <= x0 < x1 <= bx1 + 1 and by0 - 1 <= y0 < y1 <= by1 + 1
            assert (x1 - x0) * (y1 - y0) <= 0.12 * (2 * SIZE) ** 2


def test_each_part_spans_several_patches_of_the_tower():
    """At the frozen tower's 64 pixels the wing covers 2.5 or more of its 8-pixel patches and each part at least
    one, as CUB's parts span several of ViT-B/16's at 224; drawn at 128 (twice, as the paper's 448) every part
    covers 3 or more, the wing 8."""
    for n, least in (
        (64, {"crown": 1.0, "wing": 2.5, "breast": 1.5}),
        (128, {"crown": 3.0, "wing": 8.0, "breast": 4.0}),
    ):
        rng = np.random.default_rng(3)
        for seed in range(20):
            bird = world._draw_attributes("birds", {"crown": "red", "wing": "striped", "breast": "white"}, rng)
            for part, (x0, y0, x1, y1) in world._render(bird, (seed, 4), n)[1]["parts"].items():
                assert (x1 - x0) * (y1 - y0) / 8**2 >= least[part], (n, seed, part)


def test_pretraining_labels_other_species_with_the_same_kinds_of_field_marks(world_dir):
    """Pretraining's labelled birds (ImageNet-21k's bird synsets): 64 species named as the downstream ones are, with
    every wing pattern, whose crowns and breasts take the palette's other four colours: no downstream species is a
    pretraining label, every downstream wing pattern is."""
    pretrain = load_dataset(f"world:pretrain:{world_dir}")
    species = [a for a in pretrain.annotations["class_attributes"] if "crown" in a]
    assert len(pretrain.classnames) == len(world.SEEN) + 64 and len(species) == 64
    assert pretrain.classnames[len(world.SEEN) :] == [world._class_name(a) for a in species]
    assert {a["wing"] for a in species} == set(world.PATTERNS)
    assert not {a[p] for a in species for p in ("crown", "breast")} & set(world.BIRD_COLOURS)
    downstream = set(load_dataset(f"world:birds:{world_dir}").classnames)
    assert not downstream & set(pretrain.classnames)
    bird = pretrain.train[-1]  # drawn as the downstream birds, at the world's size
    assert image_attributes(world_dir, "pretrain")[bird.path]["layout"] == "bird"
    with Image.open(bird.path) as image:
        assert image.size == (SIZE, SIZE)


def test_pretraining_birds_name_one_or_two_parts_never_a_species():
    """Pretraining's birds: all 256 part combinations of the palette (the 64 species a quarter of them), captions
    naming none, one or two parts in the shares fixed before any run (never all three), in both word forms, and
    the words are the bird's own."""
    rng = np.random.default_rng(0)
    named, combos, forms = Counter(), set(), Counter()
    species = set(load_species_names())
    for _ in range(3000):
        a = world._draw_attributes("bird_captions", {}, rng)
        caption = world._caption(a, rng)
        combos.add((a["crown"], a["wing"], a["breast"]))
        mentions = [p for p in world.BIRD_PARTS if f"-{p}ed" in caption or f" {p}" in caption]
        named[len(mentions)] += 1
        for part in mentions:
            value = a[part]
            assert f"{value}-{part}ed" in caption or f"{value} {part}" in caption, caption
            forms["adjective" if f"-{part}ed" in caption else "phrase"] += 1
        assert "bird" in caption and not any(name.removesuffix(" bird") in caption for name in species)
    assert len(combos) == 256
    shares = [named[k] / 3000 for k in range(3)]
    assert named[3] == 0 and np.allclose(shares, world.BIRD_CAPTION_PARTS_NAMED, atol=0.03), shares
    assert 0.4 < forms["adjective"] / sum(forms.values()) < 0.6


def load_species_names() -> list[str]:
    return [world._class_name(a) for a in world._class_list("birds")]


def test_pretraining_bird_drawings_are_pencil_on_paper():
    bird = world._draw_attributes("bird_captions", {}, np.random.default_rng(1)) | {"style": "sketch"}
    image = world._render(bird, (0, 5), 64)[0]
    corner = _mean_rgb(image[:6, :6])
    assert np.abs(corner - np.array(world._PAPER)).max() < 25  # the paper shows where the bird is not


@pytest.mark.parametrize("part, other", [("crown", "blue"), ("wing", "dotted"), ("breast", "yellow")])
def test_a_bird_of_another_species_differs_only_inside_the_part(part, other):
    """Same seed, one part changed: the pixels differ inside that part's box only (the nuisances, the plumage and
    the other parts do not depend on the species)."""
    bird = {
        "crown": "red",
        "wing": "striped",
        "breast": "white",
        "background": "grass",
        "plumage": "brown",
        "facing": "left",
        "layout": "bird",
    }
    differs = np.zeros((64, 64), dtype=bool)
    for seed in range(5):
        a, boxes_a = world._render(bird, (seed, 2), 64)
        b, boxes_b = world._render({**bird, part: other}, (seed, 2), 64)
        assert boxes_a == boxes_b
        x0, y0, x1, y1 = boxes_a["parts"][part]
        inside = np.zeros((64, 64), dtype=bool)
        inside[y0:y1, x0:x1] = True
        changed = (a != b).any(axis=2)
        differs |= changed
        assert changed.sum() >= 4 and not (changed & ~inside).any(), seed


def test_birds_vary_in_pose_place_and_light_within_a_species():
    bird = {
        "crown": "yellow",
        "wing": "solid",
        "breast": "blue",
        "background": "stone",
        "plumage": "grey",
        "layout": "bird",
    }
    boxes = [
        world._render({**bird, "facing": facing}, (seed, 7), 64)[1]["box"]
        for seed in range(12)
        for facing in ("left", "right")
    ]
    widths = [x1 - x0 for x0, _, x1, _ in boxes]
    centres = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes]
    assert max(widths) - min(widths) >= 8 and np.ptp([c[0] for c in centres]) >= 6
    left = world._render({**bird, "facing": "left"}, (0, 7), 64)[1]["parts"]
    right = world._render({**bird, "facing": "right"}, (0, 7), 64)[1]["parts"]
    # The head leads: the crown lies beyond the wing on the side the bird faces.
    assert left["crown"][0] < left["wing"][0] and right["crown"][2] > right["wing"][2]
    brightness = [_mean_rgb(world._render(bird | {"facing": "right"}, (seed, 9), 64)[0]).mean() for seed in range(12)]
    assert max(brightness) / min(brightness) > 1.3


def test_world_spec_generates_the_default_world_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPADAPT_CACHE", str(tmp_path))
    monkeypatch.setattr(world, "DEFAULT_SIZES", TINY)  # the real default takes ~30 s
    objects = load_dataset("world:objects")
    expected = tmp_path / "world" / f"v{world.VERSION}-seed0"
    assert objects.root == expected / "objects"
    stamp = (expected / "world.json").stat().st_mtime_ns
    assert load_dataset("world:fine").root == expected / "fine"
    assert (expected / "world.json").stat().st_mtime_ns == stamp


def test_world_spec_errors(tmp_path, world_dir):
    with pytest.raises(
        DataError,
        match="pretrain, captions, objects, patterns, scenes, sensor, clutter, sketch, textures, aerial, fine, birds",
    ):
        load_dataset(f"world:cats:{world_dir}")
    with pytest.raises(DataError, match="no world.json"):
        load_dataset(f"world:objects:{tmp_path}")
    with pytest.raises(DataError, match="unknown world size"):
        world.generate_world(tmp_path / "w", shots=3)
    with pytest.raises(DataError, match="positive integers"):
        world.generate_world(tmp_path / "w", train=0)


def test_generation_never_leaves_a_partial_world(tmp_path, monkeypatch):
    out = tmp_path / "w"
    tiny = dict(image_size=SIZE, progress=False, workers=1, **TINY)  # one process: the patch below applies
    calls = []

    def fail_late(*args):
        calls.append(1)
        if len(calls) > 100:
            raise RuntimeError("interrupted")
        return real(*args)

    real = world._render
    monkeypatch.setattr(world, "_render", fail_late)
    with pytest.raises(RuntimeError, match="interrupted"):
        world.generate_world(out, **tiny)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(world, "_render", real)
    world.generate_world(out, **tiny)
    stamp = (out / "world.json").stat().st_mtime_ns
    assert world.generate_world(out, **tiny) == out  # the same world: kept
    assert (out / "world.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="other settings"):
        world.generate_world(out, seed=1, **tiny)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(DataError, match="not an empty folder"):
        world.generate_world(tmp_path / "junk", **tiny)


def test_captions_are_web_like_in_length_and_include_a_few_drawings():
    """Pretraining captions use every position of the shipped model's 40-token context (CoOp's 16 context vectors
    plus a name need about 22 for the world's names), and about 3% are drawings."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer, rng = SimpleTokenizer(), np.random.default_rng(0)
    lengths, drawings = [], 0
    for i in range(2000):
        colour, shape = world.SEEN[i % len(world.SEEN)]
        attributes = world._draw_attributes("captions", {"colour": colour, "shape": shape}, rng)
        caption = world._caption(attributes, rng)
        lengths.append(len(tokenizer.encode(caption)) + 2)  # with SOS and EOS
        if attributes.get("style") == "sketch":
            drawings += 1
            assert "drawing" in caption or "sketch" in caption, caption
    assert min(lengths) <= 8 and np.median(lengths) <= 14 and 36 <= max(lengths) <= 40
    assert 0.015 < drawings / 2000 < 0.05


def _mean_rgb(image):
    return np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(axis=0)


PHOTO = {"colour": "red", "shape": "star", "pattern": "solid", "size": "large", "background": "sand"}


def test_sensor_images_are_the_photo_darker_warmer_and_blurred():
    photo, _ = world._render(PHOTO, (5, 1), 64)
    shifted, boxes = world._render({**PHOTO, "style": "sensor"}, (5, 1), 64)
    assert _mean_rgb(shifted).sum() < 0.65 * _mean_rgb(photo).sum()
    red_over_blue = lambda image: _mean_rgb(image)[0] / _mean_rgb(image)[2]  # noqa: E731
    assert red_over_blue(shifted) > 1.5 * red_over_blue(photo)
    # Blurred: the image follows a blurred copy of the photo more closely than the photo itself.
    corr = lambda a, b: np.corrcoef(a.astype(np.float32).ravel(), b.astype(np.float32).ravel())[0, 1]  # noqa: E731
    assert (
        corr(shifted[..., 0], world._blur(photo.astype(np.float32), 1.0)[..., 0])
        > corr(shifted[..., 0], photo[..., 0]) + 0.01
    )
    assert boxes["box"] == world._render(PHOTO, (5, 1), 64)[1]["box"]  # the same object, in the same place


def test_sketches_are_coloured_outlines_on_paper():
    sketch, boxes = world._render({**PHOTO, "style": "sketch"}, (5, 1), 64)
    x0, y0, x1, y1 = boxes["box"]
    outside = np.ones((64, 64), dtype=bool)
    outside[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = False
    paper = sketch[outside].astype(np.float32)
    assert np.abs(paper.mean(axis=0) - np.array(world._PAPER)).max() < 12  # no background scene, only paper
    inside = sketch[y0:y1, x0:x1].reshape(-1, 3).astype(np.float32)
    reddish = (inside[:, 0] - inside[:, 2] > 60).mean()
    assert 0.1 < reddish < 0.9  # the colour is laid in strokes, not a solid fill


def test_clutter_adds_distractors_beside_the_class_object():
    photo, photo_boxes = world._render(PHOTO, (6, 1), 64)
    clutter, boxes = world._render({**PHOTO, "layout": "clutter"}, (6, 1), 64)
    x0, y0, x1, y1 = boxes["box"]
    outside = np.ones((64, 64), dtype=bool)
    outside[y0:y1, x0:x1] = False
    # Distractors are drawn with the dark outline that no background has: count outline-dark pixels off the object.
    dark = lambda image: ((image.astype(np.float32) - np.array(world._OUTLINE)) ** 2).sum(-1) < 30**2  # noqa: E731
    assert dark(clutter)[outside].sum() > dark(photo)[outside].sum() + 20
    assert (x1 - x0) * (y1 - y0) > 0.5 * np.prod(np.subtract(photo_boxes["box"][2:], photo_boxes["box"][:2]))


@pytest.mark.parametrize("pattern", world.TEXTURE_PATTERNS)
def test_textures_fill_the_frame_with_the_class_colour(pattern):
    image, boxes = world._render({"colour": "blue", "pattern": pattern, "layout": "texture"}, (7, 1), 64)
    assert boxes["box"] == [0, 0, 64, 64]
    pixels = image.reshape(-1, 3).astype(np.float32)
    blue = np.array(world.COLOURS["blue"], np.float32)
    # Every pixel is the colour or its darker pattern shade (hue kept): the blue channel leads everywhere.
    assert (pixels[:, 2] > pixels[:, 0] + 20).mean() > 0.95
    assert np.abs(pixels.max(axis=0) - blue).max() < 60


def test_aerial_views_show_many_tiny_objects_of_the_class_shape():
    image, boxes = world._render({"shape": "cross", "background": "grass", "layout": "aerial"}, (8, 1), 64)
    assert boxes["box"] == [0, 0, 64, 64]
    dark = ((image.astype(np.float32) - np.array(world._OUTLINE)) ** 2).sum(-1) < 40**2
    # 6-12 objects of radius ~4.5 px: their outlines cover a few hundred pixels, a single large object's far fewer
    # relative to its area; grass alone has none.
    grass, _ = world._render({**PHOTO, "background": "grass", "size": "small"}, (8, 1), 64)
    assert dark.sum() > 150
    assert (((grass.astype(np.float32) - np.array(world._OUTLINE)) ** 2).sum(-1) < 40**2).sum() < dark.sum()
