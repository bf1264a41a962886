"""Faults during training and extraction: a non-finite loss stops the run (or the step is skipped), and a run
killed with SIGKILL in a subprocess resumes, when the same command is run again, to the same numbers and weights
as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import colour_images
from safetensors.torch import load_file
from torch import nn

from clipadapt import load_backbone
from clipadapt.checkpoint import load_checkpoint
from clipadapt.cli import main
from clipadapt.errors import ClipadaptError
from clipadapt.training.loop import Trainer, skipping_nonfinite_steps

# One thread in every subprocess: the uninterrupted and the resumed runs then add floats in the same order.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---- non-finite losses --------------------------------------------------------------------------------------
def _fit_line(tmp_path, bad_step: int, loss_at_bad_step: float, skip: bool | None = None) -> Trainer:
    """Fits y = 2x with SGD for 3 epochs of 4 steps; the loss at `bad_step` is multiplied by `loss_at_bad_step`."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 8)[:, None]
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        total_steps=12,
        steps_per_epoch=4,
        lr_at=lambda step: 0.1,
        out_dir=tmp_path,
        checkpoint_every=2,
        progress=False,
        skip_nonfinite=skip,
    )

    def step_fn(batch: torch.Tensor, step: int) -> torch.Tensor:
        loss = ((model(x[batch]) - 2 * x[batch]) ** 2).mean()
        return loss * loss_at_bad_step if step == bad_step else loss

    return trainer.fit(lambda epoch, offset: (torch.tensor([2 * b, 2 * b + 1]) for b in range(offset, 4)), step_fn)


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """The step scalars go to TensorBoard every LOG_EVERY_STEPS steps; a run killed after a log its checkpoint does
    not cover drops that log when it resumes, so TensorBoard's reader sees each logged step once."""
    from conftest import tensorboard_scalars

    from clipadapt.training.loop import LOG_EVERY_STEPS

    def fit(stop_at: int | None) -> None:
        torch.manual_seed(0)
        model = nn.Linear(1, 1)
        total = 2 * LOG_EVERY_STEPS + 50
        trainer = Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.01),
            total_steps=total,
            steps_per_epoch=total,
            lr_at=lambda step: 0.01,
            out_dir=tmp_path,
            checkpoint_every=LOG_EVERY_STEPS + 50,
            progress=False,
        )

        def step_fn(batch: torch.Tensor, step: int) -> torch.Tensor:
            if step == stop_at:
                raise KeyboardInterrupt
            return (model(torch.ones(1, 1)) - 1).pow(2).sum()

        trainer.fit(lambda epoch, offset: (torch.tensor([0]) for _ in range(offset, total)), step_fn)

    with pytest.raises(KeyboardInterrupt):  # after the log at step 200, checkpointed at 150
        fit(stop_at=2 * LOG_EVERY_STEPS + 10)
    # TensorBoard reads a directory's event files in name order, and a name starts with the second it was opened (then
    # host, pid and a per-process counter): a real resume is a later process in a later second, so wait for one here.
    time.sleep(1.01 - time.time() % 1)
    fit(stop_at=None)
    steps, _ = tensorboard_scalars(tmp_path / "tensorboard", "train/loss")
    assert steps == [LOG_EVERY_STEPS, 2 * LOG_EVERY_STEPS, 2 * LOG_EVERY_STEPS + 50]


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    with pytest.raises(ClipadaptError, match=r"loss is nan at step 5; stopped, the last good checkpoint is kept in"):
        _fit_line(tmp_path, bad_step=5, loss_at_bad_step=float("nan"))
    assert (
        load_checkpoint(tmp_path / "checkpoint_last.safetensors")[1]["step"] == 4
    )  # the checkpoint before the bad step, untouched by it


def test_the_loss_is_read_once_a_step_after_its_backward_pass(monkeypatch):
    """On a GPU, reading a value waits for every queued kernel: read after the backward pass, it finds the host
    done queueing the step, so the GPU idles only while the host queues the optimizer step and the next forward."""
    events = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: (events.append("read"), item(self))[1])
    model = nn.Linear(1, 1)
    model.weight.register_hook(lambda grad: events.append("backward"))
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        total_steps=3,
        steps_per_epoch=3,
        lr_at=lambda step: 0.1,
        progress=False,
    )
    trainer.fit(
        lambda epoch, offset: (torch.ones(2, 1) for _ in range(offset, 3)),
        lambda batch, step: model(batch).pow(2).mean(),
    )
    assert events == ["backward", "read"] * 3


