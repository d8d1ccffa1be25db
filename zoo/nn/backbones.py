"""One backbone builder for every entry: ``mlp``, ``cnn`` or any timm model name.

:func:`build_backbone` is the zoo's only "MLP or timm" factory. Its arguments follow timm's
names (``backbone`` for the architecture, ``in_chans`` for input channels), so a card can swap
the embedded digits MLP for ``resnet18`` by changing one string. ``num_classes=0`` returns a
feature extractor without a head, as ``timm.create_model(..., num_classes=0)`` does; every
returned module exposes its feature width as ``num_features`` (timm's attribute).

The layouts, in construction order (seeded initial weights depend on it):

- ``mlp``: ``[Flatten], (Linear, [BatchNorm1d], ReLU) per hidden width, Linear head``;
- ``cnn``: ``conv3x3(in_chans, 16), [BN], ReLU, conv3x3(16, 32), [BN], ReLU,
  AdaptiveMaxPool2d(2), Flatten, Linear(128, num_classes)`` (the small CNN of the CPU checks);
- a timm name (``resnet18``, ``vit_base_patch16_clip_224.openai``): ``timm.create_model``;
  ``cifar_stem`` then swaps a ResNet's 7x7/2 stem and max-pool for a 3x3/1 convolution, the
  usual ResNet for 32x32 images.

>>> net = build_backbone("mlp", 10, input_dim=64, hidden_dims=[32])
>>> net
MLP(
  (0): Flatten(start_dim=1, end_dim=-1)
  (1): Linear(in_features=64, out_features=32, bias=True)
  (2): ReLU()
  (3): Linear(in_features=32, out_features=10, bias=True)
)
>>> build_backbone("mlp", 0, input_dim=64, hidden_dims=[32]).num_features
32
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["build_backbone", "feature_dim", "MLP", "SmallCNN", "NORMS", "BUILTIN_BACKBONES"]

NORMS = ("none", "batchnorm")
BUILTIN_BACKBONES = ("mlp", "cnn")


class MLP(nn.Sequential):
    """``[Flatten], (Linear, [BatchNorm1d], ReLU) x len(hidden_dims), [Linear head]``.

    A plain ``nn.Sequential`` (state_dict keys ``0.weight``, ``1.weight``, ...) that also records
    ``num_features``, the width the head reads (the input width without hidden layers).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (),
        num_classes: int = 0,
        *,
        norm: str = "none",
        flatten: bool = True,
    ) -> None:
        dims = [int(input_dim), *(int(d) for d in hidden_dims)]
        layers: list[nn.Module] = [nn.Flatten()] if flatten else []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), *([nn.BatchNorm1d(d_out)] if norm == "batchnorm" else []), nn.ReLU()]
        if num_classes > 0:
            layers.append(nn.Linear(dims[-1], num_classes))
        super().__init__(*layers)
        self.num_features = dims[-1]


class SmallCNN(nn.Sequential):
    """Two 3x3 convolutions (16 and 32 channels, optional BatchNorm2d, ReLU), a 2x2 adaptive max-pool.

    ``num_features`` is 32 * 2 * 2 = 128, whatever the input size; the head is a Linear on it.
    """

    def __init__(self, in_chans: int = 1, num_classes: int = 0, *, norm: str = "none") -> None:
        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), *([nn.BatchNorm2d(c_out)] if norm == "batchnorm" else []), nn.ReLU()]

        layers = [*block(in_chans, 16), *block(16, 32), nn.AdaptiveMaxPool2d(2), nn.Flatten()]
        if num_classes > 0:
            layers.append(nn.Linear(32 * 4, num_classes))
        super().__init__(*layers)
        self.num_features = 32 * 4


def _cifar_stem(model: nn.Module, backbone: str, in_chans: int) -> None:
    """A 3x3 stride-1 first convolution and no max-pool (the 32x32 ResNet of He et al. 2016, Sec. 4.2)."""
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise ValueError(f"cifar_stem needs a timm ResNet-style model (conv1 + maxpool); {backbone!r} has none: use cifar_stem=False")
    model.conv1 = nn.Conv2d(in_chans, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def build_backbone(
    backbone: str,
    num_classes: int,
    *,
    input_dim: int = 64,
    hidden_dims: Sequence[int] = (),
    in_chans: int = 3,
    norm: str = "none",
    flatten: bool = True,
    cifar_stem: bool = False,
    pretrained: bool = False,
) -> nn.Module:
    """Build ``mlp``, ``cnn`` or the timm model ``backbone`` with a ``num_classes`` head (0: no head).

    Args:
        backbone: ``mlp`` | ``cnn`` | a timm model name, with or without a weights tag.
        num_classes: head outputs; 0 returns the feature extractor (width ``num_features``).
        input_dim / hidden_dims: MLP input width and hidden widths (``[]``: a linear model).
        in_chans: input channels of ``cnn`` and timm models.
        norm: ``none`` | ``batchnorm`` after each hidden layer of ``mlp`` and ``cnn``.
        flatten: start the MLP with ``nn.Flatten`` (False keeps the key layout of MLPs built
            without one: the first Linear is then ``0.weight``).
        cifar_stem: give a timm ResNet the 3x3 stride-1 stem without max-pool.
        pretrained: load timm's pretrained weights (needs the Hub).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: a feature extractor without head), got {num_classes}")
    if backbone == "mlp":
        return MLP(input_dim, hidden_dims, num_classes, norm=norm, flatten=flatten)
    if backbone == "cnn":
        return SmallCNN(in_chans, num_classes, norm=norm)
    import timm

    if not isinstance(backbone, str) or not timm.is_model(backbone):
        raise ValueError(f"unknown backbone {backbone!r}: use 'mlp', 'cnn' or a timm model name (timm.list_models())")
    model = timm.create_model(backbone, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
    if cifar_stem:
        _cifar_stem(model, backbone, in_chans)
    return model


def feature_dim(model: nn.Module) -> int:
    """The width of the features a head reads: ``num_features`` of timm models and of this builder's."""
    width = getattr(model, "num_features", None)
    if width is None:
        raise ValueError(f"{type(model).__qualname__} has no num_features; build it with zoo.nn.backbones.build_backbone")
    return int(width)
