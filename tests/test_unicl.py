"""UniCL: the loss against a plain reference and CLIP's, the balanced sampler, the distributed loss, and
pretraining that learns and resumes exactly."""

import csv
import functools
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import COLOURS, colour_images
from open_clip.loss import ClipLoss

from clipadapt.cli import main
from clipadapt.data.samplers import BalancedBatchSampler
from clipadapt.errors import ClipadaptError
from clipadapt.losses import clip_loss, gather_batch, unicl_loss


def reference_unicl(image, text, labels, scale):
    """Eq. 2-4 of the paper written as loops over the batch."""
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    logits = scale * image @ text.T
    n = len(labels)
    i2t = t2i = 0.0
    for i in range(n):
        positives = [k for k in range(n) if labels[k] == labels[i]]
        row = logits[i].log_softmax(0)
        col = logits[:, i].log_softmax(0)
        i2t = i2t - sum(row[k] for k in positives) / len(positives)
        t2i = t2i - sum(col[k] for k in positives) / len(positives)
    return (i2t / n + t2i / n) / 2


def test_unicl_loss_matches_reference_and_gradients():
    torch.manual_seed(0)
    image = torch.randn(12, 16, dtype=torch.float64, requires_grad=True)
    text = torch.randn(12, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 10, 11, 2, 12, 3, 3])
    ours = unicl_loss(image, text, labels, 14.3)
    reference = reference_unicl(image, text, labels, 14.3)
    assert abs(ours.item() - reference.item()) < 1e-6
    ours_grad = torch.autograd.grad(ours, (image, text))
    ref_grad = torch.autograd.grad(reference, (image, text))
    for a, b in zip(ours_grad, ref_grad):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-6)


