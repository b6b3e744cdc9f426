"""SimCLR training, top to bottom: config -> data -> model -> loop (InfoNCE) -> kNN monitor ->
checkpoint -> linear probe -> run directory with metrics and plots.

CUDA first (bf16 autocast, channels_last, optional torch.compile, data resident on the GPU),
CPU otherwise (bf16 autocast + channels_last). Multi-GPU: `torchrun --nproc-per-node N -m
simclr_embed.cli train ...`; each rank takes batch_size / N images and sees the global negatives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn
from torch.profiler import record_function
from tqdm import tqdm

from simclr_embed.errors import ConfigError
from simclr_embed.training import distributed
from simclr_embed.training.augment import AugmentConfig, Normalize, multi_views
from simclr_embed.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from simclr_embed.training.data import ImageArray, channel_stats, load_dataset, stratified_subset
from simclr_embed.training.evaluate import (
    extract_features,
    knn_accuracy,
    linear_probe,
    linear_probe_augmented,
)
from simclr_embed.training.model import ModelConfig, SimCLR, stem_for
from simclr_embed.training.momentum import MomentumEncoder
from simclr_embed.training.optim import Optimizer, WarmupCosine, build_optimizer

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cuda", "cpu"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
DEVICES: tuple[str, ...] = get_args(Device)
# Measured defaults per optimizer (docs/benchmarks.md, "Training"): base lr at batch 256, weight
# decay.
OPTIMIZER_DEFAULTS = {"sgd": (0.06, 5e-4), "lars": (0.3, 1e-6)}
# Named starting points for `train --recipe NAME`; explicit flags override them. Keys are the
# flat flag names (model_* and aug_* for the nested configs), as TrainConfig.from_flat takes.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # The released model's (solo-learn's CIFAR SimCLR): LARS, tau 0.2, strong jitter, 2048-256.
    "solo": {"batch_size": 512, "temperature": 0.2, "optimizer": "lars", "weight_decay": 1e-5,
             "model_proj_hidden_dim": 2048, "model_proj_out_dim": 256,
             "aug_jitter": (0.8, 0.8, 0.8, 0.2)},
    # dkobak/simclr-cifar10's: SGD (lr 0.06 x batch / 256, wd 5e-4), tau 0.5, crops from 20 %,
    # grayscale p 0.1, a 512-1024-128 head.
    "cifar": {"batch_size": 512, "temperature": 0.5, "optimizer": "sgd", "lr": None,
              "weight_decay": 5e-4, "model_proj_hidden_dim": 1024, "model_proj_out_dim": 128,
              "aug_crop_scale": (0.2, 1.0), "aug_gray_p": 0.1},
}


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
    optimizer: Optimizer = "lars"
    lr: float | None = None  # None: OPTIMIZER_DEFAULTS base lr * batch_size / 256
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: int = 10
    precision: Precision = "auto"
    device: Device = "auto"
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    knn_every: int = 1  # epochs between kNN monitor evaluations; 0 = only at the end
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always saves one)
    knn_k: int = 200
    knn_temperature: float = 0.1
    probe_epochs: int = 20  # fast probe: frozen, un-augmented features computed once
    probe_lr: float = 0.1
    probe_weight_decay: float = 1e-4
    # Literature protocol (SimCLR, solo-learn): crop + flip on every epoch through the frozen
    # encoder, ~100 epochs; 0 turns it off (it costs an encoder pass per epoch, GPU territory).
    probe_aug_epochs: int = 0
    # Wall-clock budget for training: after the second epoch the epoch count shrinks to fit
    # (the cosine schedule is re-planned), so a leased GPU run ends inside its lease.
    time_budget_s: float | None = None
    # MoCo's momentum encoder: the base coefficient of its moving average (e.g. 0.99), rising
    # to 1 on a cosine over the run; None: off. Its keys of past batches, queue_size of them,
    # are extra negatives (training/momentum.py).
    momentum_encoder: float | None = None
    queue_size: int = 0
    # Multi-crop "G,L": G global views at image_size and L local views at half of it, each
    # local view contrasted with the global views; "2,0" is SimCLR's pair.
    multi_crop: str = "2,0"
    probe_mixup: float = 0.0  # mixup's alpha in the linear probe (Beta(alpha, alpha)); 0: off
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.augment.size != self.image_size:  # views are as large as the images served
            self.augment = replace(self.augment, size=self.image_size)
        self.model = stem_for(self.model, self.image_size)  # recorded resolved
        self.crops()  # a malformed --multi-crop stops here, before any data is read
        if self.momentum_encoder is not None and not 0 <= self.momentum_encoder < 1:
            raise ConfigError(f"--momentum-encoder {self.momentum_encoder}: the moving "
                              "average's coefficient lies in [0, 1), e.g. 0.99")
        if self.queue_size and self.momentum_encoder is None:
            raise ConfigError("--queue-size holds the momentum encoder's keys: give "
                              "--momentum-encoder too, e.g. 0.99")

    def crops(self) -> tuple[int, int]:
        """(global, local) views per image, from --multi-crop G,L."""
        try:
            g, l_ = (int(v) for v in self.multi_crop.split(","))
        except ValueError:
            g, l_ = 0, -1
        if g < 2 or l_ < 0:
            raise ConfigError(f"--multi-crop {self.multi_crop!r}: give G,L with G >= 2 global "
                              "and L >= 0 local views, e.g. 2,4")
        return g, l_

    def resolved_lr(self) -> float:
        base = OPTIMIZER_DEFAULTS[self.optimizer][0]
        return self.lr if self.lr is not None else base * self.batch_size / 256

    def resolved_weight_decay(self) -> float:
        wd = self.weight_decay
        return wd if wd is not None else OPTIMIZER_DEFAULTS[self.optimizer][1]

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> TrainConfig:
        """From flag names: model_* and aug_* keys go to the nested configs."""
        nested: dict[str, Any] = {"model": {}, "augment": {}}
        top = {}
        for key, value in flat.items():
            for prefix, name in (("model_", "model"), ("aug_", "augment")):
                if key.startswith(prefix):
                    nested[name][key.removeprefix(prefix)] = value
                    break
            else:
                top[key] = value
        return cls.from_dict(top | nested)

    @classmethod
    def recipe(cls, name: str, **flat: Any) -> TrainConfig:
        """A named recipe (RECIPES) with flag-named overrides."""
        if name not in RECIPES:
            raise ConfigError(f"unknown recipe {name!r}; valid choices: {', '.join(RECIPES)}")
        return cls.from_flat(RECIPES[name] | flat)

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
        raise ConfigError(f"unknown device {name!r}; valid choices: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means full fp32. auto: bf16 where the hardware has it (CUDA sm80+, any recent CPU)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid choices: "
                          f"{', '.join(PRECISIONS)}")
    if precision == "auto":  # emulated bf16 (pre-Ampere) is slower than fp16 + GradScaler
        ok = device.type == "cpu" or torch.cuda.is_bf16_supported(including_emulation=False)
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
    schedule: WarmupCosine
    scaler: torch.amp.GradScaler
    data_gen: torch.Generator
    rank: int
    world: int
    steps_per_epoch: int
    momentum: MomentumEncoder | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def fit_to_data(cfg: TrainConfig, n: int, world: int) -> TrainConfig:
    """What a small image folder cannot take is derived, with a warning; what cannot be
    derived is an error that names the flag and a value that works."""
    if cfg.batch_size % world:
        lo = cfg.batch_size // world * world
        raise ConfigError(f"--batch-size {cfg.batch_size} does not divide by the {world} ranks: "
                         f"use --batch-size {lo or world} or {lo + world}")
    fit: dict[str, int] = {}
    if cfg.batch_size > n:
        if n // world < 2:
            raise ConfigError(f"{n} training images are too few: a contrastive batch needs at "
                             f"least 2 per rank ({2 * world} images)")
        fit["batch_size"] = world * 2 ** int(math.log2(n // world))
    if cfg.warmup_epochs >= cfg.epochs > 0:
        fit["warmup_epochs"] = cfg.epochs // 10
    if cfg.knn_k > n:
        fit["knn_k"] = n
    for name, value in fit.items():
        log.warning("--%s %s does not fit %d training images and %d epochs: using %s (set "
                    "--%s to choose)", name.replace("_", "-"), getattr(cfg, name), n,
                    cfg.epochs, value, name.replace("_", "-"))
    return replace(cfg, **fit) if fit else cfg


def build_run(cfg: TrainConfig) -> Run:
    device = pick_device(cfg.device)
    rank, world = distributed.init_from_env(device.type)
    if device.type == "cuda":
        if world > 1:  # torchrun's LOCAL_RANK is the GPU of this process on its node
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed + rank)  # augmentation draws differ per rank
    amp_dtype = autocast_dtype(cfg.precision, device)
    train, test = load_dataset(cfg.data, cfg.image_size)
    train = stratified_subset(train, cfg.train_per_class, cfg.seed, "--train-per-class")
    test = stratified_subset(test, cfg.test_per_class, cfg.seed, "--test-per-class")
    cfg = fit_to_data(cfg, len(train), world)
    mean, std = channel_stats(train.images)
    model = SimCLR(cfg.model, cfg.image_size).to(device)
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
    schedule = WarmupCosine(cfg.warmup_epochs * steps, cfg.epochs * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    momentum = None
    if cfg.momentum_encoder is not None:
        momentum = MomentumEncoder(model, cfg.momentum_encoder, cfg.queue_size,
                                   cfg.model.proj_out_dim)
    return Run(
        cfg, device, amp_dtype, train, test, resident_images(train.images, device),
        Normalize(mean, std, device), {"mean": mean, "std": std}, model, step_model, optimizer,
        scheduler, schedule, torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        torch.Generator().manual_seed(cfg.seed), rank, world, steps, momentum,
    )


def resident_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The uint8 training set on the GPU when it takes under a quarter of the free memory (no
    host-to-device copy per step); otherwise where it lies (memory-mapped from the decode
    cache, or in RAM), copied batch by batch."""
    x = torch.from_numpy(images)
    if device.type != "cuda":
        return x
    free, _ = torch.cuda.mem_get_info(device)
    if x.nbytes < free / 4:
        return x.to(device)
    log.info("training set (%.1f GB) stays in host memory", x.nbytes / 1e9)
    return x


