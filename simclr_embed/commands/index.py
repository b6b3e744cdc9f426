"""`simclr-embed index`: a folder, archive or manifest embedded into the gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from simclr_embed.cli import dataclass_flags, settings_flags, with_flags
from simclr_embed.service.index_job import IndexJob
from simclr_embed.service.settings import GallerySettings, ModelSettings, load_settings


@with_flags(*dataclass_flags(IndexJob, skip=("source",), panel="index"),
            *settings_flags(ModelSettings, GallerySettings))
def command(source: Annotated[Path, typer.Argument(help="folder, archive or manifest")],
          **given: Any) -> None:
    """Embed SOURCE into the gallery `simclr-embed serve` uses with the same settings. SOURCE:
    an image folder (label = first folder level), a .tar/.tar.gz of one, or a manifest (.csv,
    .jsonl, .parquet) with a path column and optional id, label and metadata columns. Reruns
    skip unchanged files; a killed run resumes."""
    from simclr_embed.service.indexer import run_index

    job_fields = {k: given.pop(k) for k in list(given) if k in IndexJob.__dataclass_fields__}
    run_index(IndexJob(source, **job_fields), load_settings(**given))
