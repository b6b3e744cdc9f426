"""What every benchmark JSON carries: the machine and the versions it ran with."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "openvino", "numpy")


def hardware() -> dict:
    info: dict = {"platform": platform.platform(), "python": platform.python_version(),
                  "cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx")))
                break
    with contextlib.suppress(ImportError):
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    versions = {}
    for p in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            versions[p] = version(p)
    info["versions"] = versions
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=True,
                                        capture_output=True, text=True).stdout.strip()
    return info


def write_result(path: str | Path, result: dict) -> Path:
    """The benchmark's JSON, with its parent folder made; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out
