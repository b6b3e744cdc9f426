"""The training loop on real CIFAR-10 images: resume equals an uninterrupted run, the run
directory holds what it promises, and the CLI reports bad choices."""

import json
from pathlib import Path

import pytest
import torch

from simclr_embed.cli import main
from simclr_embed.training.checkpoint import load_checkpoint
from simclr_embed.training.train import TrainConfig, train


def tiny(cifar10_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(cifar10_dir), out_dir=str(out), train_per_class=8, test_per_class=4,
                epochs=2, batch_size=32, warmup_epochs=1, knn_every=0, probe_epochs=2, lr=0.1)
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_with_the_same_weights(cifar10_dir, tmp_path) -> None:
    whole = train(tiny(cifar10_dir, tmp_path / "whole"))
    train(tiny(cifar10_dir, tmp_path / "split"), stop_after=1)
    assert load_checkpoint(tmp_path / "split/checkpoint.pt")["epoch"] == 1
    split = train(tiny(cifar10_dir, tmp_path / "split"), resume=True)
    a, b = load_checkpoint(whole), load_checkpoint(split)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert [m["loss"] for m in a["metrics"]] == [m["loss"] for m in b["metrics"]]
    assert torch.equal(a["linear_head"]["weight"], b["linear_head"]["weight"])


def test_run_directory_and_self_describing_checkpoint(cifar10_dir, tmp_path) -> None:
    ckpt = train(tiny(cifar10_dir, tmp_path, knn_every=1, epochs=1))
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "metrics.jsonl", "metrics.csv", "probe.jsonl", "summary.json",
            "loss.png", "knn.png", "probe.png", "checkpoint.pt"} <= names
    state = load_checkpoint(ckpt)
    assert state["config"]["batch_size"] == 32 and state["classes"][0] == "airplane"
    assert len(state["normalization"]["mean"]) == 3
    assert [m["epoch"] for m in state["metrics"]] == [0, 1]  # epoch 0: random-init kNN
    knn = state["eval"]["knn_top1"]  # one number, the same in every place that reports it
    assert json.loads((tmp_path / "summary.json").read_text())["knn_top1"] == knn
    assert state["metrics"][-1]["knn_top1"] == knn
    assert "probe_history" not in state["eval"]  # the curve is in probe.jsonl
    assert (knn * 40 / 100) == pytest.approx(round(knn * 40 / 100), abs=1e-3)  # k of 40 test
    assert state["linear_head"]["weight"].shape == (10, 512)
    for key in ("optimizer", "scheduler", "scaler", "rng"):
        assert key in state


def test_cli_rejects_bad_choices_naming_the_valid_ones(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["train", "--precision", "fp8"]) == 2
    assert "'fp8' is not one of 'auto', 'fp32', 'bf16', 'fp16'" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "No such command 'frobnicate'" in capsys.readouterr().err


def test_cli_eval_and_clear_errors(cifar10_dir, tmp_path, capsys, caplog) -> None:
    ckpt = train(tiny(cifar10_dir, tmp_path, epochs=1, probe_epochs=1))
    assert main(["eval", str(ckpt), "--train-per-class", "5", "--test-per-class", "3",
                 "--probe-epochs", "1"]) == 0
    assert '"knn_top1"' in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in caplog.text
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path)]) == 2
    assert "does not exist" in caplog.text


@pytest.mark.parametrize("cuda", [False, True])
def test_default_bundle_configs_follow_the_hardware(tmp_path, monkeypatch, cuda) -> None:
    from simclr_embed.training import quickstart

    monkeypatch.setattr(quickstart.torch.cuda, "is_available", lambda: cuda)
    cfg, export_cfg = quickstart.default_configs(tmp_path / "bundles/default", "cifar10")
    full = TrainConfig()
    images = (cfg.train_per_class or 5000) * 10 * cfg.epochs
    if cuda:  # the full recipe on the full split
        assert cfg.train_per_class is None and cfg.epochs == full.epochs
    else:  # a budget far below it
        assert images < 5000 * 10 * full.epochs / 100
    assert cfg.out_dir == str(tmp_path / "bundles/default-run")
    assert export_cfg.out == str(tmp_path / "bundles/default")


def test_default_bundle_prefers_the_released_weights(tmp_path) -> None:
    from simclr_embed.training.quickstart import RELEASED_WEIGHTS, released_export_config

    cfg = released_export_config(tmp_path / "b", "somewhere", RELEASED_WEIGHTS)
    assert cfg.checkpoint == str(RELEASED_WEIGHTS) and cfg.data == "somewhere"
    assert cfg.gallery_per_class is None  # the whole training split is the gallery


def test_help_lists_every_command_without_importing_torch() -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom simclr_embed.cli import main\nmain(sys.argv[1:])\n"
            "print('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "TORCH False" in out
    for command in ("train", "eval", "export", "audit", "ablate", "serve", "index", "search"):
        assert f"│ {command} " in out
    for command in ("serve", "index", "search", "gallery"):
        out = subprocess.run([sys.executable, "-c", code, command, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "TORCH False" in out and "Usage: simclr-embed " + command in out
