"""The momentum encoder and its queue of negatives (MoCo, He et al., 2020).

The key encoder is a copy of the online model whose weights follow it as an exponential moving
average, w_k <- m w_k + (1 - m) w_q, with m rising from its base value to 1 on a cosine over the
run (BYOL, MoCo v3). Its projections of past batches wait in a FIFO queue as extra negatives,
which helps most where batches are small. It runs in eval mode: its BatchNorm uses the running
statistics it averages from the online model, so no key sees the other keys of its batch (the
leak MoCo's shuffled BN closes).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn


class MomentumEncoder:
    def __init__(self, model: nn.Module, base: float, queue_size: int, dim: int) -> None:
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.base = base
        self.queue = torch.zeros(queue_size, dim, device=next(model.parameters()).device)
        self.filled = 0  # rows of the queue holding keys (it starts empty)
        self.ptr = 0  # the next row to overwrite

    def coefficient(self, step: int, total_steps: int) -> float:
        """m at this step: base at the start, 1.0 at the end, on a cosine."""
        progress = min(1.0, step / max(1, total_steps))
        return 1 - (1 - self.base) * (math.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def update(self, online: nn.Module, step: int, total_steps: int) -> None:
        m = self.coefficient(step, total_steps)
        pairs = zip(self.model.state_dict().values(), online.state_dict().values(), strict=True)
        for k, q in pairs:  # weights and BN running statistics alike: m k + (1 - m) q
            if k.dtype.is_floating_point:
                k.lerp_(q.detach(), 1 - m)
            else:  # BN's batch counter
                k.copy_(q)

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) views -> (B, D) unit-norm key projections."""
        return self.model(x)[1]

    def negatives(self) -> Tensor | None:
        """(filled, D) keys of earlier batches, or None while the queue is empty."""
        return self.queue[: self.filled] if self.filled else None

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Add a step's keys (the gathered global batch, the same on every rank), oldest out."""
        size = len(self.queue)
        if size == 0:
            return
        keys = keys[-size:].to(self.queue.dtype)
        rows = (self.ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[rows] = keys
        self.ptr = (self.ptr + len(keys)) % size
        self.filled = min(size, self.filled + len(keys))

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "queue": self.queue.cpu(),
                "filled": self.filled, "ptr": self.ptr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.queue.copy_(state["queue"])
        self.filled, self.ptr = int(state["filled"]), int(state["ptr"])
