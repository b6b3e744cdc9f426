"""simclr-embed: the project's stages (training, export, service, benchmarks) under one package
name, so that an install adds `simclr_embed` to site-packages and nothing else. The stages keep
their top-level folders in the repository; pyproject.toml maps them in, and in a checkout run
without installing, the folder beside this one serves as the package's path."""

from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # every command and worker

_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "service").is_dir():  # a checkout
    __path__.append(str(_ROOT))
