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


def plot_audit(result: dict, examples: dict, masks, out: Path) -> None:
    """audit.png: invariance per augmentation and accuracy per background variant;
    background_examples.png: a few test images, their GrabCut masks and every variant."""
    import numpy as np

    inv, rows = result["invariance"], result["background"]["variants"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=120)
    a.bar(list(inv), list(inv.values()), color="tab:blue")
    a.set(title="cosine to the image, one augmentation", ylim=(0, 1))
    a.tick_params(axis="x", rotation=30)
    names, width = list(rows), 0.27
    x = np.arange(len(names))
    for i, (key, label) in enumerate((("knn_top1", "kNN"), ("linear_top1", "linear"),
                                      ("same_class_at_10", "same-class@10"))):
        b.bar(x + (i - 1) * width, [rows[n][key] for n in names], width, label=label)
    b.set_xticks(x, names, rotation=30)
    b.set(title="background probe (test images, plausible masks)", ylabel="%")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "audit.png")
    plt.close(fig)
    cols = ["mask", *examples]
    n = min(len(masks), 6)
    fig, axes = plt.subplots(n, len(cols), figsize=(1.3 * len(cols), 1.3 * n), dpi=120,
                             squeeze=False)
    for r in range(n):
        for c, name in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(masks[r] if name == "mask" else examples[name][r],
                      cmap="gray" if name == "mask" else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "background_examples.png")
    plt.close(fig)


def plot_ablation(cells: list[dict], out: Path) -> None:
    """ablation_heatmap.png (linear top-1 over tau x head depth) and ablation_scatter.png
    (linear top-1 against alignment and against uniformity of h, with Pearson r)."""
    import numpy as np

    taus = sorted({c["temperature"] for c in cells})
    depths = sorted({c["head_layers"] for c in cells})
    grid = np.full((len(depths), len(taus)), np.nan)
    for c in cells:
        grid[depths.index(c["head_layers"]), taus.index(c["temperature"])] = c["linear_top1"]
    fig, ax = plt.subplots(figsize=(1.6 * len(taus) + 2, 1.2 * len(depths) + 1.5), dpi=120)
    im = ax.imshow(grid, cmap="viridis")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w")
    ax.set_xticks(range(len(taus)), [str(t) for t in taus])
    ax.set_yticks(range(len(depths)), [str(d) for d in depths])
    ax.set(xlabel="temperature tau", ylabel="projection head layers",
           title="linear top-1 (%)")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(out / "ablation_heatmap.png")
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    acc = [c["linear_top1"] for c in cells]
    for ax, key in zip(axes, ("alignment", "uniformity"), strict=True):
        xs = [c["h"][key] for c in cells]
        ax.scatter(xs, acc)
        for c, xv, yv in zip(cells, xs, acc, strict=True):
            ax.annotate(f"t{c['temperature']} d{c['head_layers']}", (xv, yv), fontsize=7)
        r = np.corrcoef(xs, acc)[0, 1] if len(cells) > 2 else float("nan")
        ax.set(xlabel=f"{key} of h", ylabel="linear top-1 (%)", title=f"Pearson r = {r:.2f}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ablation_scatter.png")
    plt.close(fig)
