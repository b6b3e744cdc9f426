"""PNG plots of a run directory: InfoNCE loss, kNN accuracy and linear-probe accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _plot(rows: list[dict], key: str, title: str, ylabel: str, path: Path) -> None:
    pts = [(r["epoch"], r[key]) for r in rows if key in r]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 30 else None)
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_run(run_dir: Path) -> list[Path]:
    """Writes loss.png, knn.png and probe.png where their metrics exist; returns the paths."""
    run_dir = Path(run_dir)
    metrics = _read_jsonl(run_dir / "metrics.jsonl")
    probe = _read_jsonl(run_dir / "probe.jsonl")
    specs = [
        (metrics, "loss", "InfoNCE loss", "loss", "loss.png"),
        (metrics, "knn_top1", "kNN top-1 (k=200, cosine) on test", "top-1 %", "knn.png"),
        (probe, "test_top1", "Linear probe top-1 on test", "top-1 %", "probe.png"),
    ]
    written = []
    for rows, key, title, ylabel, name in specs:
        _plot(rows, key, title, ylabel, run_dir / name)
        if (run_dir / name).exists():
            written.append(run_dir / name)
    return written