def _skipping_rank(rank: int, port: int, queue) -> None:
    """One of two gloo ranks fitting y = 2x for 8 steps with --skip-nonfinite; only rank 1's loss is NaN at step 5."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 8)[:, None] + rank
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        total_steps=8,
        steps_per_epoch=4,
        lr_at=lambda step: 0.1,
        progress=False,
        skip_nonfinite=True,
    )

    def step_fn(batch: torch.Tensor, step: int) -> torch.Tensor:
        loss = ((model(x[batch]) - 2 * x[batch]) ** 2).mean()
        return loss * float("nan") if step == 5 and rank == 1 else loss

    trainer.fit(lambda epoch, offset: (torch.tensor([2 * b, 2 * b + 1]) for b in range(offset, 4)), step_fn)
    queue.put((rank, trainer.skipped_steps, [p.detach().tolist() for p in model.parameters()]))
    dist.destroy_process_group()


def test_a_loss_that_is_not_finite_on_one_rank_is_skipped_on_every_rank():
    """Under torchrun the ranks average their gradients every step: a step skipped on one rank only would leave
    the other waiting in that exchange (or the weights apart). The Trainer's one read carries every rank's verdict."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    queue = mp.get_context("spawn").Queue()
    ranks = mp.start_processes(_skipping_rank, args=(port, queue), nprocs=2, start_method="spawn", join=False)
    try:
        results = sorted(queue.get(timeout=120) for _ in range(2))
    finally:
        for process in ranks.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert [skipped for _, skipped, _ in results] == [[5], [5]]
    assert results[0][2] == results[1][2]  # the same weights on both ranks


def test_skipped_step_changes_nothing_and_is_reported(tmp_path, capsys):
    with skipping_nonfinite_steps():  # what --skip-nonfinite sets around a command
        skipped = _fit_line(tmp_path / "skip", bad_step=5, loss_at_bad_step=float("inf"))
    # A zero loss gives zero gradients: plain SGD then leaves the weights as a skipped step does.
    reference = _fit_line(tmp_path / "zero", bad_step=5, loss_at_bad_step=0.0, skip=False)
    assert skipped.skipped_steps == [5] and skipped.step == 12
    assert "loss is inf at step 5; step skipped" in capsys.readouterr().err
    for a, b in zip(skipped.module.parameters(), reference.module.parameters()):
        assert torch.equal(a, b)
    assert skipped.losses[0] == reference.losses[0] and skipped.losses[2] == reference.losses[2]
    assert skipped.losses[1] == pytest.approx(reference.losses[1] * 4 / 3)  # mean over the 3 finite steps
    with pytest.raises(ClipadaptError, match="step 5"):  # an explicit False wins over the context
        with skipping_nonfinite_steps():
            _fit_line(tmp_path / "explicit", bad_step=5, loss_at_bad_step=float("nan"), skip=False)


def test_skip_nonfinite_from_the_command_line(colour_world, tmp_path, monkeypatch, capsys):
    root, weights = colour_world
    original = Trainer.fit

    def nan_at_step_2(self, batches, step_fn):
        return original(self, batches, lambda batch, step: step_fn(batch, step) * (float("nan") if step == 2 else 1))

    monkeypatch.setattr(Trainer, "fit", nan_at_step_2)

    def run(out, *flags):
        return main(
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
                "2",
                "--cache",
                str(tmp_path / "cache"),
                "--out",
                str(out),
                "--no-progress",
                "init=a photo of a",
                "epochs=2",
                "batch_size=4",
                *flags,
            ]
        )

    assert run(tmp_path / "stops") == 2
    assert "loss is nan at step 2; stopped" in capsys.readouterr().err
    assert run(tmp_path / "skips", "--skip-nonfinite") == 0
    metrics = json.loads((tmp_path / "skips" / "metrics.json").read_text())
    assert metrics["training"]["skipped_steps"] == [2] and metrics["training"]["steps"] == 4


