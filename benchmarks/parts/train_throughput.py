"""Training-step throughput of SimCLR (augment + forward + InfoNCE + backward + step) per
precision, variants interleaved over rounds so that machine drift hits them all alike.

    python -m benchmarks.train throughput --out benchmarks/results/train_throughput_cpu.json

Reports per variant: median / p5 / p95 step time, images/s (median), peak memory, plus the
hardware and versions. Real CIFAR-10 images when --data is given, else random uint8 images.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from simclr_embed.benchmarks.harness import hardware, write_result
from simclr_embed.training.augment import AugmentConfig, Normalize, two_views
from simclr_embed.training.distributed import simclr_loss
from simclr_embed.training.model import ModelConfig, SimCLR
from simclr_embed.training.train import autocast_dtype, pick_device

log = logging.getLogger("benchmarks.train_throughput")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:  # writing 5 resets the process's VmHWM (peak RSS) on Linux
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Variant:
    def __init__(self, precision: str, channels_last: bool, device: torch.device) -> None:
        self.name = f"{precision}{'+channels_last' if channels_last else ''}"
        self.precision, self.channels_last, self.device = precision, channels_last, device
        self.dtype = autocast_dtype(precision, device)
        torch.manual_seed(0)
        self.model = SimCLR(ModelConfig()).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.times: list[float] = []
        self.peak_mb = 0.0

    def step(self, images: torch.Tensor, norm: Normalize) -> None:
        x = torch.cat(two_views(images, AugmentConfig(), norm))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype
               else contextlib.nullcontext())
        with amp:
            _, z = self.model(x)
            loss = simclr_loss(*z.chunk(2), 0.1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def summarize(v: Variant, batch: int) -> dict:
    t = sorted(v.times)
    q = np.percentile(t, [5, 50, 95])
    return {"variant": v.name, "precision": v.precision, "channels_last": v.channels_last,
            "n_steps": len(t), "step_s_median": statistics.median(t), "step_s_p5": q[0],
            "step_s_p95": q[2], "step_s_mean": statistics.fmean(t),
            "step_s_stdev": statistics.stdev(t) if len(t) > 1 else 0.0,
            "images_per_s": batch / statistics.median(t), "peak_memory_mb": v.peak_mb}


def load_images(data: str | None, n: int) -> tuple[np.ndarray, str]:
    if data is None:
        return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), np.uint8), "random"
    from simclr_embed.training.data import load_dataset, stratified_subset

    train, _ = load_dataset(data)
    return stratified_subset(train, n // len(train.classes)).images, data


QUICK = {"batch_size": 16, "rounds": 2, "steps": 1, "precisions": "fp32",
         "out": "benchmarks/results/quick/train_throughput.json"}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="data source; random images when omitted")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--out", default="benchmarks/results/train_throughput.json")


def run(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    images_np, source = load_images(args.data, args.batch_size)
    images = torch.from_numpy(images_np[: args.batch_size]).to(device)
    norm = Normalize([0.5] * 3, [0.25] * 3, device)
    variants = [Variant(p, cl, device) for p in args.precisions.split(",") for cl in (False, True)]
    for v in variants:  # warm-up: allocator, oneDNN/cuDNN kernel selection
        v.step(images, norm)
    for r in range(args.rounds):
        for v in variants:
            reset_peak_memory(device)
            for _ in range(args.steps):
                t0 = time.perf_counter()
                v.step(images, norm)
                v.times.append(time.perf_counter() - t0)
            v.peak_mb = max(v.peak_mb, peak_memory_mb(device))
        log.info("round %d/%d: %s", r + 1, args.rounds,
                 ", ".join(f"{v.name} {args.batch_size / v.times[-1]:.0f} img/s" for v in variants))
    rows = [summarize(v, args.batch_size) for v in variants]
    base = rows[0]["step_s_median"]
    for row in rows:
        row["speedup_vs_" + rows[0]["variant"]] = base / row["step_s_median"]
    result = {"benchmark": "simclr_train_step", "device": str(device), "hardware": hardware(),
              "batch_size": args.batch_size, "images": source, "rounds": args.rounds,
              "steps_per_round": args.steps, "torch_threads": torch.get_num_threads(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "variants": rows}
    out = write_result(args.out, result)
    for row in rows:
        log.info("%-22s %7.1f img/s  step %.3f s  peak %.0f MB  x%.2f", row["variant"],
                 row["images_per_s"], row["step_s_median"], row["peak_memory_mb"],
                 row["speedup_vs_" + rows[0]["variant"]])
    log.info("wrote %s", out)
