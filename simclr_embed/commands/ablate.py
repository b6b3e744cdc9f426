"""`simclr-embed ablate`: a grid of training runs at one budget, and what tracks accuracy."""

from __future__ import annotations

from typing import Any

from simclr_embed.cli import dataclass_flags, with_flags
from simclr_embed.training.ablate import AblateConfig, run_ablation


@with_flags(*dataclass_flags(AblateConfig))
def command(**given: Any) -> None:
    """Train a grid of temperature x projection-head depth with one budget and seed (each
    value a repeated flag: --temperatures 0.1 --temperatures 0.2); report kNN / linear top-1,
    alignment and uniformity, and which one tracks accuracy. Re-running continues an
    interrupted grid."""
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    run_ablation(AblateConfig(**fields))