# ---- kill -9 ----------------------------------------------------------------------------------------------
def _clipadapt(argv: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "clipadapt", *argv], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _kill_once(argv: list[str], ready, timeout: float = 300) -> None:
    """Start `clipadapt argv` and SIGKILL it as soon as `ready()` holds; it must still be running then."""
    process = subprocess.Popen(
        [sys.executable, "-m", "clipadapt", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.time() + timeout
    while not ready():
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (code {process.returncode}) before it could be killed: {process.stderr.read()[-2000:]}"
            )
        if time.time() > deadline:
            process.kill()
            pytest.fail("the run never reached the point where it is killed")
        time.sleep(0.005)
    if process.poll() is not None:
        pytest.fail(f"the run ended (code {process.returncode}) before it could be killed")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def _two_checkpoints(folder, pattern: str):
    """Ready once a checkpoint has replaced another: the run is past its first save and mid-way."""
    return lambda: any(folder.glob(pattern + ".prev"))


def _assert_same_tensors(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_killed_pretraining_resumes_to_the_same_weights(tmp_path):
    root = colour_images(tmp_path / "labelled", {"train": 12}, seed=1)
    argv = [
        "pretrain",
        "--data",
        f"imagefolder:{root}",
        "--model",
        "micro-vit",
        "--no-progress",
        "--batch-size",
        "8",
        "epochs=12",
        "checkpoint_every=3",
    ]
    _clipadapt([*argv, "--out", str(tmp_path / "straight")])
    killed = tmp_path / "killed"
    _kill_once([*argv, "--out", str(killed)], _two_checkpoints(killed, "checkpoint_last.safetensors"))
    assert not (killed / "model.safetensors").exists()
    _clipadapt([*argv, "--out", str(killed)])
    metrics = json.loads((killed / "metrics.json").read_text())
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert 0 < metrics["resumed_from_step"] < metrics["steps"] == straight["steps"]
    assert metrics["epoch_losses"] == straight["epoch_losses"]
    _assert_same_tensors(killed / "model.safetensors", tmp_path / "straight" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, protocol, checkpoint, weights",
    [
        ("coop", "fewshot", "train-*/checkpoint_last.safetensors", "train-*/coop.safetensors"),
        ("coop+ship", "base2new", "train-*/ship/checkpoint_last.safetensors", "train-*/coop+ship.ship.safetensors"),
    ],
)
def test_killed_run_resumes_to_the_same_metrics(colour_world, tmp_path, method, protocol, checkpoint, weights):
    root, model = colour_world
    argv = [
        "run",
        method,
        "--dataset",
        f"imagefolder:{root}",
        "--pretrained",
        str(model),
        "--protocol",
        protocol,
        "--shots",
        "4",
        "--cache",
        str(tmp_path / "cache"),
        "--no-progress",
        "init=a photo of a",
        "epochs=60",
        "batch_size=4",
        "checkpoint_every=3",
        "ship.epochs=150",
        "ship.batch_size=4",
        "ship.checkpoint_every=3",
    ]
    if method == "coop":
        argv = [word for word in argv if not word.startswith("ship.")]
    _clipadapt([*argv, "--out", str(tmp_path / "straight")])
    killed = tmp_path / "killed"
    _kill_once([*argv, "--out", str(killed)], _two_checkpoints(killed, checkpoint))
    _clipadapt([*argv, "--out", str(killed)])
    metrics = json.loads((killed / "metrics.json").read_text())
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    summary = metrics["training"]["ship"] if method == "coop+ship" else metrics["training"]
    assert summary["resumed_from_step"] > 0
    for key in ("accuracy", "base_accuracy", "new_accuracy", "harmonic_mean"):
        assert metrics.get(key) == straight.get(key), key
    [resumed_weights] = killed.glob(weights)
    [straight_weights] = (tmp_path / "straight").glob(weights)
    _assert_same_tensors(resumed_weights, straight_weights)


@pytest.mark.slow
def test_killed_extraction_keeps_its_finished_shards(tmp_path):
    root = colour_images(tmp_path / "data", {"train": 100}, seed=3)  # 400 images: 16 shards of 25
    weights = tmp_path / "micro.safetensors"  # the cache is keyed by the weights: both runs use these
    load_backbone("micro-vit").save(weights)
    argv = [
        "extract",
        "--dataset",
        f"imagefolder:{root}",
        "--pretrained",
        str(weights),
        "--splits",
        "train",
        "--shard-size",
        "25",
        "--batch-size",
        "1",
        "--no-progress",
    ]
    _clipadapt([*argv, "--cache", str(tmp_path / "straight")])
    cache = tmp_path / "killed"
    _kill_once([*argv, "--cache", str(cache)], lambda: any(cache.glob("features/*/shard_25_00001.npy")))
    [entry] = (cache / "features").iterdir()
    assert not (entry / "meta.json").exists()  # an incomplete entry is never described as complete
    finished = {p.name: p.stat().st_mtime_ns for p in entry.glob("shard_*.npy")}
    assert 2 <= len(finished) < 16
    _clipadapt([*argv, "--cache", str(cache)])
    assert all(entry.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in finished.items())
    [straight] = (tmp_path / "straight" / "features").iterdir()
    assert straight.name == entry.name and (entry / "meta.json").is_file()
    for shard in sorted(straight.glob("shard_*.npy")):
        assert np.array_equal(np.load(shard), np.load(entry / shard.name))
