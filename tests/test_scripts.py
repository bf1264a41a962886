"""The measurement scripts' tables, from run folders written here (no training): the numbers they print are the
runs' numbers, averaged as docs/world.md and docs/mpfgvc.md say."""

import importlib.util
import json
from pathlib import Path

SCRIPTS = Path(__file__).parent.parent / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_metrics(folder: Path, metrics: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_fine_grained_table_has_means_per_seed_differences_and_part_overlap(tmp_path):
    script = load_script("fine_grained")
    accuracy = {1: {"finetune": 40.0, "mpfgvc": 44.0}, 2: {"finetune": 50.0, "mpfgvc": 52.0}}
    for seed in (1, 2):
        for row in script.rows("world:birds", seed):
            metrics = {"accuracy": accuracy[seed].get(row.name, 10.0 * seed), "val_accuracy": 20.0 + seed}
            metrics["attribute_accuracy"] = {"crown": 70.0 + seed, "wing": 25.0}
            if row.method == "mpfgvc" and dict(row.config).get("ssvp", False):
                metrics["part_overlap"] = {"kept_tokens_on_part": 30.0 + seed, "random_tokens_on_part": 20.0}
            write_metrics(tmp_path / f"seed{seed}" / row.folder, metrics)
    # Seed 3 is incomplete: left out of every cell.
    write_metrics(tmp_path / "seed3" / script.rows("world:birds", 3)[0].folder, {"accuracy": 99.0})
    table = script.comparison(tmp_path, "world:birds", (1, 2, 3))
    rows = table["rows"]
    assert rows["finetune"]["accuracy"] == [45.0, 5.0] and rows["mpfgvc"]["accuracy"] == [48.0, 4.0]
    assert rows["mpfgvc"]["minus finetune (per seed)"] == [3.0, 1.0]  # +4 and +2
    assert rows["mpfgvc"]["val accuracy"] == [21.5, 0.5]
    assert rows["zeroshot"]["crown right"] == [71.5, 0.5] and rows["finetune"]["wing right"] == [25.0, 0.0]
    assert rows["mpfgvc"]["kept tokens on a part"] == [31.5, 0.5] and rows["mpfgvc"]["paper, CUB"] == 91.8
    assert "kept tokens on a part" not in rows["mpfgvc ssvp=false"]
    assert "minus finetune (per seed)" not in rows["zeroshot"]
    assert "seeds 1,2," in table["note"]
    assert script.comparison(tmp_path, "world:birds", (3,)) is None
    # The paper's configuration turns SsVP on; the method's default (the ssvp=false row) leaves it off.
    commands = {row.name: row.command for row in script.rows("world:birds", 1)}
    assert "ssvp=true" in commands["mpfgvc"] and "ssvp=true" in commands["mpfgvc fusion=none"]
    assert len({row.folder for row in script.rows("world:birds", 1)}) == len(script.VARIANTS)
    # --image-size: every tuned tower (fine-tuning and each MP-FGVC row) at that size, the frozen rows at the model's.
    sized = {row.name: dict(row.config).get("image_size") for row in script.rows("world:birds", 1, 128)}
    assert sized.pop("zeroshot") is None and sized.pop("linear_probe") is None and set(sized.values()) == {128}
    assert "run at 128 px" in script.comparison(tmp_path, "world:birds", (1, 2), 128)["note"]


def test_world_patterns_average_each_seed_over_the_targets_then_over_seeds(tmp_path):
    script = load_script("world_patterns")
    targets, parts = ("objects", "sensor"), ("fewshot", "base2new")
    for seed in (1, 2):
        for row in script.rows(targets, seed, "", parts):
            target = row.dataset.split(":")[1]
            value = {"objects": 60.0, "sensor": 20.0}[target] + (seed - 1) * 4.0  # seed 2: 4 points higher
            if row.name == "tip_adapter_f" and target == "sensor":
                assert ("beta_scale", 13.0) not in row.config  # ImageNet's official config for the shifts
            metrics = (
                {"base_accuracy": value, "new_accuracy": value / 2}
                if row.protocol == "base2new"
                else {"accuracy": value}
            )
            write_metrics(tmp_path / f"seed{seed}" / row.folder, metrics)
    few, base2new = script.comparisons(tmp_path, "", parts, (1, 2), targets)
    assert few["rows"]["CoOp"]["16-shot"] == [42.0, 2.0]  # (60 + 20) / 2 = 40 for seed 1, 44 for seed 2
    assert few["rows"]["zero-shot"]["paper 1-shot"] == 60.33
    assert base2new["rows"]["CoCoOp"]["base"] == [42.0, 2.0] and base2new["rows"]["CoCoOp"]["new"] == [21.0, 1.0]
    textures = script.rows(("textures",), 1, "", ("fewshot",))
    assert all(("beta_scale", 13.0) in row.config for row in textures if row.name == "tip_adapter_f")


def test_part_labels_relabel_the_birds_by_one_part_keeping_their_split(tmp_path):
    import pytest

    from clipadapt import DataError
    from clipadapt.data import load_dataset
    from clipadapt.data.world import DEFAULT_SIZES, PATTERNS, generate_world

    script = load_script("part_labels")
    root = generate_world(tmp_path / "w", image_size=32, progress=False, **{k: 1 for k in DEFAULT_SIZES})
    birds = load_dataset(f"world:birds:{root}")
    counts = script.write_attribute_folder(birds, "wing", tmp_path / "wing")
    wings = load_dataset(f"imagefolder:{tmp_path / 'wing'}")
    assert wings.classnames == sorted(PATTERNS)
    for split in ("train", "val", "test"):
        # 64 species, each wing pattern shared by 16 of them: one image a species and split here
        assert len(wings.split(split)) == len(birds.split(split)) == 64
        assert counts[split] == {pattern: 16 for pattern in PATTERNS}
        for sample in wings.split(split):  # each link is the bird's own image, labelled with its species' wing
            species = birds.classnames.index(sample.path.resolve().parent.name.replace("_", " "))
            assert birds.annotations["class_attributes"][species]["wing"] == wings.classnames[sample.label]
    with pytest.raises(DataError, match="no class attribute 'tail'"):
        script.write_attribute_folder(birds, "tail", tmp_path / "tail")
    with pytest.raises(DataError, match="is not empty"):
        script.write_attribute_folder(birds, "wing", tmp_path / "wing")


def test_part_similarity_averages_the_pairs_that_differ_in_one_part_alone():
    import pytest
    import torch

    script = load_script("part_similarity")
    # Four classes, crown x wing: the embedding sees the crown (one axis each) and a little of the wing.
    attributes = [{"crown": c, "wing": w} for c in ("red", "blue") for w in ("solid", "striped")]
    embeddings = torch.tensor([[1.0, 0.0, 0.1], [1.0, 0.0, -0.1], [0.0, 1.0, 0.1], [0.0, 1.0, -0.1]])
    found = script.similarity_by_difference(embeddings * 3.0, attributes)  # scale does not matter: cosines
    assert found["wing"] == pytest.approx(0.99 / 1.01)  # pairs (0, 1) and (2, 3)
    assert found["crown"] == pytest.approx(0.01 / 1.01)  # pairs (0, 2) and (1, 3)
    assert found["all"] == pytest.approx(-0.01 / 1.01)  # pairs (0, 3) and (1, 2)
    means = script.class_means(torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, 1.0]]), [0, 0, 1], 2)
    assert torch.allclose(means, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))  # each sample's unit vector, averaged
    with pytest.raises(ValueError, match="classes \\[2\\] have no samples"):
        script.class_means(torch.ones(2, 2), [0, 1], 3)
    with pytest.raises(ValueError, match="3 class embeddings for 4 classes"):
        script.similarity_by_difference(embeddings[:3], attributes)
    table = script.markdown({"text": found, "images": found})
    assert "| the wing alone | 0.980 | 0.980 |" in table and "| every part | -0.010 |" in table
