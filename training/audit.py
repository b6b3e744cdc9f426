"""`simclr-embed audit`: what a trained embedding has learned, on any checkpoint or bundle.

1. Alignment and uniformity (Wang & Isola, 2020) of h and, where the file holds the projection
   head, of z: positive pairs are two SimCLR views of the same test image.
2. Invariance per augmentation: mean cosine between an image and itself under one augmentation.
3. A background probe (training/background.py): kNN / linear accuracy, cosine to the original
   and same-class grouping when the background is replaced or the object removed.

Writes audit.json, audit.md and audit.png (+ background_examples.png) to --out.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from simclr_embed.errors import ConfigError
from simclr_embed.training import background
from simclr_embed.training.augment import AugmentConfig, Normalize, random_view
from simclr_embed.training.data import load_dataset, stratified_subset
from simclr_embed.training.evaluate import knn_predict, linear_accuracy, linear_probe

log = logging.getLogger(__name__)


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> float:
    """E ||x - y||^alpha over positive pairs. x, y: (N, D) unit rows; row i pairs row i."""
    return (x - y).norm(dim=1).pow(alpha).mean().item()


def uniformity(x: Tensor, t: float = 2.0) -> float:
    """log E exp(-t ||x_i - x_j||^2) over all pairs i < j. x: (N, D) unit rows."""
    sq = torch.pdist(x.double()).pow(2)  # (N(N-1)/2,)
    return (sq.mul(-t).exp().mean().log()).item()


# One augmentation alone, everything else the identity (a full-image crop is the identity).
_NONE = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                      gray_p=0.0, blur_p=0.0)
SINGLE_AUGMENTATIONS = {
    "crop": replace(_NONE, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3)),
    "flip": replace(_NONE, flip_p=1.0),
    "color_jitter": replace(_NONE, jitter_p=1.0),
    "grayscale": replace(_NONE, gray_p=1.0),
    "blur": replace(_NONE, blur_p=1.0),
}


class Embedder:
    """uint8 images -> h (and z where the projection head is known), for a training checkpoint
    (.pt), released weights (.safetensors: no projection head) or a model bundle (ONNX FP32)."""

    def __init__(self, source: str | Path, device: str = "cpu", batch_size: int = 256) -> None:
        self.source, self.batch_size = Path(source), batch_size
        self.device = torch.device(device)
        self.session = None
        if (self.source / "manifest.json").is_file():
            self._load_bundle()
        else:
            self._load_checkpoint()

    def _load_checkpoint(self) -> None:
        from simclr_embed.training.checkpoint import load_checkpoint, model_from_checkpoint

        state = load_checkpoint(self.source)
        self.model = model_from_checkpoint(state).to(self.device).eval()
        self.has_projector = not state.get("encoder_only", False)
        stats = state["normalization"]
        self.norm = Normalize(stats["mean"], stats["std"], self.device)
        self.data = state["config"].get("data")

    def _load_bundle(self) -> None:
        from simclr_embed.service.bundle import load_bundle
        from simclr_embed.service.runtime import make_session

        bundle = load_bundle(self.source)
        self.session = make_session(bundle.encoder_path("fp32"))
        self.has_projector = False
        self.data = bundle.manifest["export"].get("data")

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[Tensor, Tensor | None]:
        """(N, H, W, 3) uint8 -> unit h (N, 512) and unit z (N, d) or None, fp32 on the CPU."""
        if self.session is not None:
            from simclr_embed.service.runtime import run_batches

            emb, _ = run_batches(self.session, images, self.batch_size, desc="embed")
            return F.normalize(torch.from_numpy(emb), dim=1), None
        hs, zs = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = torch.from_numpy(images[start : start + self.batch_size]).to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                h, z = self.model(self.norm.uint8(chunk))  # (B, 512), (B, d)
            hs.append(h.float().cpu())
            zs.append(z.float().cpu())
        h = F.normalize(torch.cat(hs), dim=1)
        return h, (F.normalize(torch.cat(zs), dim=1) if self.has_projector else None)


def as_uint8(views: Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8: views enter the model as images do."""
    return (views.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()


def geometry(embed: Embedder, images: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Alignment / uniformity over two SimCLR views of each image, on h and (if known) z."""
    torch.manual_seed(seed)
    x = torch.from_numpy(images)
    h1, z1 = embed(as_uint8(random_view(x, AugmentConfig())))
    h2, z2 = embed(as_uint8(random_view(x, AugmentConfig())))
    out = {"h": {"alignment": alignment(h1, h2), "uniformity": uniformity(h1)}, "z": None}
    if z1 is not None and z2 is not None:
        out["z"] = {"alignment": alignment(z1, z2), "uniformity": uniformity(z1)}
    return out


def invariance(embed: Embedder, images: np.ndarray, h: Tensor, seed: int = 0) -> dict[str, float]:
    """Mean cosine of h(image) to h(image under one augmentation), per augmentation."""
    torch.manual_seed(seed)
    x = torch.from_numpy(images)
    return {name: (embed(as_uint8(random_view(x, cfg)))[0] * h).sum(1).mean().item()
            for name, cfg in SINGLE_AUGMENTATIONS.items()}


@dataclass
class AuditConfig:
    source: str
    data: str | None = None  # default: the data the model was trained / exported on
    out: str = "runs/audit"
    bank_per_class: int = 500  # kNN bank and linear-probe training set (clean train images)
    test_per_class: int = 100
    knn_k: int = 20  # the bank is small: 200 neighbours would span classes
    probe_epochs: int = 50
    seed: int = 0
    device: str = "cpu"


def _grouping(feats: Tensor, labels: Tensor, k: int = 10) -> float:
    """Mean fraction of each image's k nearest others (cosine) that share its class."""
    sim = feats @ feats.T  # (N, N)
    sim.fill_diagonal_(-2.0)
    idx = sim.topk(k, dim=1).indices  # (N, k)
    return (labels[idx] == labels[:, None]).float().mean().item()


def background_probe(embed: Embedder, cfg: AuditConfig, bank: tuple[Tensor, Tensor],
                     test_images: np.ndarray, test_labels: np.ndarray) -> dict[str, Any]:
    """Per variant: kNN and linear top-1 against the clean bank, cosine to the original image,
    same-class@10 among the variant images. Only images with a plausible mask are used."""
    masks = background.masks_for(test_images)  # (N, H, W)
    ok = np.array([background.plausible(m) for m in masks])
    images, labels, masks = test_images[ok], test_labels[ok], masks[ok]
    variants = background.make_variants(images, masks, labels, cfg.seed)
    bank_h, bank_y = bank
    classes = int(bank_y.max()) + 1
    y = torch.from_numpy(labels).long()
    probe = linear_probe(bank_h, bank_y, bank_h[:1], bank_y[:1], classes, cfg.probe_epochs,
                         seed=cfg.seed).head
    h0 = embed(images)[0]
    rows = {}
    for name, imgs in variants.items():
        h = embed(imgs)[0]  # (n, 512)
        knn = knn_predict(h, bank_h, bank_y, classes, cfg.knn_k)
        rows[name] = {"knn_top1": 100 * (knn == y).float().mean().item(),
                      "linear_top1": linear_accuracy(probe, h, y),
                      "cosine_to_original": (h * h0).sum(1).mean().item(),
                      "same_class_at_10": 100 * _grouping(h, y)}
    show = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)][:6]  # one per class
    return {"images": len(test_images), "plausible_masks": int(ok.sum()),
            "plausible_fraction": float(ok.mean()), "fg_fraction_mean": float(masks.mean()),
            "variants": rows, "examples": {k: v[show] for k, v in variants.items()},
            "example_masks": masks[show]}


