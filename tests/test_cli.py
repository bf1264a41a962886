"""The `clipadapt` command: extract, skipping bad images, one-line errors, `python -m clipadapt`."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import TEMPLATE, tensorboard_scalars

from clipadapt.cli import main
from clipadapt.errors import ClipadaptError


def _copy_with_bad_image(root, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    (copy / "test" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return copy


def test_extract_caches_each_split(colour_world, tmp_path, capsys):
    root, weights = colour_world
    argv = [
        "extract",
        "--dataset",
        f"imagefolder:{root}",
        "--pretrained",
        str(weights),
        "--cache",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "train: 16 features of dimension 32" in out and "test: 24 features" in out and "val: no samples" in out
    assert len(list((tmp_path / "features").iterdir())) == 2
    assert all((entry / "meta.json").is_file() for entry in (tmp_path / "features").iterdir())


def test_bad_image_fails_with_one_line_naming_it_even_from_a_worker(colour_world, tmp_path, capsys):
    root, weights = colour_world
    data = _copy_with_bad_image(root, tmp_path)
    code = main(
        [
            "run",
            "zeroshot",
            "--dataset",
            f"imagefolder:{data}",
            "--pretrained",
            str(weights),
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "run"),
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("clipadapt: error: cannot read image") and "broken.png" in err and "\n" not in err


def test_skip_bad_images_reports_and_runs(colour_world, tmp_path, capsys):
    root, weights = colour_world
    data = _copy_with_bad_image(root, tmp_path)
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "zeroshot",
            "--dataset",
            f"imagefolder:{data}",
            "--pretrained",
            str(weights),
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(out),
            "--skip-bad-images",
            "--no-progress",
            f"templates={TEMPLATE}",
        ]
    )
    assert code == 0
    assert "skipped unreadable image" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert [p.endswith("broken.png") for p in metrics["skipped_images"]] == [True]
    assert metrics["accuracy"] == 100.0


def test_skip_bad_images_covers_crossdataset_targets(colour_world, tmp_path, capsys):
    root, weights = colour_world
    target = _copy_with_bad_image(root, tmp_path)
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "zeroshot",
            "--dataset",
            f"imagefolder:{root}",
            "--pretrained",
            str(weights),
            "--protocol",
            "crossdataset",
            "--targets",
            f"imagefolder:{target}",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(out),
            "--skip-bad-images",
            "--no-progress",
            f"templates={TEMPLATE}",
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert [p.endswith("broken.png") for p in metrics["skipped_images"]] == [True]
    assert metrics["targets"][f"imagefolder:{target}"]["accuracy"] == 100.0
    # Several seeds load (and check) each target once: the bad image is reported once.
    capsys.readouterr()
    code = main(
        [
            "run",
            "zeroshot",
            "--dataset",
            f"imagefolder:{root}",
            "--pretrained",
            str(weights),
            "--protocol",
            "crossdataset",
            "--targets",
            f"imagefolder:{target}",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "seeds"),
            "--seeds",
            "1,2",
            "--skip-bad-images",
            "--no-progress",
            f"templates={TEMPLATE}",
        ]
    )
    assert code == 0 and capsys.readouterr().err.count("skipped unreadable image") == 1
    assert len(json.loads((tmp_path / "seeds" / "metrics.json").read_text())["skipped_images"]) == 1


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--protocol", "full", "--shots", "4"], "protocol full trains on every train image"),
        (["--protocol", "gzsl", "--shots", "4"], "protocol gzsl trains on every train image"),
        (["--protocol", "fewshot"], "protocol fewshot needs --shots K"),
        (["--protocol", "crossdataset", "--targets", "x:y", "--shots", "0"], "--shots must be 1 or more"),
        (["--protocol", "base2new", "--targets", "x:y"], "--targets is for protocol crossdataset, not base2new"),
        (["--protocol", "base2new", "--unseen", "red"], "--unseen is for protocol gzsl, not base2new"),
        (["--protocol", "crossdataset"], "protocol crossdataset needs --targets"),
        (["--protocol", "full", "--fewshot-sampler", "dassl"], "protocol full draws no k-shot subset"),
    ],
)
def test_options_a_protocol_would_ignore_are_refused_before_any_work(tmp_path, capsys, argv, problem):
    # The data set does not exist: the options are checked before it is read.
    code = main(
        [
            "run",
            "coop",
            "--dataset",
            f"imagefolder:{tmp_path / 'nowhere'}",
            "--model",
            "micro-vit",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            *argv,
        ]
    )
    assert code == 2 and problem in capsys.readouterr().err


def test_a_config_file_with_a_yaml_syntax_error_is_named_with_its_line_and_column(tmp_path, capsys):
    # PyYAML's message spans four lines and ends with a caret; the error printed must say where and what.
    config = tmp_path / "cfg.yaml"
    config.write_text("epochs: 2\nlr: 0.002\nn_ctx: 4: 8\n")
    argv = ["run", "coop", "--dataset", f"imagefolder:{tmp_path / 'nowhere'}", "--model", "micro-vit"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--config", str(config), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"clipadapt: error: cannot read config file {config}: line 3, column 9: mapping values are not allowed here"
    ]
    assert not (tmp_path / "run").exists()


def test_default_run_folders_keep_runs_apart():
    import argparse

    from clipadapt.cli import _default_run_folder

    long = "imagefolder:/mnt/a/experiments/2026/shared/datasets/colours"

    def folder(method="coop", protocol="fewshot", shots=4, targets=(), unseen=None, seeds=(1,), dataset=long):
        args = argparse.Namespace(method=method, protocol=protocol, dataset=dataset, unseen=unseen)
        return _default_run_folder(args, dataset.rstrip("/").split("/")[-1], shots, list(targets), list(seeds))

    folders = [
        folder(),
        folder(method="zeroshot"),
        folder(protocol="base2new"),
        folder(shots=8),
        folder(protocol="crossdataset", targets=["world:scenes"]),
        folder(protocol="crossdataset", targets=["world:patterns"]),
        folder(protocol="gzsl", shots=None, unseen="red"),
        folder(protocol="gzsl", shots=None, unseen="blue"),
        folder(seeds=(1, 2, 3)),
        folder(seeds=range(1, 71)),
        folder(seeds=[1, *range(3, 72)]),
        folder(dataset=long.replace("/mnt/a/", "/mnt/b/")),
        folder(dataset="imagefolder:/data/猫"),
        folder(dataset="imagefolder:/data/犬"),
        folder(dataset="imagefolder:data/a_b"),
        folder(dataset="imagefolder:data/a/b"),
    ]
    assert len(set(folders)) == len(folders)
    assert all(len(f.name) <= 100 and "/" not in f.name for f in folders)
    assert folder().name.startswith("coop-fewshot-4shot-colours-seed1-")
    assert folder() == folder()  # the same command finds its folder again (to resume)


def test_shots_recorded_are_the_shots_trained_with_and_untrained_models_follow_the_seed(colour_world, tmp_path):
    root, weights = colour_world

    def run(name, *argv):
        out = tmp_path / name
        assert (
            main(
                [
                    "run",
                    *argv,
                    "--dataset",
                    f"imagefolder:{root}",
                    "--out",
                    str(out),
                    "--cache",
                    str(tmp_path / "cache"),
                    "--no-progress",
                ]
            )
            == 0
        )
        return json.loads((out / "metrics.json").read_text())

    untrained = ["coop", "--model", "micro-vit", "--protocol", "base2new", "--shots", "2", "epochs=1", "n_ctx=4"]
    a, b = run("a", *untrained), run("b", *untrained)
    assert a["shots"] == 2
    # Random weights (no --pretrained) are drawn after seeding: the same command gives the same numbers.
    assert a["base_accuracy"] == b["base_accuracy"] and a["training"]["epoch_losses"] == b["training"]["epoch_losses"]
    # Without --shots: the protocol's default for a run that trains, nothing for a zero-shot run (no image trained).
    assert run("zs", "zeroshot", "--pretrained", str(weights), "--protocol", "base2new")["shots"] is None
    from clipadapt.protocols import protocol_shots, shots_trained

    assert protocol_shots("base2new") == protocol_shots("crossdataset", targets=["x:y"]) == 16
    assert protocol_shots("full") is None and protocol_shots("fewshot", 2) == 2
    assert shots_trained({"training": {}}, 16) == shots_trained({"per_seed": {"1": {"training": {}}}}, 16) == 16
    assert shots_trained({"accuracy": 50.0}, 16) is None


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "clipadapt", "models"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    names = result.stdout.split()
    assert "tiny-vit" in names and "ViT-B-16" in names
    bad = subprocess.run(
        [sys.executable, "-m", "clipadapt", "run", "zeroshot", "--dataset", "nope:x", "--model", "micro-vit"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("clipadapt: error:") and "nope" in bad.stderr


def test_world_command_writes_every_data_set(tmp_path, capsys):
    sizes = ["pretrain_train=2", "pretrain_val=1", "pretrain_test=1", "captions=2", "train=2", "val=1", "test=1"]
    sizes += ["bird_captions=2", "pretrain_bird_train=1"]  # (the defaults draw 9,600 of pretraining's birds)
    assert (
        main(["world", "--out", str(tmp_path / "w"), "--seed", "3", "--image-size", "32", "--no-progress", *sizes]) == 0
    )
    out = capsys.readouterr().out
    assert f"world:objects:{tmp_path / 'w'}" in out
    from clipadapt.data import load_dataset

    objects = load_dataset(f"world:objects:{tmp_path / 'w'}")
    assert len(objects.classnames) == 32 and len(objects.train) == 64
    assert main(["world", "--out", str(tmp_path / "w2"), "--no-progress", "bogus=3"]) == 2
    assert "unknown world size(s) bogus" in capsys.readouterr().err


def test_run_coop_writes_training_summary_and_checkpoints(colour_world, tmp_path):
    root, weights = colour_world
    out = tmp_path / "run"
    argv = [
        "run",
        "coop",
        "--dataset",
        f"imagefolder:{root}",
        "--pretrained",
        str(weights),
        "--protocol",
        "fewshot",
        "--shots",
        "2",
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(out),
        "--no-progress",
        "init=a photo of a",
        "epochs=3",
        "batch_size=4",
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 3 * 2 and metrics["config"]["seed"] == 1
    checkpoints = list(out.glob("train-*-seed1/checkpoint_last.safetensors"))
    assert len(checkpoints) == 1
    assert tensorboard_scalars(checkpoints[0].parent / "tensorboard", "train/loss")[0] == [2, 4, 6]
    assert main(argv) == 0  # the same command again resumes from the finished checkpoint: nothing to redo
    again = json.loads((out / "metrics.json").read_text())
    assert again["training"]["resumed_from_step"] == 6 and again["accuracy"] == metrics["accuracy"]
    # TensorBoard's own reader: the loss at every epoch's end (the mean since the last log), once each, the summary's
    # epoch losses.
    steps, losses = tensorboard_scalars(checkpoints[0].parent / "tensorboard", "train/loss")
    assert steps == [2, 4, 6]
    assert losses == pytest.approx(metrics["training"]["epoch_losses"], rel=1e-5)
    report = tmp_path / "report.html"
    assert main(["report", str(out), "--out", str(report)]) == 0
    assert f"tensorboard --logdir {out}" in report.with_suffix(".md").read_text()


def test_run_workers_decode_augmented_batches_identically(colour_world, tmp_path, monkeypatch):
    """`--workers` reaches augment=true training through the protocol (every batch decoded in a worker), and the
    trained prompts are the same as with none."""
    from safetensors.torch import load_file

    from clipadapt.training import batches

    root, weights = colour_world
    trained = []
    decode = batches.load_batch
    for workers in ("0", "2"):
        if workers != "0":
            monkeypatch.setattr(
                batches,
                "load_batch",
                lambda *args, **kwargs: (
                    decode(*args, **kwargs)
                    if torch.utils.data.get_worker_info()
                    else pytest.fail("decoded in the main process")
                ),
            )
        out = tmp_path / f"run{workers}"
        assert (
            main(
                [
                    "run",
                    "coop",
                    "--dataset",
                    f"imagefolder:{root}",
                    "--pretrained",
                    str(weights),
                    "--protocol",
                    "fewshot",
                    "--shots",
                    "4",
                    "--cache",
                    str(tmp_path / "cache"),
                    "--out",
                    str(out),
                    "--workers",
                    workers,
                    "--no-progress",
                    "init=a photo of a",
                    "epochs=2",
                    "batch_size=4",
                    "augment=true",
                ]
            )
            == 0
        )
        checkpoint = load_file(str(next(out.glob("train-*-seed1/checkpoint_last.safetensors"))))
        trained.append({k: v for k, v in checkpoint.items() if k.startswith("module.")})
    assert trained[0].keys() == trained[1].keys() and trained[0]
    for key in trained[0]:  # (val_accuracy holds NaN for epochs not validated)
        torch.testing.assert_close(trained[1][key], trained[0][key], atol=0, rtol=0, equal_nan=True, msg=key)


def test_linear_probe_base2new_reports_base_only(colour_world, tmp_path):
    root, weights = colour_world
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "linear_probe",
                "--dataset",
                f"imagefolder:{root}",
                "--pretrained",
                str(weights),
                "--protocol",
                "base2new",
                "--shots",
                "4",
                "--cache",
                str(tmp_path / "cache"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["new_accuracy"] is None and metrics["harmonic_mean"] is None
    assert metrics["base_accuracy"] == 100.0 and metrics["num_base_classes"] == 2
    assert len(list(out.glob("train-*-base-seed1/linear_probe.safetensors"))) == 1


def test_torchrun_extraction_shares_the_shards(colour_world, tmp_path):
    """Two gloo processes under torchrun: each computes its share of the shards; the entry equals one process's."""
    import socket
    from pathlib import Path

    import numpy as np

    root, weights = colour_world
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        "extract",
        "--dataset",
        f"imagefolder:{root}",
        "--pretrained",
        str(weights),
        "--splits",
        "train,test",
        "--shard-size",
        "3",
        "--no-progress",
    ]
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [
            str(bin_dir / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            str(bin_dir / "clipadapt"),
            *argv,
            "--cache",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("train: 16 features") == 1  # printed by rank 0 only
    assert main([*argv, "--cache", str(tmp_path / "one")]) == 0
    entries = sorted((tmp_path / "two" / "features").iterdir())
    assert [e.name for e in entries] == sorted(e.name for e in (tmp_path / "one" / "features").iterdir())
    for entry in entries:
        shards = sorted(entry.glob("shard_*.npy"))
        assert (entry / "meta.json").is_file() and len(shards) in (6, 8)  # 16 train and 24 test images, by 3
        for shard in shards:
            # float16 features; thread counts may change the last bit of a sum
            assert np.allclose(
                np.load(shard), np.load(tmp_path / "one" / "features" / entry.name / shard.name), atol=1e-3, rtol=0
            )


def _extract_worker(rank, world_size, port, root, weights, cache, fail_on_rank, queue):
    import datetime
    import os

    import torch.distributed as dist

    from clipadapt import load_backbone
    from clipadapt.data import load_dataset
    from clipadapt.features import extract_features

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A minute, not gloo's 30: a rank left waiting at a collective fails the test instead of hanging it.
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60))
    backbone = load_backbone(None, weights)
    encoded = []
    original = backbone.encode_image

    def encode(images):
        if rank == fail_on_rank:
            raise OSError("disk on fire")
        encoded.append(len(images))
        return original(images)

    backbone.encode_image = encode
    try:
        features = extract_features(
            backbone,
            load_dataset(f"imagefolder:{root}").test,
            cache_dir=cache,
            shard_size=5,
            batch_size=5,
            progress=False,
        )
        queue.put((rank, sum(encoded), features.features.tolist()))
    except Exception as error:  # noqa: BLE001  reported to the test
        queue.put((rank, -1, f"{type(error).__name__}: {error}"))
    dist.destroy_process_group()


