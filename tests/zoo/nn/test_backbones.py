"""build_backbone against the seven builders it replaced, copied here as they were written.

Each reference below is one entry's former builder (continual, mtard, srat, sinkgd, bang,
neural-collapse, anyloss). Built with the same seed, the shared builder must give the same
modules in the same order: identical state_dict keys and identical initial weights, so seeded
runs and published checkpoints are unchanged by the refactor.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
from torch import nn

from zoo.nn.backbones import MLP, SmallCNN, build_backbone, feature_dim


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# --------------------------------------------------------------------- the former builders
def old_continual(backbone: str, num_classes: int, input_dim: int, hidden_dims: list[int], in_channels: int, norm: str) -> nn.Module:
    if backbone == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip([input_dim, *hidden_dims[:-1]], hidden_dims):
            layers += [nn.Linear(d_in, d_out), *([nn.BatchNorm1d(d_out)] if norm == "batchnorm" else []), nn.ReLU()]
        layers.append(nn.Linear(hidden_dims[-1] if hidden_dims else input_dim, num_classes))
        return nn.Sequential(*layers)
    if backbone == "cnn":

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), *([nn.BatchNorm2d(c_out)] if norm == "batchnorm" else []), nn.ReLU()]

        return nn.Sequential(*block(in_channels, 16), *block(16, 32), nn.AdaptiveMaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4, num_classes))
    return timm.create_model(backbone, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def _stem(model: nn.Module, in_chans: int) -> nn.Module:
    model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def old_mtard(arch: str, num_classes: int, input_dim: int, hidden_dims: list[int], in_chans: int, cifar_stem: bool) -> nn.Module:
    if arch == "mlp":
        dims = [input_dim, *hidden_dims]
        layers: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], num_classes))
        return nn.Sequential(*layers)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    return _stem(model, in_chans) if cifar_stem else model


def old_srat(backbone: str, input_dim: int, hidden_dims: list[int], in_channels: int, cifar_stem: bool) -> tuple[nn.Module, int]:
    if backbone == "mlp":
        widths = [input_dim, *hidden_dims]
        layers: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        return nn.Sequential(*layers), widths[-1]
    net = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_channels)
    return (_stem(net, in_channels) if cifar_stem else net), int(net.num_features)


def old_unflattened_mlp(input_dim: int, hidden_dims: list[int], num_classes: int) -> nn.Module:
    """sinkgd's, bang's (members) and anyloss's (num_classes=1) MLP: no Flatten."""
    dims = [input_dim, *hidden_dims]
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], num_classes))
    return nn.Sequential(*layers)


def old_neural_collapse(backbone: str, in_features: int, width: int, depth_relu: int) -> tuple[nn.Module, int]:
    if backbone == "mlp":
        widths = [in_features] + [width] * depth_relu
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(width, width))
        return nn.Sequential(*layers), width
    net = timm.create_model(backbone, pretrained=False, num_classes=0)
    return net, int(net.num_features)


