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
    """One line per protocol: rows with "aug": true (augmented probe) apart from the rest."""
    series = {
        label: [(r["epoch"], r[key]) for r in rows if key in r and r.get("aug", False) == aug]
        for label, aug in (("frozen features", False), ("crop + flip", True))
    }
    series = {k: v for k, v in series.items() if v}
    if not series:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for label, pts in series.items():
        ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 30 else None, label=label)
    if len(series) > 1:
        ax.legend()
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
