"""Zero-shot CLIP, the feature cache, the protocols' metrics and the `clipadapt run` command."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import COLOURS, TEMPLATE, colour_images
from PIL import Image

from clipadapt import ClipadaptError, load_backbone
from clipadapt.cli import main
from clipadapt.data import load_dataset
from clipadapt.features import extract_features
from clipadapt.protocols import accuracy, harmonic_mean, per_class_accuracy
from clipadapt.text import IMAGENET_TEMPLATES, resolve_templates, zeroshot_weights


def test_templates():
    assert len(resolve_templates("ensemble")) == 80
    assert resolve_templates("coop", "OxfordPets") == ["a photo of a {}, a type of pet."]
    assert resolve_templates("coop", None) == ["a photo of a {}."]
    assert resolve_templates("{} texture.") == ["{} texture."]
    with pytest.raises(ClipadaptError, match="templates must be"):
        resolve_templates("no placeholder")


def test_ensemble_weights_match_reference():
    torch.manual_seed(0)
    backbone = load_backbone("micro-vit")
    names = ["red star", "dog", "striped blue square"]
    templates = list(IMAGENET_TEMPLATES[:7])
    weights = zeroshot_weights(backbone, names, templates, classes_per_batch=2)
    with torch.no_grad():
        reference = torch.stack(
            [
                F.normalize(
                    F.normalize(backbone.model.encode_text(backbone.tokenize([t(n) for t in templates])), dim=-1).mean(
                        0
                    ),
                    dim=0,
                )
                for n in names
            ]
        )
    assert weights.shape == (3, backbone.embed_dim)
    torch.testing.assert_close(weights, reference, atol=1e-6, rtol=0)


def test_metrics():
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    predictions = torch.tensor([0, 0, 0, 0, 0, 1])
    assert accuracy(predictions, labels) == pytest.approx(100 * 5 / 6)
    assert per_class_accuracy(predictions, labels) == pytest.approx(75.0)
    assert per_class_accuracy(predictions, labels, classes=[1]) == pytest.approx(50.0)
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 90.0) == 0.0
    with pytest.raises(ClipadaptError):
        accuracy(torch.tensor([]), torch.tensor([]))


def test_feature_cache_reuses_and_resumes(colour_world, tmp_path):
    root, weights = colour_world
    backbone = load_backbone(None, weights)
    samples = load_dataset(f"imagefolder:{root}").test
    calls = []
    original = backbone.encode_image
    backbone.encode_image = lambda images: calls.append(len(images)) or original(images)
    first = extract_features(backbone, samples, cache_dir=tmp_path, shard_size=10, progress=False)
    assert sum(calls) == len(samples) == 24
    with torch.no_grad():
        direct = torch.cat(
            [original(torch.stack([backbone.image_transform()(Image.open(s.path).convert("RGB"))])) for s in samples]
        )
    torch.testing.assert_close(first.features, direct, atol=2e-2, rtol=1e-2)  # stored as float16
    calls.clear()
    again = extract_features(backbone, samples, cache_dir=tmp_path, shard_size=10, progress=False)
    assert calls == [] and torch.equal(again.features, first.features)
    # An interrupted extraction: one shard lost, one half-written. Only those two are recomputed.
    entry = next((tmp_path / "features").iterdir())
    (entry / "shard_10_00001.npy").unlink()
    (entry / "shard_10_00002.npy").write_bytes(b"\x93NUMPY partial")
    resumed = extract_features(backbone, samples, cache_dir=tmp_path, shard_size=10, progress=False)
    assert sum(calls) == 14
    assert torch.equal(resumed.features, first.features)
    assert torch.equal(resumed.labels, torch.tensor([s.label for s in samples]))
    # Another shard size: a complete entry is read as it was written, nothing recomputed.
    calls.clear()
    assert (
        torch.equal(
            extract_features(backbone, samples, cache_dir=tmp_path, shard_size=8, progress=False).features,
            first.features,
        )
        and calls == []
    )
    # An incomplete entry is finished at the size asked for. 18 images: 10-row shards hold rows 0-9 and 10-17;
    # 8-row shards want rows 0-7, 8-15, 16-17. The 10-row shard 1 has the 8 rows an 8-row shard 1 expects, but
    # other rows: it is never taken for it, and shards of other sizes are removed once the entry is complete.
    few = samples[:18]
    extract_features(backbone, few, cache_dir=tmp_path, shard_size=10, progress=False)
    [partial] = [e for e in (tmp_path / "features").iterdir() if e != entry]
    (partial / "meta.json").unlink()
    (partial / "shard_10_00000.npy").unlink()
    calls.clear()
    resumed = extract_features(backbone, few, cache_dir=tmp_path, shard_size=8, progress=False)
    assert sum(calls) == 18 and torch.equal(resumed.features, first.features[:18])
    assert sorted(p.name for p in partial.glob("shard_*")) == [f"shard_8_0000{i}.npy" for i in range(3)]


def _extract_at_once(root, weights, cache, barrier, queue):
    """A separate process (not a torchrun rank) extracting the same entry as another, started together."""
    import time

    backbone = load_backbone(None, weights)
    original = backbone.encode_image
    backbone.encode_image = lambda images: time.sleep(0.05) or original(images)  # long enough to overlap
    barrier.wait()
    try:
        features = extract_features(
            backbone,
            load_dataset(f"imagefolder:{root}").test,
            cache_dir=cache,
            shard_size=2,
            batch_size=2,
            progress=False,
        )
        queue.put(features.features.tolist())
    except Exception as error:  # noqa: BLE001  reported to the test
        queue.put(f"{type(error).__name__}: {error}")


def test_processes_sharing_a_cache_compute_one_entry_at_once(colour_world, tmp_path):
    import multiprocessing

    root, weights = colour_world
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_extract_at_once, args=(str(root), str(weights), str(tmp_path), barrier, queue))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert all(isinstance(r, list) for r in results), results
    assert results[0] == results[1] and len(results[0]) == 24
    (entry,) = (tmp_path / "features").iterdir()
    assert (entry / "meta.json").is_file() and not list(entry.glob("*.tmp"))


def test_only_abandoned_temp_files_are_removed(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from clipadapt.features import _is_abandoned

    host = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _is_abandoned(tmp_path / f"shard_8_00000.npy~{host}~{finished.stdout.strip()}.tmp")  # killed writer
        assert _is_abandoned(tmp_path / f"meta.json~{host}~{os.getpid()}.tmp")  # this process: none in flight
        assert not _is_abandoned(tmp_path / "shard_8_00000.npy.tmp")  # not the cache's name: not ours to remove
        assert not _is_abandoned(tmp_path / f"shard_8_00000.npy~{host}~{running.pid}.tmp")  # still writing
        assert not _is_abandoned(tmp_path / f"shard_8_00000.npy~another-host~{finished.stdout.strip()}.tmp")
    finally:
        running.kill()
        running.wait()


def _run(tmp_path, *argv):
    out = tmp_path / "run"
    code = main(["run", *argv, "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"])
    return code, (json.loads((out / "metrics.json").read_text()) if code == 0 else None)


def test_run_zeroshot_full_known_answer(colour_world, tmp_path):
    root, weights = colour_world
    code, metrics = _run(
        tmp_path, "zeroshot", "--dataset", f"imagefolder:{root}", "--pretrained", str(weights), f"templates={TEMPLATE}"
    )
    assert code == 0
    assert metrics["accuracy"] == 100.0 and metrics["per_class_accuracy"] == 100.0
    assert metrics["num_classes"] == 4 and metrics["method"] == "zeroshot" and metrics["protocol"] == "full"
    assert metrics["config"]["templates"] == TEMPLATE and metrics["seconds"] >= 0
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert "val_accuracy" not in metrics  # the colour set has no val split


def test_full_protocol_reports_validation_accuracy_on_the_val_split(colour_world, tmp_path):
    """`val_accuracy` (what configurations are chosen on) is measured on val/, not test/: with two colours' val
    folders swapped, half the val images carry the other colour's label."""
    _, weights = colour_world
    root = colour_images(tmp_path / "colours", per_split={"train": 1, "val": 3, "test": 3})
    (root / "val" / "red").rename(root / "val" / "swap")
    (root / "val" / "green").rename(root / "val" / "red")
    (root / "val" / "swap").rename(root / "val" / "green")
    code, metrics = _run(
        tmp_path, "zeroshot", "--dataset", f"imagefolder:{root}", "--pretrained", str(weights), f"templates={TEMPLATE}"
    )
    assert code == 0 and metrics["accuracy"] == 100.0 and metrics["val_accuracy"] == 50.0


