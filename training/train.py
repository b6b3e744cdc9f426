"""SimCLR training, top to bottom: config -> data -> model -> loop (InfoNCE) -> kNN monitor ->
checkpoint -> linear probe -> run directory with metrics and plots.

CUDA first (bf16 autocast, channels_last, optional torch.compile, data resident on the GPU),
CPU otherwise (bf16 autocast + channels_last). Multi-GPU: `torchrun --nproc-per-node N -m
training.cli train ...`; each rank takes batch_size / N images and sees the global negatives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training import distributed
from training.augment import AugmentConfig, Normalize, two_views
from training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from training.data import ImageArray, channel_stats, load_dataset, stratified_subset
from training.evaluate import extract_features, knn_accuracy, linear_probe
from training.model import ModelConfig, SimCLR
from training.optim import build_optimizer, warmup_cosine

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cuda", "cpu")
# Measured defaults per optimizer (README, "Optimizer"): base lr at batch 256 and weight decay.
OPTIMIZER_DEFAULTS = {"sgd": (0.06, 5e-4), "lars": (0.3, 1e-6)}


@dataclass
class TrainConfig:
    data: str = "cifar10"
    out_dir: str = "runs/simclr"
    image_size: int = 32
    train_per_class: int | None = None  # stratified subset of train for smoke runs
    test_per_class: int | None = None
    epochs: int = 200
    batch_size: int = 256
    temperature: float = 0.1
    optimizer: str = "lars"
    lr: float | None = None  # None: OPTIMIZER_DEFAULTS base lr * batch_size / 256
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: int = 10
    precision: str = "auto"
    device: str = "auto"
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    knn_every: int = 1  # epochs between kNN monitor evaluations; 0 = only at the end
    knn_k: int = 200
    knn_temperature: float = 0.1
    probe_epochs: int = 20
    probe_lr: float = 0.1
    probe_weight_decay: float = 1e-4
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def resolved_lr(self) -> float:
        base = OPTIMIZER_DEFAULTS[self.optimizer][0]
        return self.lr if self.lr is not None else base * self.batch_size / 256

    def resolved_weight_decay(self) -> float:
        wd = self.weight_decay
        return wd if wd is not None else OPTIMIZER_DEFAULTS[self.optimizer][1]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["model"] = ModelConfig(**d.get("model", {}))
        aug = {k: tuple(v) if isinstance(v, list) else v for k, v in d.get("augment", {}).items()}
        kw["augment"] = AugmentConfig(**aug)
        return cls(**kw)


def pick_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; valid choices: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means full fp32. auto: bf16 where the hardware has it (CUDA sm80+, any recent CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    if precision == "auto":
        ok = device.type == "cpu" or torch.cuda.is_bf16_supported()
        precision = "bf16" if ok else "fp16"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass
class Run:
    """Everything a training step touches, built once from the config."""

    cfg: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    train: ImageArray
    test: ImageArray
    train_images: torch.Tensor  # (N, H, W, 3) uint8, on the device when it fits
    norm: Normalize
    stats: dict[str, list[float]]
    model: SimCLR
    step_model: nn.Module  # model, possibly compiled / DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    data_gen: torch.Generator
    rank: int
    world: int
    steps_per_epoch: int

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def build_run(cfg: TrainConfig) -> Run:
    device = pick_device(cfg.device)
    rank, world = distributed.init_from_env(device.type)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed + rank)  # augmentation draws differ per rank
    amp_dtype = autocast_dtype(cfg.precision, device)
    train, test = load_dataset(cfg.data, cfg.image_size)
    train = stratified_subset(train, cfg.train_per_class, cfg.seed)
    test = stratified_subset(test, cfg.test_per_class, cfg.seed)
    mean, std = channel_stats(train.images)
    per_rank = cfg.batch_size // world
    if per_rank * world != cfg.batch_size or cfg.batch_size > len(train):
        raise ValueError(
            f"batch_size {cfg.batch_size} must divide by {world} ranks and fit {len(train)} images"
        )
    model = SimCLR(cfg.model).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model: nn.Module = model
    if world > 1:
        if device.type == "cuda":  # BN statistics over the global batch, as SimCLR prescribes
            step_model = nn.SyncBatchNorm.convert_sync_batchnorm(step_model)
        step_model = nn.parallel.DistributedDataParallel(step_model)
    if cfg.compile:
        step_model = torch.compile(step_model)
    optimizer = build_optimizer(
        model, cfg.optimizer, cfg.resolved_lr(), cfg.momentum, cfg.resolved_weight_decay()
    )
    steps = len(train) // cfg.batch_size
    scheduler = warmup_cosine(optimizer, cfg.warmup_epochs * steps, cfg.epochs * steps)
    return Run(
        cfg, device, amp_dtype, train, test, resident_images(train.images, device),
        Normalize(mean, std, device), {"mean": mean, "std": std}, model, step_model, optimizer,
        scheduler, torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        torch.Generator().manual_seed(cfg.seed), rank, world, steps,
    )


def resident_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The uint8 training set on the GPU when it takes under a quarter of the free memory (no
    host-to-device copy per step); otherwise in pinned host memory, copied batch by batch."""
    x = torch.from_numpy(images)
    if device.type != "cuda":
        return x
    free, _ = torch.cuda.mem_get_info(device)
    if x.nbytes < free / 4:
        return x.to(device)
    log.info("training set (%.1f GB) stays in pinned host memory", x.nbytes / 1e9)
    return x.pin_memory()