def test_unique_labels_reduce_to_clip_loss():
    torch.manual_seed(1)
    image, text = torch.randn(9, 8), torch.randn(9, 8)
    scale = torch.tensor(20.0)
    expected = ClipLoss()(
        torch.nn.functional.normalize(image, dim=-1), torch.nn.functional.normalize(text, dim=-1), scale
    )
    torch.testing.assert_close(unicl_loss(image, text, torch.arange(100, 109), scale), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(clip_loss(image, text, scale), expected, atol=1e-6, rtol=0)


def test_shared_labels_are_not_negatives():
    """Two images of one class and their two texts: CLIP's loss pushes each text away from the other image of its
    class (a false negative); UniCL's pulls it closer."""
    torch.manual_seed(3)
    a, b, c = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    image = torch.stack([a, c, b])
    text = torch.stack([a, c, b]).requires_grad_()
    labels = torch.tensor([0, 0, 1])
    (clip_grad,) = torch.autograd.grad(clip_loss(image, text, 10.0), text)
    (unicl_grad,) = torch.autograd.grad(unicl_loss(image, text, labels, 10.0), text)
    towards_a = a - (a @ c) * c  # the direction from text 1 (= c) towards image 0 (= a)
    # A gradient step moves text 1 along -grad: away from image 0 for CLIP, towards it for UniCL.
    assert (-clip_grad[1] @ towards_a) < 0 < (-unicl_grad[1] @ towards_a)


def test_balanced_sampler_ratio_and_resume():
    sampler = BalancedBatchSampler(n_label=50, n_text=400, batch_size=10, label_fraction=0.3, seed=3)
    assert len(sampler) == 45
    for epoch in range(3):
        batches = list(sampler.batches(epoch))
        assert len(batches) == 45
        for batch in batches:
            assert sum(i < 50 for i in batch) == 3 and sum(i >= 50 for i in batch) == 7
            assert all(0 <= i < 450 for i in batch)
        assert list(sampler.batches(epoch, start=17)) == batches[17:]
    # The small source is cycled through whole permutations: every label sample comes equally often.
    counts = torch.bincount(torch.tensor([i for b in sampler.batches(0) for i in b if i < 50]), minlength=50)
    assert counts.min() >= 2 and counts.max() <= 3
    ranks = [list(BalancedBatchSampler(50, 400, 10, 0.3, seed=3, rank=r, world_size=2).batches(1)) for r in (0, 1)]
    for a, b in zip(*ranks):
        assert not set(a) & set(b) and sum(i < 50 for i in a) == 3
    # One source only: every batch full from it, each sample once an epoch, indices without the other's offset.
    for n_label, n_text in ((0, 100), (100, 0)):
        batches = list(BalancedBatchSampler(n_label, n_text, 10, 0.5).batches(0))
        assert all(len(b) == 10 for b in batches) and sorted(i for b in batches for i in b) == list(range(100))
    with pytest.raises(ClipadaptError, match="do not fill one batch"):
        BalancedBatchSampler(3, 4, 10, 0.5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank, world_size, port, image, text, labels, scale, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    half = len(labels) // world_size
    local = slice(rank * half, (rank + 1) * half)
    local_image = image[local].clone().requires_grad_()
    local_text = text[local].clone().requires_grad_()
    all_image, all_text, all_labels = gather_batch(local_image, local_text, labels[local])
    loss = unicl_loss(all_image, all_text, all_labels, scale)
    loss.backward()
    # Plain lists: tensors on a queue are shared memory that disappears when this process exits.
    queue.put((rank, loss.item(), local_image.grad.tolist(), local_text.grad.tolist(), all_labels.tolist()))
    dist.destroy_process_group()


def test_distributed_loss_equals_global_batch_loss():
    torch.manual_seed(2)
    image, text = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 20, 0, 2, 21, 1])
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(
        _distributed_worker, args=(2, _free_port(), image, text, labels, 10.0, queue), nprocs=2, start_method="spawn"
    )
    results = sorted(queue.get(timeout=60) for _ in range(2))
    full_image, full_text = image.clone().requires_grad_(), text.clone().requires_grad_()
    expected = unicl_loss(full_image, full_text, labels, 10.0)
    expected.backward()
    for rank, loss, image_grad, text_grad, gathered_labels in results:
        assert abs(loss - expected.item()) < 1e-9
        assert gathered_labels == labels.tolist()
        # all_gather's backward sums the identical loss of both ranks: the gradient is world_size times the
        # global one, which the trainer's gradient averaging divides back out.
        local = slice(rank * 4, (rank + 1) * 4)
        torch.testing.assert_close(torch.tensor(image_grad, dtype=torch.float64) / 2, full_image.grad[local])
        torch.testing.assert_close(torch.tensor(text_grad, dtype=torch.float64) / 2, full_text.grad[local])