def test_test_features_are_scored_in_blocks_of_rows(colour_world, tmp_path, monkeypatch):
    import clipadapt.protocols as protocols
    from clipadapt.methods import build_method

    root, weights = colour_world
    backbone = load_backbone(None, weights)
    method = build_method("zeroshot", backbone, {"templates": TEMPLATE})
    blocks = []
    logits = method.logits
    monkeypatch.setattr(
        method, "logits", lambda features, *a, **k: blocks.append(len(features)) or logits(features, *a, **k)
    )
    monkeypatch.setattr(protocols, "PREDICT_ELEMENTS", 5 * 4)  # 5 rows of 4 classes at a time
    ctx = protocols.RunContext(backbone, cache_dir=tmp_path, progress=False)
    result = protocols.run_protocol("full", method, ctx, load_dataset(f"imagefolder:{root}"))
    assert blocks == [5, 5, 5, 5, 4] and result["accuracy"] == 100.0  # 24 test images


def test_zeroshot_uses_class_names(colour_world, tmp_path):
    """Same images, class folders renamed in a cycle: the text now points at the wrong colour."""
    root, weights = colour_world
    renamed = tmp_path / "renamed"
    names = list(COLOURS)
    for split in ("train", "test"):
        for i, name in enumerate(names):
            (renamed / split).mkdir(parents=True, exist_ok=True)
            target = renamed / split / names[(i + 1) % len(names)]
            target.symlink_to(root / split / name, target_is_directory=True)
    code, metrics = _run(
        tmp_path,
        "zeroshot",
        "--dataset",
        f"imagefolder:{renamed}",
        "--pretrained",
        str(weights),
        f"templates={TEMPLATE}",
    )
    assert code == 0 and metrics["accuracy"] == 0.0


