"""Foreground/background separation and background variants for CIFAR-sized images, in the
spirit of ImageNet-9's backgrounds benchmark (Xiao et al., 2020) but built for 32x32 images.

Masks come from OpenCV's GrabCut seeded with a centre box (CIFAR objects are centred); holes
left by a removed object are filled with OpenCV's Telea inpainting, where ImageNet-9 tiles.
Every variant keeps the foreground pixels exactly and changes only the background, or the
reverse for `only_bg`.
"""

from __future__ import annotations

import cv2
import numpy as np
from tqdm import tqdm

# GrabCut's colour models and graph need more than 32x32 pixels: on 100 CIFAR test images, 1x
# and 2x (cubic) left 25-80 % of masks empty, 4x nearest-neighbour none (docs/research.md).
UPSCALE = 4
MARGIN = 1 / 16  # the seed box leaves this fraction of the side as sure background on each edge
PLAUSIBLE_FG = (0.1, 0.8)  # a mask whose foreground covers less or more is not an object
VARIANTS = ("original", "bg_gaussian", "bg_uniform", "bg_other_class", "only_bg", "only_fg")


def grabcut_mask(image: np.ndarray, iterations: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) bool foreground, GrabCut from a centre box."""
    h, w = image.shape[:2]
    big = cv2.resize(image[..., ::-1], (w * UPSCALE, h * UPSCALE), interpolation=cv2.INTER_NEAREST)
    mask = np.zeros(big.shape[:2], np.uint8)
    mx, my = round(w * UPSCALE * MARGIN), round(h * UPSCALE * MARGIN)
    rect = (mx, my, w * UPSCALE - 2 * mx, h * UPSCALE - 2 * my)
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    try:
        cv2.grabCut(big, mask, rect, bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # a flat image has no colour model to fit: everything is background
        return np.zeros((h, w), bool)
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.float32)
    return cv2.resize(fg, (w, h), interpolation=cv2.INTER_AREA) > 0.5


def plausible(mask: np.ndarray) -> bool:
    """An object-like mask: foreground area within PLAUSIBLE_FG, and it holds the centre."""
    h, w = mask.shape
    centre = mask[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2]
    return PLAUSIBLE_FG[0] <= mask.mean() <= PLAUSIBLE_FG[1] and centre.mean() >= 0.5


def masks_for(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W) bool foreground masks."""
    return np.stack([grabcut_mask(im) for im in tqdm(images, desc="grabcut", leave=False)])


def inpaint(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """image with `region` (H, W) bool filled from its surroundings (Telea)."""
    return cv2.inpaint(image, region.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)


def make_variants(images: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Every variant of each image, (N, H, W, 3) uint8 per name in VARIANTS.

    bg_gaussian / bg_uniform: background pixels replaced by noise (N(128, 64^2) / U[0, 255]);
    bg_other_class: background taken from an image of another class, whose own object is
    inpainted away; only_bg: the object inpainted away; only_fg: background set to black.
    """
    rng = np.random.default_rng(seed)
    fg = masks[..., None]  # (N, H, W, 1)
    gauss = rng.normal(128, 64, images.shape).clip(0, 255).astype(np.uint8)
    uniform = rng.integers(0, 256, images.shape, dtype=np.uint8)
    only_bg = np.stack([inpaint(im, m) for im, m in zip(images, masks, strict=True)])
    donors = np.array([_other_class(labels, i, rng) for i in range(len(images))])  # (N,)
    return {
        "original": images,
        "bg_gaussian": np.where(fg, images, gauss),
        "bg_uniform": np.where(fg, images, uniform),
        "bg_other_class": np.where(fg, images, only_bg[donors]),
        "only_bg": only_bg,
        "only_fg": np.where(fg, images, 0).astype(np.uint8),
    }


def _other_class(labels: np.ndarray, i: int, rng: np.random.Generator) -> int:
    others = np.flatnonzero(labels != labels[i])
    return int(rng.choice(others)) if len(others) else i
