"""`simclr-embed export`: a finished checkpoint to a verified model bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simclr_embed.cli import dataclass_flags, with_flags
from simclr_embed.export.build import ExportConfig, build_bundle


@with_flags(*dataclass_flags(ExportConfig, skip=("checkpoint",)))
def command(checkpoint: Path, **given: Any) -> None:
    """Export a training checkpoint (or released weights) to a model bundle: ONNX FP32,
    calibrated INT8, the FP32-vs-INT8 report, gallery embeddings."""
    build_bundle(ExportConfig(checkpoint=str(checkpoint), **given))
