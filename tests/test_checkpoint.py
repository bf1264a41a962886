"""Training checkpoints: a checksum catches damage, the checkpoint a save replaced is kept, and a run whose newest
checkpoint is damaged resumes from the previous one and still ends where an uninterrupted run ends."""
import pytest
import torch

from clipadapt import CheckpointError
from clipadapt.checkpoint import load_checkpoint, load_checkpoint_or_previous, previous_path, save_checkpoint
from clipadapt.features import FeatureSet
from clipadapt.methods.ship import Ship, ShipConfig


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside the tensor data, after the header
    path.write_bytes(bytes(data))


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


def test_a_run_with_a_damaged_checkpoint_resumes_from_the_previous_one(backbone, tmp_path, monkeypatch):
    labels = torch.arange(4).repeat_interleave(16)
    train_features = torch.randn(len(labels), backbone.embed_dim, generator=torch.Generator().manual_seed(0))
    train, names = FeatureSet(train_features, labels), ["ant", "bee", "cat", "dog"]
    config = ShipConfig(encoder_hidden=32, generator_hidden=32, batch_size=16, epochs=4, checkpoint_every=3)
    whole = Ship(backbone, config)
    whole.fit(train, names, progress=False)
    interrupted, calls = Ship(backbone, config), {"n": 0}
    original = interrupted.loss

    def dies_at_step_7(*args, **kwargs):  # 4 steps an epoch: checkpoints after steps 3, 4 and 6
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(interrupted, "loss", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(train, names, out_dir=tmp_path, progress=False)
    flip_last_byte(tmp_path / "checkpoint_last.safetensors")  # step 6's checkpoint: damaged
    resumed = Ship(backbone, config)
    summary = resumed.fit(train, names, out_dir=tmp_path, progress=False)
    assert summary["resumed_from_step"] == 4  # the previous checkpoint
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, atol=1e-6, rtol=0)


def test_checkpoints_from_before_checksums_still_load(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"clipadapt_state": '{"step": 5}'})
    assert load_checkpoint(path)[1] == {"step": 5}