@pytest.mark.parametrize("fail_on_rank", [None, 1])
def test_ranks_share_the_shards_and_stop_together(colour_world, tmp_path, fail_on_rank):
    import socket

    import torch.multiprocessing as mp

    root, weights = colour_world
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").Queue()
    workers = mp.start_processes(
        _extract_worker,
        nprocs=2,
        start_method="spawn",
        join=False,
        args=(2, port, str(root), str(weights), str(tmp_path), fail_on_rank, queue),
    )
    results = sorted(queue.get(timeout=180) for _ in range(2))  # read before joining: a full pipe blocks exits
    while not workers.join(timeout=60):
        pass
    if fail_on_rank is None:
        # 24 test images in 5 shards (5, 5, 5, 5, 4): ranks 0 and 1 take shards 0, 2, 4 and 1, 3.
        assert [encoded for _, encoded, _ in results] == [14, 10]
        assert results[0][2] == results[1][2] and len(results[0][2]) == 24
    else:  # the failing rank reports its error; the other is told instead of waiting at a barrier
        assert results[1][2] == "OSError: disk on fire"
        assert results[0][2].startswith("ClipadaptError: feature extraction failed on another rank")


def test_real_size_configs_build_their_methods():
    """Every file in configs/ holds valid keys for its method (ViT-B-16 itself needs weights; the keys are checked
    against the method configs on a micro model, except the MP-FGVC encoder, which would be a 21k-class ViT-B)."""
    from pathlib import Path

    from clipadapt import load_backbone
    from clipadapt.config import load_config_file
    from clipadapt.methods import build_method, method_config

    configs = Path(__file__).resolve().parent.parent / "configs"
    methods = {
        "coop_vit_b16_base2new.yaml": "coop",
        "cocoop_vit_b16_base2new.yaml": "cocoop",
        "coop_ship_vit_b16_base2new.yaml": "coop+ship",
        "mpfgvc_cub.yaml": "mpfgvc",
    }
    assert sorted(p.name for p in configs.glob("*.yaml")) == sorted(methods)
    backbone = load_backbone("micro-vit")
    for name, method in methods.items():
        values = load_config_file(configs / name)
        built = method_config(build_method(method, backbone, values, source=name))
        built.update({f"ship.{k}": v for k, v in built.pop("ship", {}).items()})
        for key, value in values.items():
            assert built[key] == value, (name, key)
    assert load_config_file(configs / "coop_ship_vit_b16_base2new.yaml")["ship.batch_size"] == 256


