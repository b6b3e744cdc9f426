"""simclr-embed: the project's stages (training, export, service, benchmarks) under one package
name, so that an install adds `simclr_embed` to site-packages and nothing else. The stages keep
their top-level folders in the repository; pyproject.toml maps them in, and in a checkout run
without installing, the folder beside this one serves as the package's path."""

import logging
from pathlib import Path

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


_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "service").is_dir():  # a checkout
    __path__.append(str(_ROOT))
