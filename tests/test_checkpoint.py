"""Training checkpoints: a checksum catches damage and the checkpoint a save replaced is kept (a run resuming from
it ends where an uninterrupted run ends: test_ship's resume test)."""
import pytest
import torch

from clipadapt import CheckpointError
from clipadapt.checkpoint import load_checkpoint, load_checkpoint_or_previous, previous_path, save_checkpoint
from conftest import flip_last_byte


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


def test_checkpoints_from_before_checksums_still_load(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"clipadapt_state": '{"step": 5}'})
    assert load_checkpoint(path)[1] == {"step": 5}
