"""The audit: alignment / uniformity against closed forms and a slow loop from the paper,
single augmentations, GrabCut masks and background variants, and the command on real models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simclr_embed.cli import main
from simclr_embed.training import background
from simclr_embed.training.audit import (
    SINGLE_AUGMENTATIONS,
    Embedder,
    alignment,
    as_uint8,
    uniformity,
)
from simclr_embed.training.augment import random_view
from simclr_embed.training.data import stratified_subset
from simclr_embed.training.quickstart import RELEASED_WEIGHTS


def slow_alignment(x: torch.Tensor, y: torch.Tensor) -> float:
    """Wang & Isola (2020), eq. 2 with alpha = 2, one pair at a time."""
    return sum(float(((a - b) ** 2).sum()) for a, b in zip(x, y, strict=True)) / len(x)


def slow_uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """Eq. 3: log of the mean Gaussian potential over all distinct pairs."""
    total, pairs = 0.0, 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            total += math.exp(-t * float(((x[i] - x[j]) ** 2).sum()))
            pairs += 1
    return math.log(total / pairs)


def test_alignment_uniformity_match_the_paper_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(40, 8, generator=g), dim=1)
    y = F.normalize(x + 0.3 * torch.randn(40, 8, generator=g), dim=1)
    assert alignment(x, y) == pytest.approx(slow_alignment(x, y), rel=1e-5)
    assert uniformity(x) == pytest.approx(slow_uniformity(x), rel=1e-6)


def test_closed_forms() -> None:
    eye = torch.eye(16)  # orthonormal: every pair at squared distance 2 -> log exp(-4) = -4
    assert uniformity(eye) == pytest.approx(-4.0, abs=1e-9)
    assert uniformity(eye[[0, 0, 0]]) == pytest.approx(0.0, abs=1e-12)  # collapsed: log 1
    assert alignment(eye, eye) == 0.0
    assert alignment(eye, eye.roll(1, dims=0)) == pytest.approx(2.0)  # orthogonal partners
    assert alignment(eye, -eye) == pytest.approx(4.0)  # antipodal partners


def test_single_augmentations_do_only_their_own_change() -> None:
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(images)
    flipped = as_uint8(random_view(x, SINGLE_AUGMENTATIONS["flip"]))
    assert np.abs(flipped.astype(int) - images[:, :, ::-1].astype(int)).max() <= 1
    gray = as_uint8(random_view(x, SINGLE_AUGMENTATIONS["grayscale"]))
    assert (gray[..., 0] == gray[..., 2]).all() and not (images[..., 0] == images[..., 2]).all()
    for name in ("crop", "color_jitter", "blur"):
        view = as_uint8(random_view(x, SINGLE_AUGMENTATIONS[name]))
        assert np.abs(view.astype(int) - images.astype(int)).mean() > 5, name


def disc_image() -> tuple[np.ndarray, np.ndarray]:
    """A saturated disc on a textured grey background, and the disc's true mask."""
    yy, xx = np.mgrid[:32, :32]
    disc = (yy - 16) ** 2 + (xx - 15) ** 2 <= 8**2
    bg = np.random.default_rng(1).integers(60, 110, (32, 32, 3))
    return np.where(disc[..., None], [230, 40, 30], bg).astype(np.uint8), disc


def test_grabcut_finds_a_centred_object() -> None:
    image, truth = disc_image()
    mask = background.grabcut_mask(image)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.85 and background.plausible(mask)
    flat = np.full((32, 32, 3), 128, np.uint8)
    assert not background.plausible(background.grabcut_mask(flat))


def test_masks_on_real_cifar_are_mostly_plausible(cifar10) -> None:
    test = stratified_subset(cifar10[1], 5, 0)
    masks = background.masks_for(test.images)
    ok = np.array([background.plausible(m) for m in masks])
    assert ok.mean() >= 0.7  # 1x or 2x-cubic GrabCut left most masks empty
    assert 0.15 < masks[ok].mean() < 0.7


def test_variants_change_only_what_they_name() -> None:
    image, mask = disc_image()
    other = np.full((32, 32, 3), 10, np.uint8)
    images, masks = np.stack([image, other]), np.stack([mask, np.zeros_like(mask)])
    masks[1, 12:20, 12:20] = True
    v = background.make_variants(images, masks, np.array([0, 1]), seed=0)
    assert set(v) == set(background.VARIANTS)
    fg, bg = masks[0], ~masks[0]
    for name in ("bg_gaussian", "bg_uniform", "bg_other_class", "only_fg"):
        assert (v[name][0][fg] == image[fg]).all(), name  # the object stays, pixel for pixel
        assert (v[name][0][bg] != image[bg]).any(axis=1).mean() > 0.9, name
    assert (v["only_fg"][0][bg] == 0).all()
    assert (v["bg_other_class"][0][bg] == v["only_bg"][1][bg]).all()  # donor of the other class
    assert (v["only_bg"][0][bg] == image[bg]).all()  # background kept, object inpainted away
    assert np.abs(v["only_bg"][0][fg].astype(int) - [230, 40, 30]).sum(1).mean() > 100
    assert (v["original"] == images).all()


def test_embedder_reads_checkpoint_weights_and_bundle(short_checkpoint: Path, bundle_dir: Path,
                                                      cifar10) -> None:
    images = cifar10[1].images[:8]
    h, z = Embedder(short_checkpoint)(images)
    assert h.shape == (8, 512) and z is not None and z.shape[0] == 8
    assert torch.allclose(h.norm(dim=1), torch.ones(8), atol=1e-5)
    h_onnx, z_onnx = Embedder(bundle_dir)(images)
    assert z_onnx is None
    assert (h_onnx * h).sum(1).min() > 0.99  # the bundle's FP32 encoder is the checkpoint's


@pytest.mark.slow
def test_audit_command_on_released_weights(cifar10_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    rc = main(["audit", str(RELEASED_WEIGHTS), "--data", str(cifar10_dir), "--out", str(out),
               "--bank-per-class", "20", "--test-per-class", "6", "--probe-epochs", "10"])
    assert rc == 0
    r = json.loads((out / "audit.json").read_text())
    assert r["has_projection_head"] is False and r["geometry"]["z"] is None
    assert -4.0 < r["geometry"]["h"]["uniformity"] < 0 and 0 < r["geometry"]["h"]["alignment"] < 2
    bg = r["background"]
    assert bg["images"] == 60 and bg["plausible_masks"] >= 40
    rows = bg["variants"]
    assert rows["original"]["cosine_to_original"] == pytest.approx(1.0, abs=1e-4)
    assert all(rows[k]["cosine_to_original"] < 0.95 for k in rows if k != "original")
    assert rows["original"]["knn_top1"] > rows["bg_uniform"]["knn_top1"]  # a trained model
    assert all(r["invariance"][k] < 1 for k in SINGLE_AUGMENTATIONS)
    for name in ("audit.md", "audit.png", "background_examples.png"):
        assert (out / name).stat().st_size > 0
