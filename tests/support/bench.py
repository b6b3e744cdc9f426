"""A benchmark entry point run in its --quick mode with the arguments its user would give, in
this process (the servers it measures are processes of their own): a smoke test that it works."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from simclr_embed.benchmarks.harness import measurement, measurements


def quick(entry: str, *args: str | Path, out: Path | None = None) -> dict:
    """`python -m benchmarks.ENTRY ARGS --quick [--out OUT]`; the JSON at OUT when it is a file."""
    module = importlib.import_module(f"simclr_embed.benchmarks.{entry}")
    argv = [*map(str, args), "--quick", *(["--out", str(out)] if out is not None else [])]
    if hasattr(module, "PARTS"):
        measurements(module.__doc__ or "", module.PARTS, argv)
    else:
        measurement(module.__doc__ or "", module, argv)
    return json.loads(out.read_text()) if out is not None and out.is_file() else {}