def train_epoch(run: Run, epoch: int) -> dict[str, float]:
    """One pass over the data: per-rank shards of a shared permutation, two views per image."""
    cfg, model = run.cfg, run.step_model
    model.train()
    perm = torch.randperm(len(run.train), generator=run.data_gen)  # same on every rank
    per_rank = cfg.batch_size // run.world
    total = torch.zeros((), device=run.device)  # summed on the device: no host sync per step
    start = time.perf_counter()
    report_every = max(1, run.steps_per_epoch // 10)
    crops = cfg.crops()  # (global, local) views per image, parsed once
    bar = tqdm(range(run.steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}",
               disable=run.rank != 0)
    for step in bar:  # the labels name the stages in benchmarks/parts/step_profile.py
        with record_function("data"):
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]  # (B,)
            idx = idx[run.rank * per_rank : (run.rank + 1) * per_rank]  # (n,)
            batch = run.train_images[idx.to(run.train_images.device)].to(run.device,
                                                                        non_blocking=True)
        with record_function("augment"):
            views = multi_views(batch, cfg.augment, run.norm, *crops)
        with record_function("forward_loss"), run.autocast():
            loss, keys = step_loss(run, *views)
        with record_function("backward_step"):
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.scheduler.step()
            total += loss.detach()
            if run.momentum is not None:
                run.momentum.update(run.model, run.scheduler.last_epoch,
                                    run.schedule.total_steps)
                run.momentum.enqueue(keys[0])
        if (step + 1) % report_every == 0 and run.rank == 0:  # one sync per tenth of an epoch
            rate = (step + 1) * cfg.batch_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{rate:.0f}")
    mean_loss = total.item() / run.steps_per_epoch
    elapsed = time.perf_counter() - start
    return {
        "epoch": epoch,
        "loss": mean_loss,
        "lr": run.scheduler.get_last_lr()[0],
        "images_per_s": run.steps_per_epoch * cfg.batch_size / elapsed,
        "epoch_s": elapsed,
    }


