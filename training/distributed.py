"""Data parallelism under torchrun: process group set-up and the gradient-preserving gather
that gives every rank the global batch of negatives."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor

from simclr_embed.training.loss import info_nce, key_nce


def init_from_env(device_type: str) -> tuple[int, int]:
    """(rank, world_size); starts the process group when torchrun set WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_int(value: int) -> int:
    """Rank 0's value on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])


def gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (a one-element list alone)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_shards(local: Tensor, device: torch.device) -> Tensor:
    """Each rank's (n_r, D) CPU rows -> all ranks' rows, rank-major, on every rank (CPU).
    Shards may differ in length by one (np.array_split), so they travel padded."""
    if not is_distributed():
        return local
    sizes = gather_objects(local.shape[0])
    padded = torch.zeros(max(sizes), *local.shape[1:], dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n].cpu() for p, n in zip(parts, sizes, strict=True)])


def gather_with_grad(x: Tensor) -> Tensor:
    """(n, D) on each rank -> (world * n, D), rank-major. Gradients flow back to every rank's
    rows (torch.distributed.nn's all_gather sums them in backward), unlike dist.all_gather."""
    if not is_distributed():
        return x
    return torch.cat(dist_fn.all_gather(x))


def simclr_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """InfoNCE with negatives from all ranks; equals the single-process loss on the global batch
    once averaged over ranks (which DDP's gradient averaging does)."""
    if not is_distributed():
        return info_nce(z1, z2, temperature)
    z1_all, z2_all = gather_with_grad(z1), gather_with_grad(z2)  # (N, D) each
    return info_nce(z1, z2, temperature, z1_all, z2_all, dist.get_rank())


def gather(x: Tensor) -> Tensor:
    """(n, D) on each rank -> (world * n, D), rank-major, without gradient: the momentum
    encoder's keys, which every rank then scores and enqueues alike."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def views_loss(z_global: list[Tensor], z_local: list[Tensor], temperature: float,
               keys_all: list[Tensor] | None = None, queue: Tensor | None = None) -> Tensor:
    """The training objective over this rank's views, the mean of its terms.

    z_global: G >= 2 tensors (n, D), the online projections of the global views; z_local: L
    tensors (n, D) of the local views (multi-crop). Without keys_all: SimCLR's InfoNCE for each
    pair of global views, and each local view against each global view (key_nce, the online
    global views as keys, gathered with their gradient). With keys_all, G tensors (N, D) of the
    momentum encoder's gathered keys: each global view against the other global views' keys
    and each local view against every global view's keys, the queue's negatives added to all.
    One pair of global views and no momentum encoder is plain SimCLR, unchanged.
    """
    rank = dist.get_rank() if is_distributed() else 0
    pairs = [(a, b) for a in range(len(z_global)) for b in range(len(z_global)) if a != b]
    terms = []
    if keys_all is None:
        terms += [simclr_loss(z_global[a], z_global[b], temperature) for a, b in pairs if a < b]
        keys_all = [gather_with_grad(z) for z in z_global] if z_local else []
    else:
        terms += [key_nce(z_global[a], keys_all[b], temperature, rank, queue) for a, b in pairs]
    terms += [key_nce(q, k, temperature, rank, queue) for q in z_local for k in keys_all]
    return torch.stack(terms).mean()
