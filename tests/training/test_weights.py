"""The released weights file: a faithful fp16 round trip, and the shipped model is the trained
one (its kNN on real CIFAR-10 images is far above the random-init floor)."""

from pathlib import Path

import pytest
import torch

from simclr_embed.training.augment import Normalize
from simclr_embed.training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from simclr_embed.training.evaluate import extract_features, knn_accuracy
from simclr_embed.training.model import ModelConfig, SimCLR
from simclr_embed.training.quickstart import RELEASED_WEIGHTS
from simclr_embed.training.weights import save_weights


def test_round_trip_keeps_encoder_head_and_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SimCLR(ModelConfig(proj_hidden_dim=64, proj_out_dim=16)).eval()
    head = torch.nn.Linear(512, 10)
    state = {"config": {"model": {"proj_hidden_dim": 64, "proj_out_dim": 16}, "image_size": 32},
             "classes": [str(i) for i in range(10)], "epoch": 7, "eval": {"knn_top1": 50.0},
             "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
             "model": model.state_dict(), "linear_head": head.state_dict()}
    path = save_weights(state, tmp_path / "w.safetensors")
    back = load_checkpoint(path)
    assert back["epoch"] == 7 and back["eval"] == {"knn_top1": 50.0} and back["encoder_only"]
    assert not any(k.startswith("projector.") for k in back["model"])  # training-only part
    rebuilt = model_from_checkpoint(back).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encoder(x), model.encoder(x), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(back["linear_head"]["weight"], head.weight.detach(),
                               atol=1e-3, rtol=1e-3)


def test_a_file_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a simclr-embed weights file"):
        load_checkpoint(tmp_path / "other.safetensors")


@pytest.mark.slow
def test_released_model_is_the_trained_one(cifar10) -> None:
    assert RELEASED_WEIGHTS.stat().st_size < 25 * 2**20  # the cap on the file
    state = load_checkpoint(RELEASED_WEIGHTS)
    assert state["eval"]["linear_top1"] > 75  # what the GPU run measured on the full split
    encoder = model_from_checkpoint(state).encoder
    norm = Normalize(state["normalization"]["mean"], state["normalization"]["std"], "cpu")
    train, test = cifar10
    bank, queries = train.subset(slice(0, 50000, 50)), test.subset(slice(0, 10000, 20))
    feats = [extract_features(encoder, d.images, norm.uint8, torch.device("cpu"))
             for d in (bank, queries)]
    knn = knn_accuracy(feats[0], torch.from_numpy(bank.labels), feats[1],
                       torch.from_numpy(queries.labels), k=20)
    assert knn > 60  # 1,000-image bank; random init scores ~30 here, raw pixels ~35
