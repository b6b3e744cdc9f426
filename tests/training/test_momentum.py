"""The momentum encoder and its queue (training/momentum.py), and the training loop with them
and with multi-crop on real CIFAR-10 images: a resumed run continues with the same queue and
moving-average weights, and the options' mistakes are named."""

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simclr_embed.errors import ConfigError
from simclr_embed.training.checkpoint import load_checkpoint
from simclr_embed.training.momentum import MomentumEncoder
from simclr_embed.training.train import TrainConfig, train


def test_the_coefficient_rises_from_its_base_to_one_on_a_cosine() -> None:
    enc = MomentumEncoder(nn.Linear(4, 4), 0.99, 0, 4)
    ms = [enc.coefficient(step, 100) for step in range(0, 101, 10)]
    assert ms[0] == pytest.approx(0.99) and ms[-1] == pytest.approx(1.0)
    assert ms[5] == pytest.approx(0.995)  # halfway up the cosine
    assert all(a < b for a, b in itertools.pairwise(ms))


def test_update_is_the_moving_average_of_weights_and_bn_statistics() -> None:
    online = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    enc = MomentumEncoder(online, 0.9, 0, 3)
    before = [p.clone() for p in enc.model.state_dict().values()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    online.train()(torch.randn(8, 3))  # moves the BN running statistics
    m = enc.coefficient(0, 10)
    enc.update(online, 0, 10)
    after, now = enc.model.state_dict(), online.state_dict()
    for (name, value), old in zip(after.items(), before, strict=True):
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, m * old + (1 - m) * now[name])
        else:
            assert torch.equal(value, now[name]), name  # the batch counter is copied


def test_queue_is_a_fifo_of_gathered_keys_that_starts_empty() -> None:
    enc = MomentumEncoder(nn.Linear(2, 2), 0.99, 10, 2)
    assert enc.negatives() is None
    batches = [F.normalize(torch.randn(4, 2), dim=1) for _ in range(4)]
    enc.enqueue(batches[0])
    assert torch.equal(enc.negatives(), batches[0])  # pyright: ignore[reportArgumentType]
    for b in batches[1:]:
        enc.enqueue(b)
    kept = {tuple(row.tolist()) for row in enc.negatives()}  # pyright: ignore
    newest = {tuple(row.tolist()) for row in torch.cat(batches)[-10:]}
    assert enc.filled == 10 and kept == newest  # the 6 oldest keys are gone


def tiny(cifar10_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(cifar10_dir), out_dir=str(out), train_per_class=8, test_per_class=4,
                epochs=2, batch_size=32, warmup_epochs=1, knn_every=0, probe_epochs=2, lr=0.1,
                momentum_encoder=0.99, queue_size=48, multi_crop="2,2", probe_mixup=0.4)
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow
def test_resume_continues_with_the_same_queue_and_moving_average(cifar10_dir, tmp_path) -> None:
    whole = train(tiny(cifar10_dir, tmp_path / "whole"))
    train(tiny(cifar10_dir, tmp_path / "split"), stop_after=1)
    split = train(tiny(cifar10_dir, tmp_path / "split"), resume=True)
    a, b = load_checkpoint(whole), load_checkpoint(split)
    assert a["momentum"]["filled"] == 48 and a["momentum"]["ptr"] == (2 * 2 * 32) % 48
    assert torch.equal(a["momentum"]["queue"], b["momentum"]["queue"])
    for k, v in a["momentum"]["model"].items():
        assert torch.equal(v, b["momentum"]["model"][k]), k
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
        if v.dtype.is_floating_point and k.endswith("weight"):  # the average lags the model
            assert not torch.equal(v, a["momentum"]["model"][k]), k
    assert [m["loss"] for m in a["metrics"]] == [m["loss"] for m in b["metrics"]]


@pytest.mark.parametrize(("flags", "message"), [
    ({"multi_crop": "1,4"}, "G >= 2 global"), ({"multi_crop": "two"}, "give G,L"),
    ({"momentum_encoder": 1.0}, "lies in [0, 1)"),
    ({"momentum_encoder": None, "queue_size": 10}, "give --momentum-encoder too")])
def test_mistakes_are_named(flags: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        TrainConfig(**flags)


@pytest.mark.slow
def test_a_run_with_the_options_exports_a_bundle(cifar10_dir, tmp_path) -> None:
    """The checkpoint's extra state (key encoder, queue) does not stand in export's way: the
    bundle serves the online encoder, as MoCo evaluates its query encoder."""
    from simclr_embed.export.build import ExportConfig, build_bundle
    from simclr_embed.service.bundle import load_bundle

    ckpt = train(tiny(cifar10_dir, tmp_path / "run", epochs=1))
    out = build_bundle(ExportConfig(str(ckpt), out=str(tmp_path / "b"), calibration_per_class=2,
                                    gallery_per_class=4, test_per_class=4, latency_rounds=1,
                                    tolerance=100.0, min_cosine_mean=0.0,
                                    min_top10_overlap=0.0))
    bundle = load_bundle(out)
    assert bundle.manifest["checkpoint"]["epoch"] == 1
    assert "int8" in bundle.manifest["duplicates"]
