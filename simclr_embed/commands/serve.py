"""`simclr-embed serve`: the HTTP service on one or more model bundles, no torch (unless
--build-if-missing has a bundle to build)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from simclr_embed import configure_logging
from simclr_embed.cli import settings_flags, with_flags
from simclr_embed.service.settings import GROUPS, load_settings


@with_flags(*settings_flags(*GROUPS))
def command(bundles: Annotated[list[Path] | None, typer.Argument(
              help="bundle directories, or a directory of bundles, each served as its own "
              "model, the first by default (default: --bundle)", show_default=False)] = None,
          log_config: Annotated[Path | None, typer.Option(
              metavar="FILE", help="uvicorn's logging config (JSON, YAML or ini), for its "
              "loggers and ours alike")] = None,
          build_if_missing: Annotated[bool, typer.Option(
              help="no bundle yet: export the released weights in models/ first (a few "
              "minutes on a CPU); with --train-own, train one here instead")] = False,
          train_own: Annotated[bool, typer.Option(
              help="with --build-if-missing: train a model here instead of exporting the "
              "released weights in models/")] = False,
          data: Annotated[str, typer.Option(help="data for --build-if-missing")] = "cifar10",
          **given: Any) -> None:
    """Serve embed, search and classify over HTTP. Every setting is a flag and a
    SIMCLR_EMBED_<NAME> variable; a flag given beats the variable."""
    import uvicorn

    if bundles:
        given |= {"bundle": bundles[0], "more_bundles": ",".join(map(str, bundles[1:]))}
    settings = load_settings(**given)
    # uvicorn's workers (and the supervisor's swaps) build the app from the environment: the
    # flags given travel to them there, as the variables they stand for.
    os.environ.update({f"SIMCLR_EMBED_{k.upper()}": str(v) for k, v in given.items()})
    if settings.log_format == "json":
        configure_logging(json_lines=True, replace=True)
    if build_if_missing and not (settings.bundle / "manifest.json").exists():
        from simclr_embed.training.quickstart import build_default_bundle

        build_default_bundle(settings.bundle, data, train_anyway=train_own)
    from simclr_embed.service.protocol import UVICORN_OPTIONS
    from simclr_embed.service.startup import check_before_workers

    check_before_workers(settings)
    app = "simclr_embed.service.app:app_from_env"
    options = {**UVICORN_OPTIONS, **({"log_config": str(log_config)} if log_config else {})}
    if settings.workers == 1:
        uvicorn.run(app, factory=True, host=settings.host, port=settings.port, **options)
        return
    from simclr_embed.service.supervisor import SwappingSupervisor

    config = uvicorn.Config(app, factory=True, host=settings.host, port=settings.port,
                            workers=settings.workers, **options)
    SwappingSupervisor(config, sockets=[config.bind_socket()]).run()
