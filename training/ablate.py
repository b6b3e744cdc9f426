"""`simclr-embed ablate`: temperature x projection-head depth, each cell trained with the same
budget and seed, scored by kNN and linear top-1 and by alignment / uniformity of h and z, to ask
which of the two geometric properties tracks linear accuracy.

Cells run one after another in <out>/tau<T>_layers<L>/; a cell with a finished summary is kept,
a cell with a checkpoint resumes, so an interrupted grid continues where it stopped.
Writes ablation.json, ablation.md, ablation_heatmap.png and ablation_scatter.png to <out>.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from simclr_embed.errors import ConfigError
from simclr_embed.training.audit import Embedder, geometry
from simclr_embed.training.data import load_dataset, stratified_subset
from simclr_embed.training.model import PROJ_LAYERS
from simclr_embed.training.train import TrainConfig, train

log = logging.getLogger(__name__)


@dataclass
class AblateConfig:
    data: str = "cifar10"
    out: str = "runs/ablate"
    temperatures: tuple[float, ...] = (0.05, 0.1, 0.2)
    head_layers: tuple[int, ...] = (1, 2)  # Linear layers in g: 1 = linear, 2 = SimCLR's MLP
    epochs: int = 15
    train_per_class: int | None = 100
    test_per_class: int | None = 100
    batch_size: int = 128
    seed: int = 0
    recipe: str = "default"  # training/train.py RECIPES: everything but tau and the head
    compile: bool = False
    max_cells: int | None = None  # stop after this many cells trained in this call
    # Optional axes (#37): "off" or the momentum encoder's base coefficient, and multi-crop
    # "G,L" values; queue_size applies wherever the momentum encoder is on.
    momentum_encoders: tuple[str, ...] = ("off",)
    multi_crops: tuple[str, ...] = ("2,0",)
    queue_size: int = 0

    def __post_init__(self) -> None:
        for depth in self.head_layers:
            if depth - 1 not in PROJ_LAYERS:
                raise ConfigError(f"head depth {depth} not supported; valid choices: "
                                 f"{', '.join(str(d + 1) for d in PROJ_LAYERS)}")


@dataclass(frozen=True)
class Cell:
    tau: float
    depth: int
    momentum: str = "off"
    crops: str = "2,0"

    @property
    def name(self) -> str:
        """tau<T>_layers<L>, plus the optional axes where they are not SimCLR's own."""
        extra = "" if self.momentum == "off" else f"_ema{self.momentum}"
        extra += "" if self.crops == "2,0" else f"_crops{self.crops.replace(',', 'x')}"
        return f"tau{self.tau:g}_layers{self.depth}{extra}"


def cells_of(cfg: AblateConfig) -> list[Cell]:
    return [Cell(tau, depth, m, c) for depth in cfg.head_layers for tau in cfg.temperatures
            for m in cfg.momentum_encoders for c in cfg.multi_crops]


def cell_config(cfg: AblateConfig, cell: Cell) -> TrainConfig:
    """Every cell shares data, budget, seed and recipe; only its axes differ."""
    on = cell.momentum != "off"
    return TrainConfig.recipe(
        cfg.recipe, data=cfg.data, out_dir=str(Path(cfg.out) / cell.name),
        train_per_class=cfg.train_per_class, test_per_class=cfg.test_per_class,
        epochs=cfg.epochs, batch_size=cfg.batch_size, warmup_epochs=max(1, cfg.epochs // 10),
        temperature=cell.tau, seed=cfg.seed, knn_every=0, compile=cfg.compile,
        model_proj_layers=cell.depth - 1, multi_crop=cell.crops,
        momentum_encoder=float(cell.momentum) if on else None,
        queue_size=cfg.queue_size if on else 0,
    )


def run_cell(cfg: AblateConfig, cell: Cell) -> tuple[dict[str, Any], bool]:
    """(the cell's scores, whether this call trained it)."""
    tcfg = cell_config(cfg, cell)
    out = Path(tcfg.out_dir)
    done = out / "cell.json"
    if done.is_file():
        return json.loads(done.read_text()), False
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        log.info("cell %s: resuming", out.name)
    ckpt = train(tcfg, resume=ckpt.is_file())
    summary = json.loads((out / "summary.json").read_text())
    test = stratified_subset(load_dataset(cfg.data, 32)[1], cfg.test_per_class, cfg.seed)
    geo = geometry(Embedder(ckpt), test.images, cfg.seed)
    row = {"cell": out.name, "temperature": cell.tau, "head_layers": cell.depth,
           "momentum_encoder": cell.momentum, "multi_crop": cell.crops,
           "knn_top1": summary["knn_top1"], "linear_top1": summary["linear_top1"],
           "h": geo["h"], "z": geo["z"]}
    done.write_text(json.dumps(row, indent=2) + "\n")
    return row, True


def run_ablation(cfg: AblateConfig) -> list[dict[str, Any]]:
    """Train the missing cells in grid order; returns the finished cells."""
    cells, trained = [], 0
    for cell in cells_of(cfg):
        if cfg.max_cells is not None and trained >= cfg.max_cells:
            log.info("stopping after %d cells; run again to continue", trained)
            return cells
        row, fresh = run_cell(cfg, cell)
        trained += fresh
        cells.append(row)
        log.info("cell %s: kNN %.2f %%, linear %.2f %%, h align %.3f unif %.3f", row["cell"],
                 row["knn_top1"], row["linear_top1"], row["h"]["alignment"],
                 row["h"]["uniformity"])
    write_report(cfg, cells)
    return cells


def correlations(cells: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Pearson and Spearman r of linear top-1 against each geometric property of h and z."""
    acc = np.array([c["linear_top1"] for c in cells])
    out = {}
    for space in ("h", "z"):
        for key in ("alignment", "uniformity"):
            xs = np.array([c[space][key] for c in cells])
            rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731 (ties are rare floats)
            out[f"{space}_{key}"] = {"pearson": float(np.corrcoef(xs, acc)[0, 1]),
                                     "spearman": float(np.corrcoef(rank(xs), rank(acc))[0, 1])}
    return out


def write_report(cfg: AblateConfig, cells: list[dict[str, Any]]) -> None:
    from simclr_embed.training.plots import plot_ablation

    out = Path(cfg.out)
    corr = correlations(cells) if len(cells) > 2 else {}
    budget = replace(cfg, max_cells=None)
    (out / "ablation.json").write_text(json.dumps(
        {"config": asdict(budget), "cells": cells, "correlation_with_linear_top1": corr},
        indent=2) + "\n")
    lines = ["| tau | head layers | momentum | crops | kNN top-1 (%) | linear top-1 (%) | "
             "align h | unif h | align z | unif z |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {c['temperature']:g} | {c['head_layers']} | {c.get('momentum_encoder', 'off')}"
              f" | {c.get('multi_crop', '2,0')} | {c['knn_top1']:.2f} | "
              f"{c['linear_top1']:.2f} | {c['h']['alignment']:.3f} | {c['h']['uniformity']:.3f}"
              f" | {c['z']['alignment']:.3f} | {c['z']['uniformity']:.3f} |" for c in cells]
    if corr:
        lines += ["", "| linear top-1 vs | Pearson r | Spearman r |", "| --- | --- | --- |"]
        lines += [f"| {k} | {v['pearson']:.2f} | {v['spearman']:.2f} |" for k, v in corr.items()]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    plot_ablation(cells, out)
