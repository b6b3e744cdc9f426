"""The ablation grid on real CIFAR-10 images: every cell trained with its own tau and head, an
interrupted grid continues (finished cells kept, a half-trained cell resumed), and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from simclr_embed.cli import main
from simclr_embed.training.ablate import (
    AblateConfig,
    Cell,
    cell_config,
    cells_of,
    correlations,
    run_ablation,
)
from simclr_embed.training.checkpoint import load_checkpoint
from simclr_embed.training.train import RECIPES, train


def tiny(cifar10_dir: Path, out: Path, **kw) -> AblateConfig:
    return AblateConfig(data=str(cifar10_dir), out=str(out), temperatures=(0.1, 0.5),
                        head_layers=(1, 2), epochs=2, train_per_class=4, test_per_class=3,
                        batch_size=32, **kw)


@pytest.mark.slow
def test_interrupted_grid_continues(cifar10_dir: Path, tmp_path: Path) -> None:
    cfg = tiny(cifar10_dir, tmp_path, max_cells=1)
    assert len(run_ablation(cfg)) == 1  # "interrupted" after the first cell
    first = tmp_path / "tau0.1_layers1"
    stamp = (first / "checkpoint.pt").stat().st_mtime_ns
    half = cell_config(cfg, Cell(0.5, 1))
    train(half, stop_after=1)  # the second cell dies after one of its two epochs
    assert load_checkpoint(Path(half.out_dir) / "checkpoint.pt")["epoch"] == 1
    cfg.max_cells = None
    cells = run_ablation(cfg)
    assert [c["cell"] for c in cells] == ["tau0.1_layers1", "tau0.5_layers1", "tau0.1_layers2",
                                          "tau0.5_layers2"]
    assert (first / "checkpoint.pt").stat().st_mtime_ns == stamp  # finished cell not retrained
    resumed = load_checkpoint(Path(half.out_dir) / "checkpoint.pt")
    assert [r["epoch"] for r in resumed["metrics"]] == [1, 2]  # continued, not restarted
    for c in cells:  # each cell trained what its name says
        state = load_checkpoint(tmp_path / c["cell"] / "checkpoint.pt")
        assert state["config"]["temperature"] == c["temperature"]
        linears = sum(k.endswith("weight") and state["model"][k].dim() == 2
                      for k in state["model"] if k.startswith("projector."))
        assert linears == c["head_layers"]
        assert 0 < c["h"]["alignment"] < 4 and c["h"]["uniformity"] < 0
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert set(report["correlation_with_linear_top1"]) == {
        "h_alignment", "h_uniformity", "z_alignment", "z_uniformity"}
    for name in ("ablation.md", "ablation_heatmap.png", "ablation_scatter.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_correlations_rank_and_linear() -> None:
    cells = [{"linear_top1": acc, "h": {"alignment": a, "uniformity": -a ** 3},
              "z": {"alignment": a, "uniformity": a}} for a, acc in
             [(0.1, 50.0), (0.2, 40.0), (0.4, 30.0), (0.8, 20.0)]]
    r = correlations(cells)
    assert r["h_alignment"]["spearman"] == pytest.approx(-1.0)
    assert r["h_uniformity"]["spearman"] == pytest.approx(1.0)  # monotone, not linear
    assert 0.8 < r["h_uniformity"]["pearson"] < 0.99
    acc = torch.tensor([c["linear_top1"] for c in cells])
    align = torch.tensor([0.1, 0.2, 0.4, 0.8])
    assert r["z_alignment"]["pearson"] == pytest.approx(
        torch.corrcoef(torch.stack([align, acc]))[0, 1].item(), abs=1e-6)


def test_bad_head_depth_names_valid_choices(tmp_path: Path) -> None:
    assert main(["ablate", "--head-layers", "9", "--out", str(tmp_path)]) == 2
    with pytest.raises(ValueError, match="1, 2, 3, 4"):
        AblateConfig(head_layers=(9,))


def test_a_cell_takes_the_recipe_but_its_own_tau_and_head() -> None:
    cell = cell_config(AblateConfig(recipe="cifar", epochs=30, batch_size=512), Cell(0.05, 1))
    recipe = RECIPES["cifar"]
    assert (cell.optimizer, cell.weight_decay) == (recipe["optimizer"], recipe["weight_decay"])
    assert cell.model.proj_hidden_dim == recipe["model_proj_hidden_dim"]
    assert cell.augment.gray_p == recipe["aug_gray_p"]
    assert (cell.temperature, cell.model.proj_layers, cell.epochs) == (0.05, 0, 30)


def test_momentum_and_multi_crop_are_optional_axes() -> None:
    cfg = AblateConfig(temperatures=(0.1,), head_layers=(2,), momentum_encoders=("off", "0.99"),
                       multi_crops=("2,0", "2,4"), queue_size=512)
    cells = cells_of(cfg)
    assert [c.name for c in cells] == ["tau0.1_layers2", "tau0.1_layers2_crops2x4",
                                       "tau0.1_layers2_ema0.99", "tau0.1_layers2_ema0.99_crops2x4"]
    configs = [cell_config(cfg, c) for c in cells]
    assert [(t.momentum_encoder, t.queue_size, t.multi_crop) for t in configs] == [
        (None, 0, "2,0"), (None, 0, "2,4"), (0.99, 512, "2,0"), (0.99, 512, "2,4")]
