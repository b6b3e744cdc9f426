"""`simclr-embed audit`: what a model's embeddings are invariant to, and what they lean on."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from simclr_embed.cli import dataclass_flags, with_flags
from simclr_embed.training.audit import AuditConfig, audit_markdown, run_audit, write_report

log = logging.getLogger("simclr_embed")


@with_flags(*dataclass_flags(AuditConfig, skip=("source",)))
def command(source: Annotated[str, typer.Argument(
                help="checkpoint, weights file or bundle directory")], **given: Any) -> None:
    """Alignment and uniformity of h and z, invariance per augmentation, and a background probe
    (GrabCut masks; noise / other-class / removed backgrounds) of a training checkpoint (.pt),
    released weights (.safetensors) or a bundle directory."""
    cfg = AuditConfig(source=source, **given)
    path = write_report(run_audit(cfg), Path(cfg.out))
    sys.stdout.write(audit_markdown(json.loads(path.read_text())))
    log.info("report: %s", path)
