"""`simclr-embed eval`: kNN + linear probe of a training checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from simclr_embed.training.train import Device, evaluate_checkpoint


def command(checkpoint: Path,
            data: Annotated[str | None, typer.Option(
                help="data source (default: the checkpoint's)")] = None,
            probe_epochs: int | None = None, train_per_class: int | None = None,
            test_per_class: int | None = None, device: Device = "auto") -> None:
    """kNN and linear probe of a checkpoint, printed as JSON."""
    result = evaluate_checkpoint(checkpoint, data, probe_epochs, train_per_class,
                                 test_per_class, device)
    result.pop("probe_history")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