def train_epoch(run: Run, epoch: int) -> dict[str, float]:
    """One pass over the data: per-rank shards of a shared permutation, two views per image."""
    cfg, model = run.cfg, run.step_model
    model.train()
    perm = torch.randperm(len(run.train), generator=run.data_gen)  # same on every rank
    per_rank = cfg.batch_size // run.world
    total, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(range(run.steps_per_epoch), desc=f"epoch {epoch}", disable=run.rank != 0)
    for step in bar:
        idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]  # (B,)
        idx = idx[run.rank * per_rank : (run.rank + 1) * per_rank]  # (n,)
        batch = run.train_images[idx.to(run.train_images.device)].to(run.device, non_blocking=True)
        x1, x2 = two_views(batch, cfg.augment, run.norm)  # (n, 3, S, S) each
        x = torch.cat([x1, x2])  # (2n, 3, S, S): one forward keeps BN statistics shared
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with run.autocast():
            _, z = model(x)  # (2n, d)
            loss = distributed.simclr_loss(*z.chunk(2), cfg.temperature)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        total += loss.item()
        seen += cfg.batch_size
        rate = seen / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{rate:.0f}")
    elapsed = time.perf_counter() - start
    return {
        "epoch": epoch,
        "loss": total / run.steps_per_epoch,
        "lr": run.scheduler.get_last_lr()[0],
        "images_per_s": seen / elapsed,
        "epoch_s": elapsed,
    }


def features(run: Run, data: ImageArray, desc: str) -> torch.Tensor:
    return extract_features(
        run.model.encoder, data.images, run.norm.uint8, run.device,
        autocast_dtype=run.amp_dtype, desc=desc,
    )


def knn_monitor(run: Run) -> float:
    """kNN top-1 (%) of the test split against the training images as the bank."""
    train_f, test_f = features(run, run.train, "knn bank"), features(run, run.test, "knn test")
    return knn_accuracy(
        train_f, torch.from_numpy(run.train.labels), test_f, torch.from_numpy(run.test.labels),
        run.cfg.knn_k, run.cfg.knn_temperature,
    )


def checkpoint_state(run: Run, epoch: int, history: list[dict]) -> dict[str, Any]:
    return {
        "config": asdict(run.cfg),
        "classes": run.train.classes,
        "normalization": run.stats,
        "epoch": epoch,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "data": run.data_gen.get_state(),
        },
        "metrics": history,
    }


def restore(run: Run, state: dict[str, Any]) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    run.data_gen.set_state(state["rng"]["data"])


