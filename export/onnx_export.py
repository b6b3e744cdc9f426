"""Checkpoint -> ONNX FP32: one graph from uint8 pixels to (embedding, logits).

The graph owns the preprocessing contract: input `pixels` is (B, S, S, 3) uint8 RGB (NHWC, the
layout decoders produce), normalization with the training split's mean/std happens inside, and
the two outputs are the L2-normalized representation h (`embedding`, for embed and search) and
the linear head's logits (`logits`, for classify). One encoder pass serves all three routes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr_embed.errors import ConfigError
from simclr_embed.training.checkpoint import CheckpointError, model_from_checkpoint

log = logging.getLogger(__name__)

Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[str, ...] = get_args(Exporter)
OPSET = 17
INPUT_NAME, OUTPUT_NAMES = "pixels", ("embedding", "logits")


class EmbedClassify(nn.Module):
    """uint8 (B, S, S, 3) -> embedding (B, 512) unit-norm, logits (B, C)."""

    def __init__(self, encoder: nn.Module, head: nn.Linear, mean: list[float], std: list[float]):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        x = pixels.permute(0, 3, 1, 2).float()  # (B, 3, S, S) in 0..255
        x = (x - self.mean) / self.std  # (B, 3, S, S) normalized as in training
        h = self.encoder(x)  # (B, 512)
        return F.normalize(h, dim=1), self.head(h)  # (B, 512), (B, C)


def build_embed_classify(state: dict[str, Any]) -> EmbedClassify:
    """The serving model, rebuilt from the checkpoint's own config, weights and head."""
    if "linear_head" not in state:
        raise CheckpointError(
            "checkpoint has no linear head: it is from an unfinished run; finish it with "
            "`simclr-embed train --out-dir <run> --resume` first"
        )
    encoder = model_from_checkpoint(state).encoder
    head = nn.Linear(encoder_dim(state), len(state["classes"]))
    head.load_state_dict(state["linear_head"])
    norm = state["normalization"]
    return EmbedClassify(encoder, head, norm["mean"], norm["std"]).eval()


def encoder_dim(state: dict[str, Any]) -> int:
    return int(state["linear_head"]["weight"].shape[1])


def config_digest(state: dict[str, Any]) -> str:
    blob = json.dumps(state["config"], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def weights_digest(state: dict[str, Any]) -> str:
    """sha256 of the encoder's and head's tensors in a fixed order: two exports share a model
    id only when they serve the same weights, whatever their training configs."""
    h = hashlib.sha256()
    tensors = {f"model.{k}": v for k, v in state["model"].items() if k.startswith("encoder.")}
    tensors |= {f"head.{k}": v for k, v in state["linear_head"].items()}
    for name in sorted(tensors):
        t = tensors[name].detach().float().contiguous().cpu()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def export_onnx(state: dict[str, Any], path: Path, exporter: str = "torchscript") -> Path:
    """Write the FP32 graph with a dynamic batch axis and the bundle's metadata."""
    import onnx

    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown exporter {exporter!r}; valid choices: {', '.join(EXPORTERS)}")
    model = build_embed_classify(state)
    size = state["config"]["image_size"]
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    kw: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                              opset_version=OPSET)
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                          dynamic_shapes={"pixels": {0: batch}}, **kw)
    else:
        axes = {INPUT_NAME: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUT_NAMES}}
        torch.onnx.export(model, (example,), str(path), dynamo=False, dynamic_axes=axes, **kw)
    proto = onnx.load(str(path))
    set_metadata(proto, metadata(state, exporter))
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return path


def metadata(state: dict[str, Any], exporter: str) -> dict[str, str]:
    size = state["config"]["image_size"]
    return {
        "class_names": json.dumps(state["classes"]),
        "embedding_dim": str(encoder_dim(state)),
        "input_layout": f"NHWC uint8 RGB, {size}x{size}, normalization inside the graph",
        "config_digest": config_digest(state),
        "config": json.dumps(state["config"], default=str),
        "metrics": json.dumps(state.get("eval", {})),
        "epoch": str(state["epoch"]),
        "exporter": exporter,
    }


def set_metadata(proto, props: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
