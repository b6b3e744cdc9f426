"""The training options the GPU run depends on, checked on the CPU: the precision choice, the
augmentation flags and the view size, the decode cache key, the time budget and the literature's
crop + flip probe."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclr_embed import cli
from simclr_embed.training import data
from simclr_embed.training.augment import Normalize
from simclr_embed.training.checkpoint import load_checkpoint, model_from_checkpoint
from simclr_embed.training.evaluate import linear_probe_augmented
from simclr_embed.training.quickstart import RELEASED_WEIGHTS
from simclr_embed.training.train import TrainConfig, autocast_dtype, train


def test_emulated_bf16_gets_fp16(monkeypatch) -> None:
    """A GPU whose bf16 is only emulated (pre-Ampere) trains in fp16 with GradScaler."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    assert autocast_dtype("auto", torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert autocast_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert autocast_dtype("auto", torch.device("cpu")) == torch.bfloat16


def parsed(monkeypatch, *argv: str) -> TrainConfig:
    """The TrainConfig `simclr-embed train ARGV` would train with."""
    seen: list[TrainConfig] = []
    monkeypatch.setattr("simclr_embed.commands.train.train",
                        lambda cfg, resume, stop_after: seen.append(cfg))
    assert cli.main(["train", *argv]) == 0
    return seen[0]


def test_augmentation_flags_and_view_size_follow_the_cli(monkeypatch) -> None:
    cfg = parsed(monkeypatch, "--image-size", "48", "--aug-jitter", "0.8", "0.8", "0.8", "0.2",
                 "--aug-blur-p", "0.5", "--aug-crop-scale", "0.2", "1.0", "--aug-gray-p", "0.1")
    assert cfg.augment.jitter == (0.8, 0.8, 0.8, 0.2) and cfg.augment.blur_p == 0.5
    assert cfg.augment.crop_scale == (0.2, 1.0) and cfg.augment.gray_p == 0.1
    assert cfg.augment.size == 48  # views as large as what export and serving see
    assert TrainConfig().augment.blur_p == 0.0  # no blur at 32x32 by default
    assert TrainConfig.from_dict({"image_size": 64}).augment.size == 64


def test_recipe_sets_defaults_that_explicit_flags_override(monkeypatch) -> None:
    parse = lambda *a: parsed(monkeypatch, *a)  # noqa: E731
    cifar = parse("--recipe", "cifar")
    assert (cifar.optimizer, cifar.temperature, cifar.batch_size) == ("sgd", 0.5, 512)
    assert cifar.resolved_lr() == pytest.approx(0.06 * 512 / 256)
    assert cifar.resolved_weight_decay() == 5e-4
    assert (cifar.model.proj_hidden_dim, cifar.model.proj_out_dim) == (1024, 128)
    assert cifar.augment.crop_scale == (0.2, 1.0) and cifar.augment.gray_p == 0.1
    for argv in (["--temperature", "0.3", "--recipe", "cifar"],
                 ["--recipe", "cifar", "--temperature", "0.3"]):
        assert parse(*argv).temperature == 0.3 and parse(*argv).optimizer == "sgd"
    assert parse().temperature == TrainConfig().temperature  # no recipe: the plain defaults
    assert cli.main(["train", "--recipe", "imagenet"]) == 2
    with pytest.raises(ValueError, match="valid choices: default, solo, cifar"):
        TrainConfig.recipe("imagenet")


def test_solo_recipe_is_the_released_models_config() -> None:
    """The released weights were trained with what the 'solo' recipe now names."""
    released = json.loads(Path("benchmarks/results/gpu/summary.json").read_text())["config"]
    solo = asdict(TrainConfig.recipe("solo"))
    for key in ("batch_size", "temperature", "optimizer", "weight_decay", "momentum"):
        assert solo[key] == released[key], key
    assert solo["model"] == released["model"] | {"stem": "cifar"}
    for key in ("crop_scale", "jitter", "jitter_p", "gray_p", "blur_p"):
        assert list(np.atleast_1d(solo["augment"][key])) == list(
            np.atleast_1d(released["augment"][key])), key


def test_cache_key_sees_changes_inside_class_folders(tmp_path: Path, cifar10) -> None:
    folder = tmp_path / "ds"
    (folder / "cat").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(cifar10[0].images[i]).save(folder / "cat" / f"{i}.png")
    before = data.cache_key(folder, 32)
    assert data.cache_key(folder, 32) == before and data.cache_key(folder, 64) != before
    Image.fromarray(cifar10[0].images[9]).save(folder / "cat" / "1.png")  # edited in place
    edited = data.cache_key(folder, 32)
    assert edited != before
    Image.fromarray(cifar10[0].images[5]).save(folder / "cat" / "new.png")
    assert data.cache_key(folder, 32) != edited


@pytest.mark.slow
def test_time_budget_shortens_the_run_and_replans_the_schedule(cifar10_dir, tmp_path) -> None:
    cfg = TrainConfig(data=str(cifar10_dir), out_dir=str(tmp_path), train_per_class=8,
                      test_per_class=4, epochs=50, batch_size=32, warmup_epochs=1,
                      knn_every=0, probe_epochs=1, time_budget_s=0.01)
    state = torch.load(train(cfg), weights_only=True)
    assert state["config"]["epochs"] == 3  # two timed epochs, then no time for more
    assert state["epoch"] == 3 and state["scheduler"]["lr_lambdas"][0]["total_steps"] == 3 * 2
    assert state["metrics"][-1]["lr"] == pytest.approx(0, abs=1e-9)  # cosine ended at 0


@pytest.mark.slow
def test_augmented_probe_learns_on_real_images(cifar10) -> None:
    # Every class: the arrays are sorted by class, and their first 400 are all airplanes.
    train, test = cifar10
    train_set = train.subset(slice(0, None, len(train.labels) // 400))
    test_set = test.subset(slice(0, None, len(test.labels) // 200))
    assert len(set(test_set.labels.tolist())) == 10
    # The released encoder: on a random one the probe stays at chance, so accuracy proves
    # nothing, and at the literature's lr its unscaled features make the loss climb.
    encoder = model_from_checkpoint(load_checkpoint(RELEASED_WEIGHTS)).encoder
    norm = Normalize([0.49, 0.48, 0.45], [0.25, 0.24, 0.26], "cpu")
    result = linear_probe_augmented(encoder, train_set.images, train_set.labels,
                                    test_set.images, test_set.labels, norm, 10, epochs=3,
                                    device=torch.device("cpu"), batch_size=128)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] and result.head.weight.shape == (10, 512)
    assert result.top1 > 40, result.history  # chance 10 %; 56 % here after 3 short epochs

    assert np.isfinite(losses).all()
