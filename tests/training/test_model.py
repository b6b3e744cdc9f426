import pytest
import torch

from simclr_embed.training.model import ModelConfig, SimCLR, resnet18
from simclr_embed.training.train import TrainConfig


def test_shapes_and_unit_norm_projection() -> None:
    model = SimCLR(ModelConfig()).eval()
    h, z = model(torch.randn(3, 3, 32, 32))
    assert h.shape == (3, 512) and z.shape == (3, 128)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))


def test_cifar_stem_keeps_resolution_into_the_first_stage() -> None:
    net = resnet18("cifar")
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    x = net.relu(net.bn1(net.conv1(torch.randn(1, 3, 32, 32))))
    assert net.layer1(net.maxpool(x)).shape == (1, 64, 32, 32)


@pytest.mark.parametrize(("size", "stem", "stage1"), [(32, "cifar", 32), (63, "cifar", 63),
                                                     (64, "imagenet", 16), (96, "imagenet", 24)])
def test_the_stem_follows_the_image_size(size: int, stem: str, stage1: int) -> None:
    cfg = TrainConfig(image_size=size)
    assert cfg.model.stem == stem  # resolved, so the checkpoint records it
    net = SimCLR(cfg.model).encoder
    x = net.maxpool(net.relu(net.bn1(net.conv1(torch.randn(1, 3, size, size)))))
    assert net.layer1(x).shape[-1] == stage1
    h, _ = SimCLR(ModelConfig(), size).eval()(torch.randn(2, 3, size, size))
    assert h.shape == (2, 512)
    assert TrainConfig(image_size=96, model=ModelConfig(stem="cifar")).model.stem == "cifar"


@pytest.mark.parametrize(("layers", "linears"), [(0, 1), (1, 2), (2, 3)])
def test_projection_head_depth(layers: int, linears: int) -> None:
    model = SimCLR(ModelConfig(proj_layers=layers, proj_hidden_dim=64, proj_out_dim=16))
    lin = [m for m in model.projector.modules() if isinstance(m, torch.nn.Linear)]
    assert len(lin) == linears
    assert lin[0].in_features == 512 and lin[-1].out_features == 16


def test_bad_config_names_valid_choices() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        SimCLR(ModelConfig(arch="vit"))
    with pytest.raises(ValueError, match=r"\(0, 1, 2, 3\)"):
        SimCLR(ModelConfig(proj_layers=4))
    with pytest.raises(ValueError, match="auto, cifar, imagenet"):
        SimCLR(ModelConfig(stem="vit"))


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = SimCLR(ModelConfig()).eval()
    x = torch.randn(2, 3, 32, 32)
    h, _ = model(x)
    model = model.to(memory_format=torch.channels_last)
    h_cl, _ = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(h_cl, h, rtol=1e-4, atol=1e-4)
