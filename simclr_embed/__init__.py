"""simclr-embed: the project's stages (training, export, service, benchmarks) under one package
name, so that an install adds `simclr_embed` to site-packages and nothing else. The stages keep
their top-level folders in the repository; pyproject.toml maps them in for a wheel, and in a
checkout `simclr_embed/<stage>` is a symbolic link to `../<stage>`, which Python, editors and
type checkers all follow."""

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # every command and worker


def configure_logging(json_lines: bool = False, level: int = logging.INFO,
                      replace: bool = False) -> None:
    """Root logging for every command and worker: LOG_FORMAT's line, or one JSON object per
    line (python-json-logger: a record's extra fields become keys). A root handler installed
    before (`serve --log-config FILE`, uvicorn's dictConfig) is kept unless `replace`."""
    root = logging.getLogger()
    if root.handlers and not replace:
        return
    handler = logging.StreamHandler()
    if json_lines:
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.handlers = [handler]
    root.setLevel(level)

