"""The default bundle for a fresh machine: train -> export, sized to the hardware. A GPU runs the
full recipe; a CPU runs a short budget (about 5 minutes on 2 cores) that still clears the
random-init kNN floor."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from export.build import ExportConfig, build_bundle
from training.train import TrainConfig, train

log = logging.getLogger(__name__)


def default_configs(bundle: Path, data: str) -> tuple[TrainConfig, ExportConfig]:
    run_dir = str(bundle.parent / f"{bundle.name}-run")
    if torch.cuda.is_available():
        cfg = TrainConfig(data=data, out_dir=run_dir, knn_every=10)
        return cfg, ExportConfig("", out=str(bundle))
    cfg = TrainConfig(data=data, out_dir=run_dir, train_per_class=200, test_per_class=100,
                      epochs=10, batch_size=128, warmup_epochs=1, knn_every=5)
    return cfg, ExportConfig("", out=str(bundle), gallery_per_class=500, test_per_class=100)


def build_default_bundle(bundle: Path, data: str) -> Path:
    cfg, export_cfg = default_configs(bundle, data)
    log.info("no bundle at %s: training a default model (%s) into %s", bundle,
             "full recipe on GPU" if torch.cuda.is_available() else "short CPU budget",
             cfg.out_dir)
    ckpt_path = Path(cfg.out_dir) / "checkpoint.pt"
    export_cfg.checkpoint = str(train(cfg, resume=ckpt_path.exists()))
    return build_bundle(export_cfg)
