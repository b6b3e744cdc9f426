"""`simclr-embed search`: the nearest gallery items of image files, from a running server."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer


def command(images: Annotated[list[str], typer.Argument(metavar="IMAGE...")],
           k: int = 10, url: str = "http://127.0.0.1:8000",
           api_key: Annotated[str | None, typer.Option(
               help="for a server that requires one ($SIMCLR_EMBED_API_KEY)")] = None,
           json_: Annotated[bool, typer.Option(
               "--json", help="the server's JSON instead of a table")] = False) -> None:
    """Ask a running server (POST /v1/search) for the gallery items nearest to each IMAGE and
    print them as a table."""
    from simclr_embed.search_client import search_files, table

    key = api_key or os.environ.get("SIMCLR_EMBED_API_KEY") or None
    result = search_files(images, k, url, key)
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if json_ else table(images, result))