# ------------------------------------------------------------------------------ comparison
def assert_same_build(old: Callable[[], nn.Module], new: Callable[[], nn.Module]) -> nn.Module:
    """Same seed -> same keys, shapes, values and module types, in the same order."""
    torch.manual_seed(0)
    a = old()
    torch.manual_seed(0)
    b = new()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert [type(m) for m in a.modules()][1:] == [type(m) for m in b.modules()][1:]
    return b


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
@pytest.mark.parametrize("hidden", [[], [256], [32, 16]])
def test_continual_mlp(norm: str, hidden: list[int]) -> None:
    net = assert_same_build(
        lambda: old_continual("mlp", 10, 64, hidden, 1, norm),
        lambda: build_backbone("mlp", 10, input_dim=64, hidden_dims=hidden, in_chans=1, norm=norm),
    )
    assert net.num_features == (hidden[-1] if hidden else 64)


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_continual_cnn(norm: str) -> None:
    net = assert_same_build(
        lambda: old_continual("cnn", 10, 64, [], 1, norm), lambda: build_backbone("cnn", 10, in_chans=1, norm=norm)
    )
    assert isinstance(net, SmallCNN) and net(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_continual_timm() -> None:
    assert_same_build(lambda: old_continual("resnet18", 10, 64, [], 1, "batchnorm"), lambda: build_backbone("resnet18", 10, in_chans=1))


@pytest.mark.parametrize("hidden", [[], [64], [256, 256]])
def test_mtard_mlp(hidden: list[int]) -> None:
    assert_same_build(lambda: old_mtard("mlp", 10, 64, hidden, 3, False), lambda: build_backbone("mlp", 10, input_dim=64, hidden_dims=hidden))


@pytest.mark.parametrize("cifar_stem", [False, True])
def test_mtard_timm_and_cifar_stem(cifar_stem: bool) -> None:
    net = assert_same_build(
        lambda: old_mtard("resnet18", 10, 64, [], 3, cifar_stem), lambda: build_backbone("resnet18", 10, in_chans=3, cifar_stem=cifar_stem)
    )
    assert tuple(net.conv1.kernel_size) == ((3, 3) if cifar_stem else (7, 7))
    assert isinstance(net.maxpool, nn.Identity) is cifar_stem


def test_srat_features_mlp_and_timm() -> None:
    width = old_srat("mlp", 64, [128, 64], 3, False)[1]
    net = assert_same_build(lambda: old_srat("mlp", 64, [128, 64], 3, False)[0], lambda: build_backbone("mlp", 0, input_dim=64, hidden_dims=[128, 64]))
    assert feature_dim(net) == width == 64 and net(torch.rand(3, 64)).shape == (3, 64)
    net = assert_same_build(
        lambda: old_srat("resnet18", 64, [], 1, True)[0], lambda: build_backbone("resnet18", 0, in_chans=1, cifar_stem=True)
    )
    assert feature_dim(net) == 512


@pytest.mark.parametrize(("hidden", "num_classes"), [([256, 256], 10), ([], 10), ([], 1), ([8], 1)])
def test_unflattened_mlp_of_sinkgd_bang_anyloss(hidden: list[int], num_classes: int) -> None:
    net = assert_same_build(
        lambda: old_unflattened_mlp(20, hidden, num_classes),
        lambda: build_backbone("mlp", num_classes, input_dim=20, hidden_dims=hidden, flatten=False),
    )
    assert next(iter(net.state_dict())) == "0.weight"


@pytest.mark.parametrize(("depth_relu", "in_features"), [(0, 32), (1, 64), (3, 64)])
def test_neural_collapse_mlp(depth_relu: int, in_features: int) -> None:
    """Its last layer is Linear(width, width): with depth_relu=0 the input must already be width wide."""
    assert_same_build(
        lambda: old_neural_collapse("mlp", in_features, 32, depth_relu)[0],
        lambda: build_backbone("mlp", 32, input_dim=in_features, hidden_dims=[32] * depth_relu),
    )


def test_neural_collapse_timm_features() -> None:
    net = assert_same_build(lambda: old_neural_collapse("resnet18", 64, 32, 0)[0], lambda: build_backbone("resnet18", 0))
    assert feature_dim(net) == old_neural_collapse("resnet18", 64, 32, 0)[1]


def test_feature_extractors_and_errors() -> None:
    cnn = build_backbone("cnn", 0, in_chans=3)
    assert feature_dim(cnn) == 128 and cnn(torch.rand(2, 3, 8, 8)).shape == (2, 128)
    assert isinstance(build_backbone("mlp", 0, hidden_dims=[]), MLP)
    assert build_backbone("mlp", 0, input_dim=5)(torch.rand(2, 5)).shape == (2, 5)  # no hidden layer: the input itself
    assert timm.is_model("resnet18.a1_in1k")  # tagged names are accepted (weights resolve at create time)
    with pytest.raises(ValueError, match="unknown backbone 'resnet1'"):
        build_backbone("resnet1", 10)
    with pytest.raises(ValueError, match="norm"):
        build_backbone("mlp", 10, norm="layer")
    with pytest.raises(ValueError, match="cifar_stem"):
        build_backbone("vit_tiny_patch16_224", 10, cifar_stem=True)
    with pytest.raises(ValueError, match="num_features"):
        feature_dim(nn.Linear(2, 2))
