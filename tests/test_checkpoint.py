"""Training checkpoints: a checksum catches damage and the checkpoint a save replaced is kept (a run resuming from
it ends where an uninterrupted run ends: test_ship's resume test)."""

import pytest
import torch
from conftest import flip_last_byte

from clipadapt import CheckpointError
from clipadapt.checkpoint import load_checkpoint, load_checkpoint_or_previous, previous_path, save_checkpoint


def test_damage_is_detected_and_the_previous_checkpoint_is_used(tmp_path, capsys):
    path = tmp_path / "checkpoint_last.safetensors"
    save_checkpoint(path, {"w": torch.zeros(4)}, {"step": 1})
    save_checkpoint(path, {"w": torch.ones(4)}, {"step": 2})
    assert previous_path(path).is_file() and load_checkpoint(path)[1] == {"step": 2}
    flip_last_byte(path)
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)
    tensors, state, used = load_checkpoint_or_previous(path)
    assert state == {"step": 1} and torch.equal(tensors["w"], torch.zeros(4)) and used == previous_path(path)
    assert "resuming from the previous checkpoint" in capsys.readouterr().err
    path.write_bytes(path.read_bytes()[:40])  # truncated
    assert load_checkpoint_or_previous(path)[1] == {"step": 1}
    flip_last_byte(previous_path(path))
    with pytest.raises(CheckpointError, match="and the previous one"):
        load_checkpoint_or_previous(path)


def test_a_checkpoint_without_its_checksum_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "unchecked.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"clipadapt_state": '{"step": 5}'})
    with pytest.raises(CheckpointError, match="unchecked.safetensors has no checksum"):
        load_checkpoint(path)


def test_optimizer_moments_come_back_in_their_parameters_memory_layout(tmp_path):
    """Checkpoints store tensors contiguous; a channels-last weight's moments are given its layout back, and a fused
    AdamW step after the round trip equals the uninterrupted one."""
    import copy

    from torch import nn

    from clipadapt.checkpoint import optimizer_from_checkpoint, optimizer_to_checkpoint

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)

    def step(model, opt):
        opt.zero_grad()
        (model(images) ** 2).mean().backward()
        opt.step()

    step(conv, optimizer)
    tensors, state = optimizer_to_checkpoint(optimizer)
    save_checkpoint(tmp_path / "c.safetensors", tensors, {"optimizer": state})
    tensors, saved = load_checkpoint(tmp_path / "c.safetensors")
    restored_conv = copy.deepcopy(conv)
    restored = torch.optim.AdamW(restored_conv.parameters(), lr=0.1, fused=True)
    optimizer_from_checkpoint(restored, tensors, saved["optimizer"])
    moment = restored.state[restored_conv.weight]["exp_avg"]
    assert moment.is_contiguous(memory_format=torch.channels_last) and not moment.is_contiguous()
    step(conv, optimizer)
    step(restored_conv, restored)
    assert torch.equal(restored_conv.weight, conv.weight)