def test_run_base2new_gzsl_crossdataset(colour_world, tmp_path):
    root, weights = colour_world
    common = ["--dataset", f"imagefolder:{root}", "--pretrained", str(weights), f"templates={TEMPLATE}"]
    code, b2n = _run(tmp_path, "zeroshot", "--protocol", "base2new", *common)
    assert code == 0
    assert (b2n["num_base_classes"], b2n["num_new_classes"], b2n["num_classes"]) == (2, 2, 4)
    assert b2n["base_accuracy"] == b2n["new_accuracy"] == b2n["harmonic_mean"] == 100.0

    code, gzsl = _run(tmp_path, "zeroshot", "--protocol", "gzsl", "--unseen", "blue,blue", *common)  # once
    assert code == 0
    assert (gzsl["num_seen_classes"], gzsl["num_unseen_classes"]) == (3, 1)
    assert gzsl["seen_accuracy"] == gzsl["unseen_accuracy"] == gzsl["harmonic_mean"] == 100.0

    target = colour_images(tmp_path / "target", {"test": 3}, {"red": COLOURS["red"], "blue": COLOURS["blue"]}, seed=5)
    code, cross = _run(
        tmp_path,
        "zeroshot",
        "--protocol",
        "crossdataset",
        "--targets",
        f"imagefolder:{target},imagefolder:{target}",
        *common,
    )  # a repeated target counts once
    assert code == 0
    assert cross["targets"][f"imagefolder:{target}"]["accuracy"] == 100.0 == cross["average_target_accuracy"]
    assert cross["targets"][f"imagefolder:{target}"]["num_classes"] == 2


def test_closed_set_methods_refuse_gzsl_and_crossdataset_before_training(colour_world, tmp_path, capsys):
    root, weights = colour_world
    for protocol, targets in (("gzsl", []), ("crossdataset", ["--targets", f"imagefolder:{root}"])):
        code, _ = _run(
            tmp_path,
            "linear_probe",
            "--protocol",
            protocol,
            "--dataset",
            f"imagefolder:{root}",
            "--pretrained",
            str(weights),
            *targets,
        )
        assert code == 2
        assert (
            f"linear_probe scores only the classes it was trained on: it has no {protocol} numbers"
            in capsys.readouterr().err
        )


