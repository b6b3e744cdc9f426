"""Evaluation of frozen representations, shared by training, export and the tests:
kNN classification (cosine, temperature-weighted votes) and the linear probe."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from simclr_embed.training.augment import (
    AugmentConfig,
    Normalize,
    resized_crop_flip,
    sample_crop_boxes,
)

_probe_crop = AugmentConfig(crop_scale=(0.08, 1.0))  # the probe's crop: RandomResizedCrop only


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: np.ndarray,
    preprocess: Callable[[Tensor], Tensor],
    device: torch.device,
    batch_size: int = 512,
    autocast_dtype: torch.dtype | None = None,
    desc: str = "features",
) -> Tensor:
    """h for every image: (N, H, W, 3) uint8 -> (N, 512) fp32 on the CPU, in eval mode."""
    was_training = encoder.training
    encoder.eval()
    out = []
    amp = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype
        else contextlib.nullcontext()
    )
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
        x = torch.from_numpy(images[start : start + batch_size]).to(device)  # (B, H, W, 3)
        with amp:
            out.append(encoder(preprocess(x)).float().cpu())  # (B, 512)
    encoder.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def knn_predict(
    query: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> Tensor:
    """Class of each query by its k nearest bank features (cosine), each vote weighted by
    exp(sim / temperature), as in Wu et al. (2018) and lightly's kNN monitor.

    query: (Q, D), bank: (N, D), bank_labels: (N,) -> (Q,) predicted labels.
    """
    bank = F.normalize(bank.float(), dim=1)  # (N, D)
    k = min(k, bank.shape[0])
    preds = []
    for q in query.float().split(chunk):
        sim = F.normalize(q, dim=1) @ bank.T  # (q, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (q, k)
        votes = F.one_hot(bank_labels[top_idx], num_classes).float()  # (q, k, C)
        scores = (votes * (top_sim / temperature).exp().unsqueeze(-1)).sum(1)  # (q, C)
        preds.append(scores.argmax(1))
    return torch.cat(preds)


def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """kNN top-1 (%) of test features against the train features as the bank."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(test_feats, train_feats, train_labels, num_classes, k, temperature)
    return 100.0 * (pred == test_labels).float().mean().item()


@dataclass
class ProbeResult:
    top1: float  # % on the test features after the last epoch
    history: list[dict[str, float]]  # per epoch: epoch, loss, test_top1
    head: nn.Linear  # trained on h, on the CPU


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int,
    epochs: int = 20,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    mixup: float = 0.0,
) -> ProbeResult:
    """A linear layer trained on frozen h (SGD, momentum 0.9, cosine schedule), scored on test.

    The encoder is frozen and un-augmented, so its features are computed once by the caller.
    mixup: alpha of mixup (Zhang et al., 2018) on the features: each batch is blended with a
    shuffled copy of itself by lambda ~ Beta(alpha, alpha), and so are the two losses; 0: off.
    """
    gen = torch.Generator().manual_seed(seed)
    lambdas = np.random.default_rng(seed)
    head = nn.Linear(train_feats.shape[1], num_classes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head.reset_parameters()
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_labels) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    history = []
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(train_labels), generator=gen)
        total = 0.0
        for idx in perm.split(batch_size):
            x, y = train_feats[idx], train_labels[idx]  # (b, 512), (b,)
            if mixup > 0:
                lam = float(lambdas.beta(mixup, mixup))
                other = torch.randperm(len(idx), generator=gen)  # (b,)
                logits = head(lam * x + (1 - lam) * x[other])
                loss = (lam * F.cross_entropy(logits, y)
                        + (1 - lam) * F.cross_entropy(logits, y[other]))
            else:
                loss = F.cross_entropy(head(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(
            {
                "epoch": epoch,
                "loss": total / len(train_labels),
                "test_top1": linear_accuracy(head, test_feats, test_labels),
            }
        )
    return ProbeResult(history[-1]["test_top1"], history, head)


@torch.no_grad()
def linear_accuracy(head: nn.Linear, feats: Tensor, labels: Tensor) -> float:
    return 100.0 * (head(feats).argmax(1) == labels).float().mean().item()


def linear_probe_augmented(
    encoder: nn.Module,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    norm: Normalize,
    num_classes: int,
    epochs: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 512,
    lr: float = 0.1,
    seed: int = 0,
) -> ProbeResult:
    """The literature's linear evaluation (SimCLR appendix, solo-learn): each epoch sees a fresh
    RandomResizedCrop(0.08-1) + flip of every training image through the frozen encoder (eval
    mode); SGD momentum 0.9, lr 0.1 x batch/256, no weight decay, cosine; scored on the
    un-augmented test split. One encoder pass per image per epoch: meant for a GPU.
    """
    gen = torch.Generator().manual_seed(seed)
    was_training = encoder.training
    encoder.eval()
    head = nn.Linear(encoder_dim(encoder, device), num_classes).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr * batch_size / 256, momentum=0.9)
    steps = epochs * math.ceil(len(train_labels) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    images = torch.from_numpy(train_images).to(device)  # (N, H, W, 3) uint8
    labels = torch.from_numpy(train_labels).to(device)  # (N,)
    amp = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    history = []
    test_y = torch.from_numpy(test_labels)
    for epoch in tqdm(range(1, epochs + 1), desc="linear probe (crop + flip)", leave=False):
        total = torch.zeros((), device=device)
        for idx in torch.randperm(len(labels), generator=gen).to(device).split(batch_size):
            x = images[idx].permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)
            size = x.shape[-1]
            boxes = sample_crop_boxes(len(idx), x.shape[2], size, _probe_crop, device)  # (B, 4)
            flip = torch.rand(len(idx), device=device) < 0.5  # (B,)
            with torch.no_grad(), amp:
                h = encoder(norm(resized_crop_flip(x, boxes, flip, size))).float()  # (B, D)
            loss = F.cross_entropy(head(h), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(idx)
        row = {"epoch": epoch, "loss": total.item() / len(labels)}
        if epoch % 10 == 0 or epoch == epochs:  # a test pass costs a fifth of an epoch
            test_f = extract_features(encoder, test_images, norm.uint8, device,
                                      autocast_dtype=autocast_dtype, desc="probe test")
            row["test_top1"] = linear_accuracy(head.cpu(), test_f, test_y)
            head.to(device)
        history.append(row)
    encoder.train(was_training)
    return ProbeResult(history[-1]["test_top1"], history, head.cpu())


@torch.no_grad()
def encoder_dim(encoder: nn.Module, device: torch.device) -> int:
    was_training = encoder.training
    encoder.eval()
    dim = encoder(torch.zeros(1, 3, 32, 32, device=device)).shape[1]
    encoder.train(was_training)
    return int(dim)
