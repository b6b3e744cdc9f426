from pathlib import Path

import pytest
import torch

from simclr_embed.training import checkpoint as ckpt_mod
from simclr_embed.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from simclr_embed.training.model import ModelConfig, SimCLR


def _state(model: SimCLR) -> dict:
    return {"config": {"model": {"proj_hidden_dim": 64, "proj_out_dim": 16, "proj_layers": 2}},
            "epoch": 3, "model": model.state_dict(), "metrics": [{"epoch": 3, "loss": 1.5}],
            "rng": {"torch": torch.get_rng_state()}}


def test_round_trip_rebuilds_the_model_from_its_own_config(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SimCLR(ModelConfig(proj_hidden_dim=64, proj_out_dim=16, proj_layers=2)).eval()
    save_checkpoint(tmp_path / "c.pt", _state(model))
    state = load_checkpoint(tmp_path / "c.pt")  # weights_only=True inside
    rebuilt = model_from_checkpoint(state).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x)[1], model(x)[1])
    assert state["epoch"] == 3 and state["metrics"][0]["loss"] == 1.5


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    model = SimCLR(ModelConfig(proj_hidden_dim=64, proj_out_dim=16, proj_layers=2))
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state(model))
    before = path.read_bytes()

    def torn_save(obj, f) -> None:
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(ckpt_mod.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {**_state(model), "epoch": 4})
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 3
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_unreadable_missing_and_foreign_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not a simclr-embed checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