def step_model_input(run: Run, views: list[torch.Tensor]) -> torch.Tensor:
    """The views of one size as one batch: one forward keeps their BN statistics shared."""
    x = torch.cat(views)  # (V * n, 3, S, S)
    return x.contiguous(memory_format=torch.channels_last) if run.cfg.channels_last else x


def step_loss(run: Run, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss of one step and the momentum encoder's gathered keys of the global views
    (empty without one): each size of view through the online model once."""
    x = step_model_input(run, global_views)  # (G * n, 3, S, S): online and key encoder alike
    _, z = run.step_model(x)  # (G * n, d)
    z_local = []
    if local_views:
        z_local = run.step_model(step_model_input(run, local_views))[1].chunk(len(local_views))
    keys: list[torch.Tensor] = []
    if run.momentum is not None:
        k = run.momentum.keys(x).float()  # (G * n, d)
        keys = [distributed.gather(part) for part in k.chunk(len(global_views))]
    queue = run.momentum.negatives() if run.momentum is not None else None
    loss = distributed.views_loss(list(z.chunk(len(global_views))), list(z_local),
                                  run.cfg.temperature, keys or None, queue)
    return loss, keys


def fit_time_budget(run: Run, epoch: int, spent_s: float, epoch_s: float) -> None:
    """Shrink cfg.epochs so that the remaining epochs fit the budget, re-planning the cosine
    schedule over the new total; every rank takes rank 0's decision."""
    cfg = run.cfg
    left = max(0, math.floor((cfg.time_budget_s - spent_s) / epoch_s))
    epochs = distributed.broadcast_int(max(epoch + 1, min(cfg.epochs, epoch + left)))
    if epochs < cfg.epochs:
        log.warning("time budget %.0f s: %d epochs instead of %d (%.1f s per epoch)",
                    cfg.time_budget_s, epochs, cfg.epochs, epoch_s)
        cfg.epochs = epochs
        run.schedule.total_steps = epochs * run.steps_per_epoch


def features(run: Run, data: ImageArray, desc: str) -> torch.Tensor:
    """h for every image; under DDP each rank embeds its shard and all ranks get the whole, so
    no rank idles in a collective while another evaluates."""
    sizes = [len(part) for part in np.array_split(np.arange(len(data)), run.world)]
    lo = sum(sizes[: run.rank])
    shard = slice(lo, lo + sizes[run.rank])  # a slice, not indices: a memory map stays a map
    local = extract_features(
        run.model.encoder, data.images[shard], run.norm.uint8, run.device,
        autocast_dtype=run.amp_dtype, desc=desc,
    )  # (n_rank, 512)
    return distributed.gather_shards(local, run.device)  # (N, 512), rank-major = data order


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
        "rng": {  # per rank: each draws its own augmentations, and must again after a resume
            "torch": distributed.gather_objects(torch.get_rng_state()),
            "cuda": distributed.gather_objects(
                torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None),
            "data": run.data_gen.get_state(),
        },
        "metrics": history,
        **({"momentum": run.momentum.state_dict()} if run.momentum is not None else {}),
    }


