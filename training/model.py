"""SimCLR: a ResNet-18 encoder f and a projection head g (Chen et al., 2020). The stem follows
the image size: the CIFAR stem below 64 px, torchvision's ImageNet stem from 64 px up.

h = f(x) is the 512-d representation that evaluation, export and serving use;
z = g(h) / ||g(h)|| is the projection the InfoNCE loss sees during training only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from simclr_embed.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    arch: str = "resnet18"
    proj_hidden_dim: int = 2048
    proj_out_dim: int = 128
    # hidden layers in g: 0 -> linear 512-128, 1 -> 512-2048-128, 2 -> 512-2048-2048-128
    proj_layers: int = 1
    # "auto": by the image size (stem_for); a checkpoint records the stem it resolved to.
    stem: str = "auto"


ARCHS = ("resnet18",)
PROJ_LAYERS = (0, 1, 2, 3)  # 0: a linear g, as SimCLR's ablation of the head compares
STEMS = ("auto", "cifar", "imagenet")
IMAGENET_STEM_FROM = 64  # px: below it a stride-4 stem would leave the last stage 1x1 or less


def stem_for(config: ModelConfig, image_size: int) -> ModelConfig:
    """The config with its stem resolved for images of this size."""
    if config.stem not in STEMS:
        raise ConfigError(f"unknown stem {config.stem!r}; valid choices: {', '.join(STEMS)}")
    if config.stem != "auto":
        return config
    return replace(config, stem="imagenet" if image_size >= IMAGENET_STEM_FROM else "cifar")


def resnet18(stem: str) -> nn.Module:
    """ResNet-18 without its classifier (output h, (B, 512)). The CIFAR stem is a 3x3 stride-1
    conv and no max-pool, so 32x32 inputs keep their resolution through the first stage; the
    ImageNet stem (7x7 stride 2, then a 3x3 stride-2 max-pool) is torchvision's own."""
    net = torchvision.models.resnet18(weights=None)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


class ProjectionHead(nn.Module):
    """g: MLP with BatchNorm + ReLU on each hidden layer, linear output (SimCLR's head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, hidden_layers: int) -> None:
        super().__init__()
        if hidden_layers not in PROJ_LAYERS:
            raise ConfigError(f"proj_layers must be one of {PROJ_LAYERS}, got {hidden_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(hidden_layers):
            layers += [
                nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU()
            ]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class SimCLR(nn.Module):
    feature_dim = 512

    def __init__(self, config: ModelConfig, image_size: int = 32) -> None:
        super().__init__()
        if config.arch not in ARCHS:
            raise ConfigError(f"unknown arch {config.arch!r}; valid choices: {', '.join(ARCHS)}")
        self.config = config = stem_for(config, image_size)
        self.encoder = resnet18(config.stem)
        self.projector = ProjectionHead(
            self.feature_dim, config.proj_hidden_dim, config.proj_out_dim, config.proj_layers
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, 3, H, W) normalized images -> h (B, 512), z (B, proj_out_dim) unit-norm."""
        h = self.encoder(x)  # (B, 512)
        z = F.normalize(self.projector(h).float(), dim=1)  # (B, d), fp32 for the loss
        return h, z