# ---- pretraining end to end ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrain_data(tmp_path_factory):
    root = colour_images(tmp_path_factory.mktemp("labelled"), {"train": 12, "val": 4}, seed=1)
    captions = tmp_path_factory.mktemp("captions")
    colour_images(captions, {"train": 12}, seed=2)
    with open(captions / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for name in COLOURS:
            for i in range(12):
                writer.writerow([f"train/{name}/{i}.png", f"a {name} square filling the picture"])
    return f"imagefolder:{root},csv:{captions / 'captions.csv'}"


def _pretrain(data, out, loss="unicl", *extra, model="micro-vit"):
    return main(
        [
            "pretrain",
            "--data",
            data,
            "--model",
            model,
            "--out",
            str(out),
            "--loss",
            loss,
            "--no-progress",
            "--batch-size",
            "16",
            "epochs=6",
            "lr=0.002",
            "warmup=0.1",
            "checkpoint_every=5",
            *extra,
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["unicl", "clip", "ce"])
def test_pretraining_loss_falls(pretrain_data, tmp_path, loss):
    assert _pretrain(pretrain_data, tmp_path, loss) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    samples = 48 if loss == "ce" else 96  # CE learns from the image-label half only
    assert metrics["steps"] == 6 * samples // 16 and metrics["loss"] == loss
    assert metrics["epoch_losses"][-1] < 0.7 * metrics["epoch_losses"][0]
    # The convergence curve: loss and accuracy on the labelled data's held-out val images after every epoch.
    validation = metrics["validation"]
    assert len(validation) == 6 and validation[-1]["val_loss"] < validation[0]["val_loss"]
    assert validation[-1]["val_accuracy"] >= 75.0  # 4 colours: chance is 25%
    assert (tmp_path / "model.safetensors").is_file()


def test_default_workers_only_on_gpus(monkeypatch):
    from clipadapt.training import distributed

    for cores, expected in ((16, 8), (4, 3), (1, 0)):
        monkeypatch.setattr(distributed, "available_cores", lambda cores=cores: cores)
        assert distributed.default_workers("cuda") == expected and distributed.default_workers("cuda:1") == expected
        assert distributed.default_workers("cpu") == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's processes on this node share its cores
    for cores, expected in ((64, 8), (16, 3), (4, 0)):
        monkeypatch.setattr(distributed, "available_cores", lambda cores=cores: cores)
        assert distributed.default_workers("cuda") == expected


def test_pretrain_workers_from_config_file_flag_and_checks(pretrain_data, tmp_path, capsys):
    config = tmp_path / "pretrain.yaml"
    config.write_text("workers: 1\nepochs: 1\n")
    assert _pretrain(pretrain_data, tmp_path / "file", "unicl", "--config", str(config)) == 0
    assert json.loads((tmp_path / "file" / "metrics.json").read_text())["config"]["workers"] == 1
    assert _pretrain(pretrain_data, tmp_path / "flag", "unicl", "--config", str(config), "--workers", "0") == 0
    assert json.loads((tmp_path / "flag" / "metrics.json").read_text())["config"]["workers"] == 0
    capsys.readouterr()
    assert _pretrain(pretrain_data, tmp_path / "bad", "unicl", "workers=-1") == 2
    assert "workers must be 0 or more" in capsys.readouterr().err
    assert _pretrain(pretrain_data, tmp_path / "bad", "unicl", "checkpoint_every=0") == 2
    assert "checkpoint_every 1 or more" in capsys.readouterr().err


def test_channels_last_only_for_convolutional_towers():
    from clipadapt import load_backbone
    from clipadapt.pretraining.unicl import channels_last_if_convolutional

    assert channels_last_if_convolutional(load_backbone("micro-vit").model.visual) == torch.contiguous_format
    assert channels_last_if_convolutional(load_backbone("tiny-rn").model.visual) == torch.channels_last


@pytest.mark.parametrize("loss", ["unicl", "clip", "ce"])
def test_a_pretraining_step_reads_no_device_value(loss):
    """On a GPU, reading a device value (`.item()`, `int()`, a boolean mask) mid-step makes the host wait for the
    queued kernels, and the GPU idles while it queues the rest. On the meta device such a read raises, so a step
    that runs there reads nothing (the Trainer reads the loss after the backward pass). Blocking copies to the
    device are not caught here: on a GPU, bench/unicl_step.py lists every wait."""
    from pathlib import Path

    from clipadapt import load_backbone
    from clipadapt.data import Sample
    from clipadapt.pretraining.unicl import PretrainConfig, PretrainData, UniCLPretrainer

    backbone = load_backbone("micro-vit")
    data = PretrainData(
        ["red", "blue"],
        [Sample(Path("r.png"), 0), Sample(Path("b.png"), 1)],
        [Sample(Path("c.png"), -1, "a red square filling the picture")],
    )
    indices = torch.tensor([0, 1]) if loss == "ce" else torch.tensor([0, 2, 1])  # CE: image-label samples only
    pretrainer = UniCLPretrainer(backbone, PretrainConfig(loss=loss, batch_size=len(indices)), data)
    pretrainer.module.to("meta")
    images = torch.randn(len(indices), 3, backbone.image_size, backbone.image_size)
    loss_value = pretrainer._loss((images, None, indices), step=0)
    loss_value.backward()
    assert loss_value.device.type == "meta"
    assert backbone.model.visual.conv1.weight.grad is not None
    with pytest.raises(RuntimeError, match="meta"):  # the probe works: a read of a value fails there
        loss_value.item()


def test_augmented_batches_are_a_function_of_their_step(pretrain_data):
    """With augment=true (microsoft/UniCL's timm pipeline) a batch's views are drawn from its step's seed: the
    same from any offset and with decoding workers (so a resumed run sees the same views), other at other steps,
    and the global RNGs are left as they were."""
    import random

    from clipadapt import load_backbone
    from clipadapt.pretraining.unicl import PretrainConfig, PretrainData, UniCLPretrainer

    data = PretrainData.from_specs(pretrain_data.split(","))
    backbone = load_backbone("micro-vit")

    def batches(epoch, offset, **options):
        trainer = UniCLPretrainer(backbone, PretrainConfig(batch_size=16, **options), data)
        return list(trainer._batches(epoch, offset))

    import numpy as np

    states = random.getstate(), np.random.get_state()[1].tolist(), torch.random.get_rng_state().tolist()
    from_one = batches(1, 1, augment=True)
    assert (random.getstate(), np.random.get_state()[1].tolist(), torch.random.get_rng_state().tolist()) == states
    from_zero, in_a_worker = batches(1, 0, augment=True), batches(1, 1, augment=True, workers=1)
    plain = batches(1, 1)
    for (images, _, indices), (zero_images, _, zero_indices), (worker_images, _, _), (
        plain_images,
        _,
        plain_indices,
    ) in zip(from_one, from_zero[1:], in_a_worker, plain):
        assert torch.equal(indices, zero_indices) and torch.equal(indices, plain_indices)
        assert torch.equal(images, zero_images) and torch.equal(images, worker_images)
        assert images.shape == plain_images.shape and not torch.equal(images, plain_images)
    assert not torch.equal(from_zero[0][0], from_zero[1][0])


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, extra",
    [
        ("micro-vit", ()),
        ("tiny-rn", ()),  # tiny-rn: channels-last moments
        ("micro-vit", ("augment=true",)),
    ],
)  # augmented views seeded by step
def test_pretraining_resumes_exactly(pretrain_data, tmp_path, monkeypatch, model, extra):
    from safetensors.torch import load_file

    from clipadapt.pretraining.unicl import UniCLPretrainer

    pretrain = functools.partial(_pretrain, model=model)
    assert pretrain(pretrain_data, tmp_path / "straight", "unicl", *extra) == 0
    original = UniCLPretrainer._loss

    def crash_at_step_23(self, batch, step):
        if step == 23:
            raise KeyboardInterrupt
        return original(self, batch, step)

    monkeypatch.setattr(UniCLPretrainer, "_loss", crash_at_step_23)
    assert pretrain(pretrain_data, tmp_path / "resumed", "unicl", *extra) == 130  # after the step-20 checkpoint
    monkeypatch.setattr(UniCLPretrainer, "_loss", original)
    # Resumed with a decoding worker and another checkpoint frequency: neither changes what the run computes.
    assert pretrain(pretrain_data, tmp_path / "resumed", "unicl", *extra, "--workers", "1", "checkpoint_every=7") == 0
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 20
    # The validation curve of the epochs before the interruption came back with the checkpoint.
    straight_validation = json.loads((tmp_path / "straight" / "metrics.json").read_text())["validation"]
    assert [v["val_accuracy"] for v in metrics["validation"]] == [v["val_accuracy"] for v in straight_validation]
    assert metrics["validation"][0] == straight_validation[0]
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=0)
    # Another configuration in the same folder is refused instead of silently mixing runs.
    assert pretrain(pretrain_data, tmp_path / "resumed", "clip") == 2


@pytest.mark.slow
def test_torchrun_pretraining_with_two_processes(pretrain_data, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).parent / "torchrun"
    clipadapt = Path(sys.executable).parent / "clipadapt"
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            str(clipadapt),
            "pretrain",
            "--data",
            pretrain_data,
            "--model",
            "micro-vit",
            "--out",
            str(tmp_path),
            "--batch-size",
            "8",
            "--no-progress",
            "epochs=2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 2 * 96 // 16
