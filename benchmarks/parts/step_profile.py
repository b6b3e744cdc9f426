"""Where a training step's time goes: torch.profiler over one epoch of the real training loop
(training/train.py train_epoch) of a recipe, by stage (data, augment, forward + loss,
backward + step), the host syncs per step, the heaviest operators, and the step's FLOPs
(torch.utils.flop_counter), hence images/s and, on a GPU, the share of its bf16 matrix rate.

    python -m benchmarks.train profile                       # CPU, a few minutes on 2 cores
    python -m benchmarks.train profile --batch-size 512 --train-per-class 1000 --compile \\
        --peak-tflops 989 --out $OUT/step_profile.json      # one H200 (dense bf16 peak)
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from simclr_embed.benchmarks.harness import hardware, write_result
from simclr_embed.training import distributed
from simclr_embed.training.augment import two_views
from simclr_embed.training.train import RECIPES, Run, TrainConfig, build_run, train_epoch

log = logging.getLogger("benchmarks.step_profile")
STAGES = ("data", "augment", "forward_loss", "backward_step")
# Calls that make the host wait for the device (or, on a CPU, that read a tensor's value).
SYNCS = ("aten::item", "aten::_local_scalar_dense", "cudaStreamSynchronize",
         "cudaDeviceSynchronize", "cudaMemcpy")


def step_flops(run: Run) -> int:
    """FLOPs of one step's forward and backward on the uncompiled model (the optimizer's
    elementwise update is left out: < 0.1 %)."""
    batch = run.train_images[: run.cfg.batch_size].to(run.device)
    x = torch.cat(two_views(batch, run.cfg.augment, run.norm))
    with FlopCounterMode(display=False) as counter:
        with run.autocast():
            _, z = run.model(x)
            loss = distributed.simclr_loss(*z.chunk(2), run.cfg.temperature)
        loss.backward()
    run.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def profile_epoch(run: Run) -> tuple[dict, float]:
    """(key averages by name, wall seconds) of one profiled epoch."""
    activities = [ProfilerActivity.CPU]
    if run.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        train_epoch(run, 2)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {e.key: e for e in prof.key_averages()}, wall


def summarize(events: dict, wall: float, run: Run, flops: int, peak_tflops: float | None
              ) -> dict:
    steps = run.steps_per_epoch
    ms = 1e-3 / steps  # profiler times are in microseconds, summed over the epoch

    def device_us(e) -> float:
        return getattr(e, "device_time_total", 0.0)

    stages = {s: {"cpu_ms_per_step": events[s].cpu_time_total * ms,
                  "device_ms_per_step": device_us(events[s]) * ms}
              for s in STAGES if s in events}
    ops = sorted((e for k, e in events.items() if k not in STAGES and k.startswith("aten::")),
                 key=lambda e: -(e.self_device_time_total if run.device.type == "cuda"
                                 else e.self_cpu_time_total))[:12]
    step_s = wall / steps
    achieved = flops / step_s / 1e12
    return {
        "steps": steps, "batch_size": run.cfg.batch_size, "step_ms": step_s * 1e3,
        "images_per_s": run.cfg.batch_size / step_s, "stages": stages,
        "host_syncs_per_step": {k: events[k].count / steps for k in SYNCS if k in events},
        "top_ops": [{"op": e.key, "calls_per_step": e.count / steps,
                     "self_cpu_ms_per_step": e.self_cpu_time_total * ms,
                     "self_device_ms_per_step": e.self_device_time_total * ms} for e in ops],
        "flops_per_step": flops, "flops_per_image": flops / run.cfg.batch_size,
        "achieved_tflops": achieved,
        "share_of_peak": achieved / peak_tflops if peak_tflops else None,
    }


QUICK = {"train_per_class": 4, "batch_size": 16,
         "out": Path("benchmarks/results/quick/step_profile.json")}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--recipe", default="cifar", choices=tuple(RECIPES))
    p.add_argument("--train-per-class", type=int, default=26)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense bf16 matrix rate, for share_of_peak")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/step_profile_cpu.json"))


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.recipe(args.recipe, data=args.data, out_dir=tmp, epochs=2,
                                 warmup_epochs=1, train_per_class=args.train_per_class,
                                 test_per_class=1, batch_size=args.batch_size, knn_every=0,
                                 compile=args.compile)
        run = build_run(cfg)
        train_epoch(run, 1)  # warm-up: compile, kernel choice, allocator
        flops = step_flops(run)
        events, wall = profile_epoch(run)
    res = summarize(events, wall, run, flops, args.peak_tflops)
    write_result(args.out, {"benchmark": "step_profile", "recipe": args.recipe,
                            "device": str(run.device), "precision": str(run.amp_dtype),
                            "compile": args.compile, "hardware": hardware()} | res)
    for name, s in res["stages"].items():
        log.info("%-14s cpu %7.2f ms  device %7.2f ms per step", name, s["cpu_ms_per_step"],
                 s["device_ms_per_step"])
    log.info("%.0f images/s, %.2f TFLOP/s achieved, host syncs per step: %s",
             res["images_per_s"], res["achieved_tflops"], res["host_syncs_per_step"])
