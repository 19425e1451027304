"""ResNet-18/34/50 (He et al., CVPR 2016) with a swappable activation, written for dissection.

Differences from torchvision's ResNet that matter here:
- every activation *call site* is its own module (``act`` in the stem, ``act1``/``act2`` in a
  BasicBlock, ``act1``/``act2``/``act3`` in a Bottleneck; the last one is applied after the residual
  add), so a forward hook on a module name is unambiguous;
- the activation is built by a factory ``act_layer(width) -> nn.Module`` (timm style), so LWTA
  blocks (DISCOVER, Panousis et al. 2023) replace every ReLU as in the reference ResNet;
- ``stem="cifar"`` (3x3 conv, stride 1, no max-pool) or ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool);
- a width multiplier; the LWTA block size U must divide every channel count it gives (refused otherwise);
- input normalisation inside the model (buffers ``mean``/``std``): images come in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lwtakit.errors import UserError
from lwtakit.models.options import ArchOptions
from lwtakit.models.registry import ModelRequest, register_model

ActLayer = Callable[[int], nn.Module]


def scaled_channels(base: int, width: float, multiple: int = 1) -> int:
    """``round(base * width)`` rounded to the nearest positive multiple of ``multiple`` (the LWTA U)."""
    c = max(1, round(base * width))
    m = max(1, int(multiple))
    return max(m, int(round(c / m)) * m)


def check_widths_divisible(width: float, U: int) -> None:
    """Refuse an LWTA U that does not divide every stage width ``round(64 * 2**i * width)``: rounding the widths to
    multiples of U (128 -> 129) would build a network other than its dense twin of the same ``width``, without a
    word (issue 23). The message names the widths and the Us that divide them all."""
    widths = [max(1, round(64 * 2**i * width)) for i in range(4)]
    if U <= 1 or all(w % U == 0 for w in widths):
        return
    common = math.gcd(*widths)
    fitting = [str(d) for d in range(2, common + 1) if common % d == 0][:8]
    choices = f"U in {{{', '.join(fitting)}}} divides them all" if fitting else "no U > 1 divides them all"
    raise UserError(f"model.U={U} does not divide the layer widths {', '.join(map(str, widths))} (model.width="
                    f"{width}); {choices}: pick such a U, or a model.width whose widths U divides")


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean/std as buffers (saved in the state dict)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.mean.shape[1]:
            raise UserError(
                f"model expects {self.mean.shape[1]} input channels but got {x.shape[1]}; "
                "set in_chans (or the dataset's channel option) to match"
            )
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """Two 3x3 convs; ``act1`` after bn1, ``act2`` after the residual add."""

    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int, act_layer: ActLayer):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.act1 = act_layer(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.downsample = _downsample(in_ch, ch, stride)
        self.act2 = act_layer(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4); ``act3`` after the residual add."""

    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int, act_layer: ActLayer):
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.act1 = act_layer(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.act2 = act_layer(ch)
        self.conv3 = nn.Conv2d(ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = _downsample(in_ch, out_ch, stride)
        self.act3 = act_layer(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + identity)


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class ResNet(nn.Module):
    """ResNet with stages ``layer1..layer4``, global average pool and classifier ``fc``; ``arch`` gives the width
    multiplier, stem, input channels and normalisation, ``channel_multiple`` the LWTA U every width is rounded to."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], num_classes: int,
                 act_layer: ActLayer, arch: ArchOptions | None = None, channel_multiple: int = 1):
        super().__init__()
        arch = arch if arch is not None else ArchOptions()
        if arch.stem not in ("cifar", "imagenet"):
            raise UserError(f"unknown stem {arch.stem!r}; use 'cifar' (3x3, no max-pool) or 'imagenet' "
                            "(7x7/2 + max-pool)")
        self.normalize = Normalize(*arch.normalization())
        width, in_chans = arch.width, arch.in_chans
        check_widths_divisible(width, channel_multiple)
        widths = [scaled_channels(64 * 2**i, width, channel_multiple) for i in range(4)]
        c0 = widths[0]
        if arch.stem == "cifar":
            self.conv1 = nn.Conv2d(in_chans, c0, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, c0, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(c0)
        self.act = act_layer(c0)
        in_ch = c0
        for i, (n, ch) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_ch, ch, stride, act_layer))
                in_ch = ch * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(**kw) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), **kw)


def resnet34(**kw) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), **kw)


def resnet50(**kw) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), **kw)


def _from_request(request: ModelRequest) -> dict:
    """The keyword arguments of the ResNet builders for a registry request (ResNets have no depth option)."""
    if request.arch.depth is not None:
        raise UserError(f"depth applies to ViTs only (a ResNet's depth is its name), got depth={request.arch.depth}")
    return {"num_classes": request.num_classes, "act_layer": request.act_layer, "arch": request.arch,
            "channel_multiple": request.channel_multiple}


@register_model("resnet18", dense="relu")
def _resnet18(request: ModelRequest) -> ResNet:
    return resnet18(**_from_request(request))


@register_model("resnet34", dense="relu")
def _resnet34(request: ModelRequest) -> ResNet:
    return resnet34(**_from_request(request))


@register_model("resnet50", dense="relu")
def _resnet50(request: ModelRequest) -> ResNet:
    return resnet50(**_from_request(request))
