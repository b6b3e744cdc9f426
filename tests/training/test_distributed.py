"""Two real processes on the gloo backend: InfoNCE over gathered negatives equals the
single-process loss on the same global batch, and so do the gradients; so does the momentum
encoder's loss over gathered keys and a queue, with multi-crop's local views."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from simclr_embed.training.distributed import gather, simclr_loss, views_loss
from simclr_embed.training.loss import info_nce

WORLD, N_PER_RANK, DIM, TAU = 2, 4, 16, 0.1


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * N_PER_RANK, DIM, generator=g), torch.randn(
        WORLD * N_PER_RANK, DIM, generator=g)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        a, b = _global_batch()
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        a_local, b_local = a[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
        loss = simclr_loss(F.normalize(a_local, dim=1), F.normalize(b_local, dim=1), TAU)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad_a": a_local.grad, "grad_b": b_local.grad},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_loss_and_gradients_equal_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    a, b = (x.requires_grad_() for x in _global_batch())
    full = info_nce(F.normalize(a, dim=1), F.normalize(b, dim=1), TAU)
    full.backward()

    mean_loss = torch.stack([r["loss"] for r in ranks]).mean()
    torch.testing.assert_close(mean_loss, full.detach(), rtol=1e-5, atol=1e-6)
    # Each rank backpropagated its own loss; the gather's backward sums every rank's share into
    # the local rows, so rank grads = WORLD x d(mean loss)/dz, as DDP's averaging then undoes.
    grad_a = torch.cat([r["grad_a"] for r in ranks]) / WORLD
    grad_b = torch.cat([r["grad_b"] for r in ranks]) / WORLD
    torch.testing.assert_close(grad_a, a.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_b, b.grad, rtol=1e-4, atol=1e-6)


def _momentum_batch() -> tuple[list[torch.Tensor], torch.Tensor]:
    """Global views (2 global, 1 local, 2 key sets) and a queue of earlier keys."""
    g = torch.Generator().manual_seed(1)
    views = [F.normalize(torch.randn(WORLD * N_PER_RANK, DIM, generator=g), dim=1)
             for _ in range(5)]
    return views, F.normalize(torch.randn(6, DIM, generator=g), dim=1)


def _momentum_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        (g1, g2, l1, k1, k2), queue = _momentum_batch()
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        q = [v[rows].clone().requires_grad_() for v in (g1, g2, l1)]
        keys = [gather(k[rows]) for k in (k1, k2)]  # each rank gathers its own keys' rows
        loss = views_loss(q[:2], q[2:], TAU, keys, queue)
        loss.backward()
        torch.save({"loss": loss.detach(), "keys": keys, "grads": [v.grad for v in q]},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_momentum_loss_over_gathered_keys_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(_momentum_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD,
             join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    (g1, g2, l1, k1, k2), queue = _momentum_batch()
    q = [v.clone().requires_grad_() for v in (g1, g2, l1)]
    full = views_loss(q[:2], q[2:], TAU, [k1, k2], queue)
    full.backward()
    for r in ranks:  # every rank holds the whole batch's keys: the queue each feeds is the same
        torch.testing.assert_close(r["keys"][0], k1)
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), full.detach(),
                               rtol=1e-5, atol=1e-6)
    for i, v in enumerate(q):  # keys carry no gradient: each rank's rows are its own
        grad = torch.cat([r["grads"][i] for r in ranks]) / WORLD
        torch.testing.assert_close(grad, v.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_torchrun_training_loop_on_two_cpu_processes(cifar10_dir: Path, tmp_path: Path) -> None:
    """The whole DDP path (sharding, DDP wrapper, gathered loss, rank-0 checkpoint) runs."""
    import subprocess
    import sys

    out = tmp_path / "run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
              "-m", "simclr_embed.cli", "train", "--out-dir", str(out)]
    subprocess.run([*launch, "--data", str(cifar10_dir), "--device", "cpu",
                    "--train-per-class", "8", "--test-per-class", "4", "--epochs", "2",
                    "--batch-size", "32", "--warmup-epochs", "1", "--knn-every", "1",
                    "--probe-epochs", "1", "--stop-after", "1", "--momentum-encoder", "0.99",
                    "--queue-size", "64", "--multi-crop", "2,2"], check=True, timeout=600)
    first = torch.load(out / "checkpoint.pt", weights_only=True)
    torch_rng = first["rng"]["torch"]  # one stream per rank, saved by rank 0
    assert len(torch_rng) == 2 and not torch.equal(torch_rng[0], torch_rng[1])
    subprocess.run([*launch, "--resume"], check=True, timeout=600)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and [m["epoch"] for m in state["metrics"]] == [0, 1, 2]
    assert state["momentum"]["filled"] == 64  # 2 epochs x 2 steps x 32 gathered keys
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in state["metrics"][1:])
    # kNN from features embedded in shards on both ranks and gathered: 40 test images.
    assert all(m["knn_top1"] * 40 / 100 == pytest.approx(round(m["knn_top1"] * 40 / 100),
                                                         abs=1e-3) for m in state["metrics"])