@pytest.mark.slow
def test_device_smoke_script_runs_and_reports_failures(tmp_path):
    """scripts/device_smoke.py (what bench/gpu.sh runs on a GPU) on the CPU: cases pass with their numbers, and a
    failing case is reported with its error and counted in the exit code instead of stopping the rest."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "device_smoke.py"

    def smoke(*args):  # the first call generates the small world, the others find it
        command = [sys.executable, str(script), "--world", str(tmp_path / "world"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    run = smoke("--device", "cpu", "--only", "zeroshot-base2new,pretrain-unicl,pretrain-unicl-again,report")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "OK zeroshot-base2new" in run.stdout and "harmonic_mean=" in run.stdout
    assert (
        "OK pretrain-unicl-again" in run.stdout and "resumed_from_step=20" in run.stdout
    )  # all 20 steps of its 2 epochs
    assert "OK report" in run.stdout and "4/4 cases ran on cpu" in run.stdout
    bad = smoke("--device", "nonsense", "--only", "zeroshot-base2new")
    assert bad.returncode == 1 and "FAILED zeroshot-base2new" in bad.stdout and "0/1 cases" in bad.stdout
    # Alone, the resume case trains from scratch: that is a failure, not a resume.
    retrained = smoke("--device", "cpu", "--only", "pretrain-unicl-again")
    assert retrained.returncode == 1 and "not resumed from its finished checkpoint" in retrained.stdout


def test_negative_workers_and_unknown_device_refused(colour_world, tmp_path, capsys):
    root, weights = colour_world
    assert (
        main(
            [
                "extract",
                "--dataset",
                f"imagefolder:{root}",
                "--pretrained",
                str(weights),
                "--cache",
                str(tmp_path),
                "--workers",
                "-1",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "--workers must be 0 or more, got -1" in capsys.readouterr().err
    assert (
        main(
            [
                "extract",
                "--dataset",
                f"imagefolder:{root}",
                "--pretrained",
                str(weights),
                "--cache",
                str(tmp_path),
                "--device",
                "nonsense",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "--device nonsense:" in capsys.readouterr().err


def test_float_settings_accept_exponents_as_typed():
    """YAML 1.1 reads `5e-4` (no dot) as a string; a float setting takes it as the number the user meant."""
    from clipadapt.config import build_config, parse_overrides
    from clipadapt.pretraining.unicl import PretrainConfig

    assert build_config(PretrainConfig, parse_overrides(["lr=5e-4", "weight_decay=1E-2"])).lr == 5e-4
    with pytest.raises(ClipadaptError, match="lr in overrides must be float, got 'fast'"):
        build_config(PretrainConfig, parse_overrides(["lr=fast"]))


def test_the_default_model_says_once_that_it_knows_only_the_world(colour_world, tmp_path, capsys):
    root, weights = colour_world
    common = ["run", "zeroshot", "--dataset", f"imagefolder:{root}", "--cache", str(tmp_path / "cache")]
    assert main([*common, "--out", str(tmp_path / "default"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("note: the default model is a tiny CLIP that knows only the generated world") == 1
    assert "--model ViT-B-32 --pretrained openai" in err
    assert main([*common, "--pretrained", str(weights), "--out", str(tmp_path / "own"), "--no-progress"]) == 0
    assert "note:" not in capsys.readouterr().err  # weights of the user's own: nothing to say