def restore(run: Run, state: dict[str, Any]) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    if run.momentum is not None:
        run.momentum.load_state_dict(state["momentum"])
    rng = state["rng"]
    if len(rng["torch"]) == run.world:  # same world size: every rank continues its own stream
        torch.set_rng_state(rng["torch"][run.rank])
        if rng["cuda"][run.rank] is not None and run.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"][run.rank], run.device)
    else:  # a new world size: fresh, distinct streams per rank
        log.warning("resuming %d ranks from a %d-rank run: augmentation streams reseeded",
                    run.world, len(rng["torch"]))
        torch.manual_seed(run.cfg.seed + 1000 * state["epoch"] + run.rank)
    run.data_gen.set_state(rng["data"])


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
    cfg = run.cfg  # with what fit_to_data derived
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
    if first == 1 and cfg.knn_every:
        history.append({"epoch": 0, "knn_top1": knn_monitor(run)})  # the random-init baseline
        log.info("epoch 0 (random init): kNN top-1 %.2f %%", history[-1]["knn_top1"])
    last = min(cfg.epochs, first - 1 + stop_after) if stop_after else cfg.epochs
    started, epoch = time.perf_counter(), first
    while epoch <= min(last, cfg.epochs):
        row = train_epoch(run, epoch)
        if cfg.time_budget_s and epoch == first + 1:  # the first epoch pays for compilation
            fit_time_budget(run, epoch, time.perf_counter() - started, row["epoch_s"])
            last = min(last, cfg.epochs)
        if cfg.knn_every and epoch % cfg.knn_every == 0 and epoch != cfg.epochs:
            row["knn_top1"] = knn_monitor(run)  # the last epoch's comes from finish()
        history.append(row)
        if run.rank == 0:
            log.info("epoch %d/%d: %s", epoch, cfg.epochs,
                     {k: round(v, 4) for k, v in row.items()})
        if epoch % cfg.checkpoint_every == 0 or epoch in (last, cfg.epochs):
            state_now = checkpoint_state(run, epoch, history)  # collective: RNG of every rank
            if run.rank == 0:
                save_checkpoint(ckpt_path, state_now)
                write_metrics(out, history)
        epoch += 1
    if last == cfg.epochs:
        finish(run, out, ckpt_path)
    distributed.shutdown()
    return ckpt_path


