"""`simclr-embed train`: SimCLR on CIFAR-10 or an image folder, then kNN + linear-probe
evaluation. Its flags are TrainConfig's fields, the nested configs' under model- and aug-."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from simclr_embed.cli import dataclass_flags, with_flags
from simclr_embed.training.augment import AugmentConfig
from simclr_embed.training.model import ModelConfig
from simclr_embed.training.train import RECIPES, TrainConfig, train

log = logging.getLogger("simclr_embed")

RECIPE_HELP = "a named set of defaults that flags given override: " + "; ".join(
    f"{name}: {', '.join(f'{k}={v}' for k, v in kw.items()) or 'as shown'}"
    for name, kw in RECIPES.items())


@with_flags(*dataclass_flags(TrainConfig, panel="training"),
            *dataclass_flags(ModelConfig, prefix="model_", panel="model"),
            # The view size follows --image-size: views as large as what export and serving see.
            *dataclass_flags(AugmentConfig, prefix="aug_", skip=("size",), panel="augmentation"))
def command(recipe: Annotated[str, typer.Option(help=RECIPE_HELP)] = "default",
            resume: Annotated[bool, typer.Option(
                help="continue the run in --out-dir from its checkpoint.pt")] = False,
            stop_after: Annotated[int | None, typer.Option(
                help="end after this many epochs; the run stays resumable")] = None,
            **given: Any) -> None:
    """Train SimCLR (InfoNCE) on CIFAR-10 or an image folder. --data is 'cifar10' (downloads),
    or a path: a directory with train/ and test/ (folders or .tar.gz), or one image folder /
    .tar.gz."""
    ckpt = train(TrainConfig.recipe(recipe, **given), resume=resume, stop_after=stop_after)
    log.info("checkpoint: %s", ckpt)
