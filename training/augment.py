"""SimCLR augmentation as batched tensor ops on the training device, with per-sample parameters.

Per-image PIL transforms in DataLoader workers cannot feed a GPU at thousands of images/s, so
every transform here draws one random parameter per sample and applies the whole batch at once:
RandomResizedCrop + horizontal flip as one affine resampling, colour jitter (brightness, contrast,
saturation, hue) with p=0.8, grayscale with p=0.2, optional Gaussian blur, then normalization.
Unlike torchvision, the jitter order is drawn once per batch rather than once per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-8
_GRAY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    # Off for 32x32 images, as in SimCLR's CIFAR protocol and solo-learn's recipe
    # (docs/benchmarks.md, "Training", has the measurement); --aug-blur-p 0.5 for ImageNet-sized
    # images.
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)


def _uniform(n: int, low: float, high: float, device: torch.device) -> Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def sample_crop_boxes(n: int, height: int, width: int, cfg: AugmentConfig, device) -> Tensor:
    """(n, 4) boxes (x0, y0, w, h) in pixels, drawn as torchvision's RandomResizedCrop draws them:
    area fraction ~ U(scale), log aspect ratio ~ U(log ratio), 10 tries, then a centre fallback."""
    tries = 10
    area = height * width * _uniform(n * tries, *cfg.crop_scale, device).view(n, tries)
    log_r = _uniform(n * tries, *(math.log(r) for r in cfg.crop_ratio), device).view(n, tries)
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).round()  # (n, tries)
    h = torch.sqrt(area / ratio).round()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)  # (n, tries)
    first = torch.where(ok.any(1), ok.int().argmax(1), 0)  # (n,) first valid try
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    # Fallback (no valid try): the whole image clamped to the ratio range, as torchvision does.
    none_ok = ~ok.any(1)
    w = torch.where(none_ok, torch.full_like(w, min(width, round(height * cfg.crop_ratio[1]))), w)
    h = torch.where(none_ok, torch.full_like(h, min(height, round(width / cfg.crop_ratio[0]))), h)
    x0 = torch.floor(torch.rand(n, device=device) * (width - w + 1))
    y0 = torch.floor(torch.rand(n, device=device) * (height - h + 1))
    return torch.stack([x0, y0, w, h], 1)


def resized_crop_flip(x: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """Crop each image to its box, resize to size x size (bilinear) and mirror where flip is set.

    x: (B, C, H, W) float; boxes: (B, 4) (x0, y0, w, h) pixels; flip: (B,) bool -> (B, C, S, S).
    """
    b, _, height, width = x.shape
    x0, y0, w, h = boxes.unbind(1)  # (B,) each
    sx = w / width  # (B,) half-extent of the box in [-1, 1] grid units
    sy = h / height
    cx = (2 * x0 + w) / width - 1  # (B,) box centre in grid units
    cy = (2 * y0 + h) / height - 1
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)  # (B, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -sx, sx)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)  # (B, S, S, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma, ITU-R 601 weights as torchvision uses."""
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV in [0, 1]."""
    r, g, b = x.unbind(1)  # (B, H, W) each
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    s = delta / maxc.clamp_min(_EPS)
    d = delta.clamp_min(_EPS)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2 + rc - bc, 4 + gc - rc))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """(B, 3, H, W) HSV in [0, 1] -> RGB in [0, 1]."""
    h, s, v = x.unbind(1)  # (B, H, W) each
    i = torch.floor(h * 6)
    f = h * 6 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack([v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q], 1)  # (B, 18, H, W)
    idx = torch.stack([i, i + 6, i + 12], 1)  # (B, 3, H, W): sector i of each channel's row
    return table.gather(1, idx)


def color_jitter(x: Tensor, cfg: AugmentConfig) -> Tensor:
    """Per-sample brightness, contrast, saturation and hue factors; identity where not drawn."""
    n, dev = x.shape[0], x.device
    on = torch.rand(n, device=dev) < cfg.jitter_p  # (B,)
    bri, con, sat, hue = cfg.jitter

    def factor(low: float, high: float, neutral: float) -> Tensor:
        f = _uniform(n, low, high, dev)
        return torch.where(on, f, torch.full_like(f, neutral)).view(n, 1, 1, 1)  # (B, 1, 1, 1)

    fb, fc, fs = (factor(max(0.0, 1 - a), 1 + a, 1.0) for a in (bri, con, sat))
    fh = factor(-hue, hue, 0.0)
    ops = {
        0: lambda y: (y * fb).clamp(0, 1),
        1: lambda y: (fc * y + (1 - fc) * grayscale(y).mean((2, 3), keepdim=True)).clamp(0, 1),
        2: lambda y: (fs * y + (1 - fs) * grayscale(y)).clamp(0, 1),
        3: lambda y: _shift_hue(y, fh),
    }
    for k in torch.randperm(4).tolist():
        x = ops[k](x)
    return x


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    hsv = rgb_to_hsv(x)
    hsv = torch.cat([(hsv[:, :1] + shift) % 1.0, hsv[:, 1:]], 1)
    return hsv_to_rgb(hsv).clamp(0, 1)


def gaussian_blur(x: Tensor, cfg: AugmentConfig) -> Tensor:
    """Separable Gaussian blur, kernel 10 % of the image side (odd, >= 3), sigma ~ U(blur_sigma)
    per sample, reflect padding; samples not drawn (1 - blur_p) get a delta kernel."""
    b, c, height, width = x.shape
    k = max(3, int(0.1 * cfg.size) // 2 * 2 + 1)
    on = torch.rand(b, device=x.device) < cfg.blur_p  # (B,)
    sigma = _uniform(b, *cfg.blur_sigma, x.device)
    sigma = torch.where(on, sigma, torch.full_like(sigma, 1e-3))  # (B,)
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2  # (k,)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))  # (B, k)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, k)
    y = F.pad(x.reshape(1, b * c, height, width), [k // 2] * 4, mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, k, 1), groups=b * c)  # (1, B*C, H+2p-..., W+2p)
    y = F.conv2d(y, kernel.view(b * c, 1, 1, k), groups=b * c)  # (1, B*C, H, W)
    return y.view(b, c, height, width)


def random_view(images: Tensor, cfg: AugmentConfig) -> Tensor:
    """One augmented view per image: (B, H, W, 3) uint8 -> (B, 3, S, S) float in [0, 1]."""
    x = images.permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)
    n, _, height, width = x.shape
    boxes = sample_crop_boxes(n, height, width, cfg, x.device)  # (B, 4)
    flip = torch.rand(n, device=x.device) < cfg.flip_p  # (B,)
    x = resized_crop_flip(x, boxes, flip, cfg.size)  # (B, 3, S, S)
    x = color_jitter(x, cfg)
    gray = (torch.rand(n, device=x.device) < cfg.gray_p).view(n, 1, 1, 1)
    x = torch.where(gray, grayscale(x).expand_as(x), x)
    if cfg.blur_p > 0:
        x = gaussian_blur(x, cfg)
    return x.clamp(0, 1)  # a blur kernel sums to 1 only up to rounding


class Normalize:
    """(x - mean) / std per channel; the dataset's statistics, stored in the checkpoint config."""

    def __init__(self, mean: list[float], std: list[float], device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def uint8(self, images: Tensor) -> Tensor:
        """Un-augmented evaluation input: (B, H, W, 3) uint8 -> (B, 3, H, W) normalized float."""
        return self(images.permute(0, 3, 1, 2).float() / 255)


def two_views(images: Tensor, cfg: AugmentConfig, norm: Normalize) -> tuple[Tensor, Tensor]:
    """SimCLR's pair: two independent random views of each image, normalized."""
    return norm(random_view(images, cfg)), norm(random_view(images, cfg))


# Local views of multi-crop (Caron et al., 2020): half the training size, from smaller crops.
# SwAV's ImageNet locals take 5-14 % of the image; at 32 px that leaves a few pixels of object,
# so the CIFAR locals here take 5-40 %.
LOCAL_CROP_SCALE = (0.05, 0.4)


def local_config(cfg: AugmentConfig) -> AugmentConfig:
    """The local views' augmentation: the same path at half the size, smaller crops."""
    return replace(cfg, size=max(8, cfg.size // 2), crop_scale=LOCAL_CROP_SCALE)


def multi_views(images: Tensor, cfg: AugmentConfig, norm: Normalize, n_global: int,
                n_local: int) -> tuple[list[Tensor], list[Tensor]]:
    """Multi-crop: n_global views at cfg.size and n_local at half of it, each (B, 3, s, s)
    normalized, each with its own per-sample draws."""
    small = local_config(cfg)
    return ([norm(random_view(images, cfg)) for _ in range(n_global)],
            [norm(random_view(images, small)) for _ in range(n_local)])