def test_run_errors_are_one_line(colour_world, tmp_path, capsys):
    root, weights = colour_world
    code, _ = _run(
        tmp_path, "zeroshot", "--dataset", f"imagefolder:{tmp_path / 'nowhere'}", "--pretrained", str(weights)
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("clipadapt: error:") and "nowhere" in err and "\n" not in err
    code, _ = _run(tmp_path, "zeroshot", "--dataset", f"imagefolder:{root}", "--pretrained", str(weights), "lr=0.1")
    assert code == 2 and "unknown ZeroShot.Config key(s) in overrides: lr" in capsys.readouterr().err
    code, _ = _run(
        tmp_path, "zeroshot", "--dataset", f"imagefolder:{root}", "--pretrained", str(weights), "--protocol", "fewshot"
    )
    assert code == 2 and "--shots" in capsys.readouterr().err
    code, _ = _run(
        tmp_path,
        "zeroshot",
        "--dataset",
        f"imagefolder:{root}",
        "--pretrained",
        str(tmp_path / "no.pt"),
        "--model",
        "micro-vit",
    )
    assert code == 2 and "no.pt does not exist" in capsys.readouterr().err


def test_attribute_accuracy():
    from clipadapt.protocols import attribute_accuracy

    attributes = [
        {"colour": "red", "shape": "star"},
        {"colour": "red", "shape": "square"},
        {"colour": "blue", "shape": "star"},
    ]
    labels = torch.tensor([0, 0, 1, 2])
    predictions = torch.tensor([0, 1, 2, 0])  # right; right colour only; wrong both; right shape only
    assert attribute_accuracy(predictions, labels, attributes) == {"colour": 50.0, "shape": 50.0}


def test_aggregate_seeds_means_std_and_per_seed():
    from clipadapt.protocols import aggregate_seeds

    results = [
        {"accuracy": 60.0, "num_classes": 4, "attribute_accuracy": {"colour": 90.0}},
        {"accuracy": 70.0, "num_classes": 4, "attribute_accuracy": {"colour": 100.0}},
    ]
    merged = aggregate_seeds(results, [1, 2])
    assert merged["accuracy"] == 65.0 and merged["accuracy_std"] == 5.0
    assert merged["attribute_accuracy"] == {"colour": 95.0} and merged["num_classes"] == 4
    assert merged["per_seed"]["2"]["accuracy"] == 70.0
    # A resumed seed beside a fresh one; the harmonic mean of the mean base and new accuracies (CoOp's tables).
    results = [
        {
            "base_accuracy": 60.0,
            "new_accuracy": 90.0,
            "harmonic_mean": 72.0,
            "training": {"steps": 10, "resumed_from_step": 10, "epoch_losses": [1.0]},
        },
        {
            "base_accuracy": 80.0,
            "new_accuracy": 50.0,
            "harmonic_mean": 61.54,
            "training": {"steps": 10, "resumed_from_step": None, "epoch_losses": [2.0]},
        },
    ]
    merged = aggregate_seeds(results, [1, 2])
    assert merged["training"] == {"steps": 10.0, "resumed_from_step": None, "epoch_losses": None}
    assert merged["harmonic_mean"] == pytest.approx(2 * 70 * 70 / 140)
    assert merged["harmonic_mean_std"] == pytest.approx(5.23)  # the seeds' own harmonic means


def test_run_with_several_seeds(colour_world, tmp_path, capsys):
    root, weights = colour_world
    code, metrics = _run(
        tmp_path,
        "zeroshot",
        "--dataset",
        f"imagefolder:{root}",
        "--pretrained",
        str(weights),
        "--protocol",
        "fewshot",
        "--shots",
        "2",
        "--seeds",
        "1,2,3",
        f"templates={TEMPLATE}",
    )
    assert code == 0
    assert metrics["seed"] == [1, 2, 3] and sorted(metrics["per_seed"]) == ["1", "2", "3"]
    assert metrics["accuracy"] == 100.0 and metrics["accuracy_std"] == 0.0
    code, _ = _run(
        tmp_path, "zeroshot", "--dataset", f"imagefolder:{root}", "--pretrained", str(weights), "--seeds", "1,x"
    )
    assert code == 2 and "--seeds must be" in capsys.readouterr().err
