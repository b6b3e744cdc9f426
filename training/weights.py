"""Released weights: one compact safetensors file (fp16 encoder + linear head) whose metadata
holds the training config, classes, normalization and evaluation, so that export can rebuild
the serving model from it alone. The projection head is training-only and left out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file

from simclr_embed.errors import ConfigError

FORMAT = "simclr-embed/weights"
_META_KEYS = ("config", "classes", "normalization", "eval", "epoch")


def save_weights(state: dict[str, Any], path: Path, extra: dict[str, Any] | None = None) -> Path:
    """Checkpoint state -> `path` (.safetensors): floating tensors in fp16, others as they are."""
    tensors = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in state["model"].items() if k.startswith("encoder.")
    } | {f"linear_head.{k}": v.half().contiguous() for k, v in state["linear_head"].items()}
    meta = {k: json.dumps(state.get(k)) for k in _META_KEYS} | {"format": FORMAT}
    meta["extra"] = json.dumps(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def load_weights(path: Path | str) -> dict[str, Any]:
    """A weights file -> a checkpoint-like state (fp32 tensors, encoder only) for export."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{path} is not a simclr-embed weights file")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    as_fp32 = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    state = {k: json.loads(meta[k]) for k in _META_KEYS}
    state["model"] = {k: v for k, v in as_fp32.items() if k.startswith("encoder.")}
    state["linear_head"] = {k.removeprefix("linear_head."): v for k, v in as_fp32.items()
                            if k.startswith("linear_head.")}
    state["encoder_only"] = True
    state["weights_extra"] = json.loads(meta.get("extra", "{}"))
    return state


def weights_digest(path: Path | str) -> str:
    """sha256 of the file: identifies the released weights."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