def finish(run: Run, out: Path, ckpt_path: Path) -> None:
    """Final kNN and linear probe, on one feature pass; they land in the checkpoint, the last
    metrics row (as that epoch's kNN monitor) and summary.json."""
    from simclr_embed.training.plots import plot_run

    distributed.barrier()  # rank 0's last checkpoint is on disk
    state = load_checkpoint(ckpt_path)
    result = evaluate_checkpoint_run(run)
    if run.rank != 0:
        return
    state["linear_head"] = result.pop("head")
    history = result.pop("probe_history")  # in probe.jsonl, not in every copy of the scores
    state["eval"] = result
    if run.cfg.knn_every and state["metrics"]:
        state["metrics"][-1]["knn_top1"] = result["knn_top1"]
        write_metrics(out, state["metrics"])
    save_checkpoint(ckpt_path, state)
    write_jsonl(out / "probe.jsonl", history)
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    plot_run(out)
    log.info("final: kNN top-1 %.2f %%, linear probe top-1 %.2f %% (augmented: %s)",
             result["knn_top1"], result["linear_top1"], result.get("linear_aug_top1", "off"))


def evaluate_checkpoint_run(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    train_f, test_f = features(run, run.train, "train features"), features(run, run.test, "test")
    train_y, test_y = torch.from_numpy(run.train.labels), torch.from_numpy(run.test.labels)
    knn = knn_accuracy(train_f, train_y, test_f, test_y, cfg.knn_k, cfg.knn_temperature)
    probe = linear_probe(
        train_f, train_y, test_f, test_y, len(run.train.classes), cfg.probe_epochs,
        cfg.probe_lr, cfg.probe_weight_decay, seed=cfg.seed, mixup=cfg.probe_mixup,
    )
    result = {
        "knn_top1": knn,
        "linear_top1": probe.top1,
        "linear_protocol": f"frozen features, no augmentation, {cfg.probe_epochs} epochs",
        "train_images": len(run.train),
        "test_images": len(run.test),
        "probe_history": probe.history,
        "head": probe.head.state_dict(),
    }
    if cfg.probe_aug_epochs:  # the literature protocol; its head is the better one to serve
        aug = linear_probe_augmented(
            run.model.encoder, run.train.images, run.train.labels, run.test.images,
            run.test.labels, run.norm, len(run.train.classes), cfg.probe_aug_epochs,
            run.device, run.amp_dtype, seed=cfg.seed,
        )
        result |= {"linear_aug_top1": aug.top1, "head": aug.head.state_dict(),
                   "linear_aug_protocol": f"crop + flip, {cfg.probe_aug_epochs} epochs"}
        result["probe_history"] = [
            {**row, "aug": False} for row in probe.history] + [
            {**row, "aug": True} for row in aug.history]
    return result


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_metrics(out: Path, history: list[dict]) -> None:
    write_jsonl(out / "metrics.jsonl", history)
    keys = sorted({k for r in history for k in r}, key=lambda k: (k != "epoch", k))
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in history]
    (out / "metrics.csv").write_text("\n".join(lines) + "\n")


def evaluate_checkpoint(path: Path, data: str | None = None, probe_epochs: int | None = None,
                        train_per_class: int | None = None, test_per_class: int | None = None,
                        device: Device = "auto") -> dict[str, Any]:
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

