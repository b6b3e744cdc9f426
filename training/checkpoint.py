"""Self-describing checkpoints: the config that rebuilds the model travels with the weights.

Files are written atomically (temp file in the same directory, fsync, rename), so a crash during
a save leaves the previous checkpoint intact, and are read with `weights_only=True`, so loading
one never runs code from it.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from simclr_embed.errors import UserError
from simclr_embed.training.model import ModelConfig, SimCLR

FORMAT = "simclr-embed/checkpoint"
VERSION = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or not ours; the message names the file."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint (.pt), or released weights (.safetensors, encoder + head only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    if path.suffix == ".safetensors":
        from simclr_embed.training.weights import load_weights

        try:
            return load_weights(path)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"cannot read weights {path}: {e}") from e
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a simclr-embed checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state.get('version')}, this code reads {VERSION}"
        )
    return state


def model_from_checkpoint(state: dict[str, Any]) -> SimCLR:
    """Rebuild the network from the checkpoint's own config and load its weights."""
    # Checkpoints from before the stem was recorded all had the CIFAR stem.
    model = SimCLR(ModelConfig(**{"stem": "cifar", **state["config"]["model"]}))
    if not state.get("encoder_only"):
        model.load_state_dict(state["model"])
        return model
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or any(not k.startswith("projector.") for k in missing):
        raise CheckpointError(f"weights do not fit the encoder: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    return model