def run_audit(cfg: AuditConfig) -> dict[str, Any]:
    embed = Embedder(cfg.source, cfg.device)
    data = cfg.data or embed.data
    if not data:
        raise ConfigError("no --data given and the model does not name its data")
    train, test = load_dataset(data, 32)
    train = stratified_subset(train, cfg.bank_per_class, cfg.seed)
    test = stratified_subset(test, cfg.test_per_class, cfg.seed)
    log.info("audit %s on %d bank / %d test images", cfg.source, len(train), len(test))
    bank = (embed(train.images)[0], torch.from_numpy(train.labels).long())
    h_test = embed(test.images)[0]
    result = {
        "config": asdict(cfg), "data": str(data), "has_projection_head": embed.has_projector,
        "geometry": geometry(embed, test.images, cfg.seed),
        "invariance": invariance(embed, test.images, h_test, cfg.seed),
        "background": background_probe(embed, cfg, bank, test.images, test.labels),
    }
    return result


def write_report(result: dict[str, Any], out: Path) -> Path:
    """audit.json (without the example images), audit.md, audit.png, background_examples.png."""
    from simclr_embed.training.plots import plot_audit

    out.mkdir(parents=True, exist_ok=True)
    bg = result["background"]
    examples, masks = bg.pop("examples"), bg.pop("example_masks")
    (out / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "audit.md").write_text(audit_markdown(result))
    plot_audit(result, examples, masks, out)
    return out / "audit.json"


def audit_markdown(r: dict[str, Any]) -> str:
    g, bg = r["geometry"], r["background"]
    lines = ["| space | alignment (lower: views closer) | uniformity (lower: spread wider) |",
             "| --- | --- | --- |"]
    for space in ("h", "z"):
        if g[space]:
            lines.append(f"| {space} | {g[space]['alignment']:.3f} | "
                         f"{g[space]['uniformity']:.3f} |")
    lines += ["", "| augmentation alone | mean cosine to the image |", "| --- | --- |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["invariance"].items()]
    lines += ["", f"Background probe: {bg['plausible_masks']} of {bg['images']} test images "
              f"have a plausible GrabCut mask ({100 * bg['plausible_fraction']:.0f} %; mean "
              f"foreground {100 * bg['fg_fraction_mean']:.0f} % of the image).", "",
              "| variant | kNN top-1 (%) | linear top-1 (%) | cosine to original | "
              "same-class@10 (%) |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {k} | {v['knn_top1']:.1f} | {v['linear_top1']:.1f} | "
              f"{v['cosine_to_original']:.3f} | {v['same_class_at_10']:.1f} |"
              for k, v in bg["variants"].items()]
    return "\n".join(lines) + "\n"
