"""The default bundle for a fresh machine. With the released weights in models/ (trained on one
H200: docs/training.md, "Models") it only exports them: minutes on any CPU. Without them it
trains first, sized to the hardware: a GPU runs the full recipe, a CPU a short budget (about 5
minutes on 2 cores) that still clears the random-init kNN floor."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from simclr_embed.export.build import ExportConfig, build_bundle
from simclr_embed.training.train import TrainConfig, train

log = logging.getLogger(__name__)

MODELS = Path(__file__).resolve().parents[1] / "models"
RELEASED_WEIGHTS = MODELS / "simclr-resnet18-cifar10.safetensors"


def default_configs(bundle: Path, data: str) -> tuple[TrainConfig, ExportConfig]:
    run_dir = str(bundle.parent / f"{bundle.name}-run")
    if torch.cuda.is_available():
        cfg = TrainConfig(data=data, out_dir=run_dir, knn_every=10)
        return cfg, ExportConfig("", out=str(bundle))
    cfg = TrainConfig(data=data, out_dir=run_dir, train_per_class=200, test_per_class=100,
                      epochs=10, batch_size=128, warmup_epochs=1, knn_every=5)
    return cfg, ExportConfig("", out=str(bundle), gallery_per_class=500, test_per_class=100)


def released_export_config(bundle: Path, data: str, weights: Path) -> ExportConfig:
    """The released weights over the whole training split as gallery, embedded at INT8."""
    return ExportConfig(str(weights), out=str(bundle), data=data)


def build_default_bundle(bundle: Path, data: str, weights: Path | None = RELEASED_WEIGHTS,
                         train_anyway: bool = False) -> Path:
    if weights is not None and weights.is_file() and not train_anyway:
        log.info("no bundle at %s: exporting the released weights %s", bundle, weights)
        return build_bundle(released_export_config(bundle, data, weights))
    cfg, export_cfg = default_configs(bundle, data)
    log.info("no bundle at %s: training a default model (%s) into %s", bundle,
             "full recipe on GPU" if torch.cuda.is_available() else "short CPU budget",
             cfg.out_dir)
    ckpt_path = Path(cfg.out_dir) / "checkpoint.pt"
    export_cfg.checkpoint = str(train(cfg, resume=ckpt_path.exists()))
    return build_bundle(export_cfg)
