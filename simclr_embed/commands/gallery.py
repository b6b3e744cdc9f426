"""`simclr-embed gallery`: the embedded gallery's database, beside a running server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from simclr_embed.errors import ConfigError
from simclr_embed.service.settings import load_settings

log = logging.getLogger("simclr_embed")


command = typer.Typer(no_args_is_help=True, help="Works beside a running server, with its "
                      "settings (SIMCLR_EMBED_DATA_DIR, SIMCLR_EMBED_BUNDLE, "
                      "SIMCLR_EMBED_PRECISION).")


@command.command()
def backup(dest: Annotated[Path, typer.Argument(
        help="file to write, e.g. backups/gallery-int8.sqlite3")]) -> None:
    """A consistent copy of the gallery (SQLite's online backup API), safe while the server
    writes."""
    from simclr_embed.service.bundle import load_bundle, model_id
    from simclr_embed.service.gallery import SQLiteStore, gallery_path
    from simclr_embed.service.store import Space

    s = load_settings()
    if s.gallery_url is not None:
        raise ConfigError("SIMCLR_EMBED_GALLERY_URL is set: back PostgreSQL up with pg_dump")
    manifest = load_bundle(s.bundle_dirs()[0]).manifest
    space = Space(model_id(manifest), s.precision, int(manifest["embedding_dim"]))
    source = gallery_path(s.data_dir, space)
    if not source.exists():
        raise ConfigError(f"no gallery database at {source}: check SIMCLR_EMBED_DATA_DIR")
    store = SQLiteStore(source, space)
    try:
        seq = store.backup(dest)
    finally:
        store.close()
    log.info("backed up %s to %s (changes up to number %d)", source, dest, seq)