def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None) -> Path:
    """Train, monitor, checkpoint each epoch and finish with the linear probe.

    resume: continue from out_dir/checkpoint.pt with the config stored there.
    stop_after: end this invocation after that many epochs; the run stays resumable
    (for preemptible jobs and time-sliced queues).
    Returns the checkpoint path.
    """
    out = Path(cfg.out_dir)
    ckpt_path = out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path) if resume else None
    if state is not None:
        cfg = TrainConfig.from_dict(state["config"])
        log.info("resuming %s from epoch %d", ckpt_path, state["epoch"])
    run = build_run(cfg)
    history: list[dict] = []
    first = 1
    if state is not None:
        restore(run, state)
        history, first = state["metrics"], state["epoch"] + 1
    if run.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        log.info("device %s, precision %s, %d ranks, %d train / %d test images", run.device,
                 run.amp_dtype or "fp32", run.world, len(run.train), len(run.test))
    if run.rank == 0 and first == 1 and cfg.knn_every:
        history.append({"epoch": 0, "knn_top1": knn_monitor(run)})  # the random-init baseline
        log.info("epoch 0 (random init): kNN top-1 %.2f %%", history[-1]["knn_top1"])
    last = min(cfg.epochs, first - 1 + stop_after) if stop_after else cfg.epochs
    for epoch in range(first, last + 1):
        row = train_epoch(run, epoch)
        if run.rank == 0:
            if cfg.knn_every and epoch % cfg.knn_every == 0 and epoch != cfg.epochs:
                row["knn_top1"] = knn_monitor(run)  # the last epoch's comes from finish()
            history.append(row)
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
            save_checkpoint(ckpt_path, checkpoint_state(run, epoch, history))
            write_metrics(out, history)
    if run.rank == 0 and last == cfg.epochs:
        finish(run, out, ckpt_path)
    distributed.shutdown()
    return ckpt_path


def finish(run: Run, out: Path, ckpt_path: Path) -> None:
    """Final kNN and linear probe, on one feature pass; they land in the checkpoint, the last
    metrics row (as that epoch's kNN monitor) and summary.json."""
    from training.plots import plot_run

    state = load_checkpoint(ckpt_path)
    result = evaluate_checkpoint_run(run)
    state["linear_head"] = result.pop("head")
    state["eval"] = result
    if run.cfg.knn_every and state["metrics"]:
        state["metrics"][-1]["knn_top1"] = result["knn_top1"]
        write_metrics(out, state["metrics"])
    save_checkpoint(ckpt_path, state)
    write_jsonl(out / "probe.jsonl", result.pop("probe_history"))
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    plot_run(out)
    log.info("final: kNN top-1 %.2f %%, linear probe top-1 %.2f %%",
             result["knn_top1"], result["linear_top1"])


def evaluate_checkpoint_run(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    train_f, test_f = features(run, run.train, "train features"), features(run, run.test, "test")
    train_y, test_y = torch.from_numpy(run.train.labels), torch.from_numpy(run.test.labels)
    knn = knn_accuracy(train_f, train_y, test_f, test_y, cfg.knn_k, cfg.knn_temperature)
    probe = linear_probe(
        train_f, train_y, test_f, test_y, len(run.train.classes), cfg.probe_epochs,
        cfg.probe_lr, cfg.probe_weight_decay, seed=cfg.seed,
    )
    return {
        "knn_top1": knn,
        "linear_top1": probe.top1,
        "train_images": len(run.train),
        "test_images": len(run.test),
        "probe_history": probe.history,
        "head": probe.head.state_dict(),
    }


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_metrics(out: Path, history: list[dict]) -> None:
    write_jsonl(out / "metrics.jsonl", history)
    keys = sorted({k for r in history for k in r}, key=lambda k: (k != "epoch", k))
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in history]
    (out / "metrics.csv").write_text("\n".join(lines) + "\n")


def evaluate_checkpoint(path: Path, data: str | None = None, probe_epochs: int | None = None,
                        train_per_class: int | None = None, test_per_class: int | None = None,
                        device: str = "auto") -> dict[str, Any]:
    """kNN and linear probe for a saved checkpoint (the `eval` subcommand)."""
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"])
    cfg.data = data or cfg.data
    cfg.device = device
    cfg.probe_epochs = probe_epochs if probe_epochs is not None else cfg.probe_epochs
    cfg.train_per_class, cfg.test_per_class = train_per_class, test_per_class
    run = build_run(cfg)
    run.model.load_state_dict(model_from_checkpoint(state).state_dict())
    run.norm = Normalize(state["normalization"]["mean"], state["normalization"]["std"], run.device)
    result = evaluate_checkpoint_run(run)
    result.pop("head")
    return result

