import numpy as np
import pytest
import torch

from simclr_embed.training.augment import (
    AugmentConfig,
    Normalize,
    gaussian_blur,
    hsv_to_rgb,
    random_view,
    resized_crop_flip,
    rgb_to_hsv,
    sample_crop_boxes,
    two_views,
)


@pytest.fixture(scope="module")
def images(cifar10) -> torch.Tensor:
    return torch.from_numpy(cifar10[0].images[:64].copy())  # (64, 32, 32, 3) real uint8 images


def test_view_shape_dtype_and_range(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    v = random_view(images, AugmentConfig())
    assert v.shape == (64, 3, 32, 32) and v.dtype == torch.float32
    assert v.min() >= 0 and v.max() <= 1
    assert torch.isfinite(v).all()


def test_two_views_differ_and_each_sample_gets_its_own_parameters(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    same = images[:1].expand(32, -1, -1, -1).contiguous()  # one image, 32 times
    v = random_view(same, AugmentConfig())
    flat = v.flatten(1)
    dist = torch.cdist(flat, flat)
    assert (dist + torch.eye(32) * 1e9).min() > 1e-3  # all 32 outputs pairwise different
    norm = Normalize([0.5] * 3, [0.25] * 3, "cpu")
    x1, x2 = two_views(images, AugmentConfig(), norm)
    assert ((x1 - x2).flatten(1).abs().amax(1) > 1e-3).all()  # the two views of every image differ


def test_crop_areas_follow_the_scale_range() -> None:
    torch.manual_seed(0)
    cfg = AugmentConfig(crop_scale=(0.08, 1.0))
    boxes = sample_crop_boxes(20000, 32, 32, cfg, "cpu")
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 32).all() and (y0 + h <= 32).all()
    area = (w * h / 1024).numpy()
    # Rounding to whole pixels widens the range slightly at 32x32.
    assert area.min() >= 0.08 * 0.8 and area.max() <= 1.0
    assert np.quantile(area, 0.02) < 0.15 and np.quantile(area, 0.98) > 0.85  # spans the range
    narrow = sample_crop_boxes(5000, 32, 32, AugmentConfig(crop_scale=(0.5, 0.6)), "cpu")
    narrow_area = (narrow[:, 2] * narrow[:, 3] / 1024).numpy()
    assert narrow_area.min() > 0.4 and narrow_area.max() < 0.7


def test_full_box_without_flip_is_identity_and_flip_mirrors() -> None:
    x = torch.rand(2, 3, 32, 32)
    box = torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 2)
    out = resized_crop_flip(x, box, torch.tensor([False, True]), 32)
    torch.testing.assert_close(out[0], x[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], x[1].flip(-1), atol=1e-5, rtol=0)


def test_hsv_round_trip() -> None:
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


def test_blur_off_is_identity_and_on_smooths() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    off = gaussian_blur(x, AugmentConfig(blur_p=0.0))
    torch.testing.assert_close(off, x, atol=1e-5, rtol=0)
    on = gaussian_blur(x, AugmentConfig(blur_p=1.0, blur_sigma=(1.0, 2.0)))
    assert on.std() < x.std() * 0.8  # white noise loses variance under a Gaussian kernel


def test_grayscale_probability(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    cfg = AugmentConfig(jitter_p=0.0, blur_p=0.0, gray_p=0.2)
    v = random_view(images.repeat(8, 1, 1, 1), cfg)  # 512 views
    spread = (v.amax(1) - v.amin(1)).amax((1, 2))  # (512,) largest channel disagreement
    gray = spread < 1e-6
    assert 0.12 < gray.float().mean().item() < 0.28


def test_same_seed_same_views(images: torch.Tensor) -> None:
    torch.manual_seed(3)
    a = random_view(images, AugmentConfig())
    torch.manual_seed(3)
    torch.testing.assert_close(random_view(images, AugmentConfig()), a)
