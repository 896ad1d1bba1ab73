"""ResNet-50 trunk in plain torch, with torchvision's parameter names, so that the official
EMOCA/DECA weights load as they are (no torchvision at run time, nothing downloaded).

The trunk is DECA's (``decalib/models/resnet.py``, kept in EMOCA as ``gdl/models/ResNet.py``):
torchvision's ResNet-50 v1.5 (stride on the 3x3 convolution of each bottleneck) without the
``fc`` layer, ending in ``AvgPool2d(7)``: a (B,3,224,224) image gives (B,2048) features.

Parameter names (a ``state_dict`` of :class:`ResNet50`)::

    conv1.weight                       (64,3,7,7)
    bn1.{weight,bias,running_mean,running_var,num_batches_tracked}
    layer{1..4}.{k}.conv{1,2,3}.weight, layer{1..4}.{k}.bn{1,2,3}.*
    layer{1..4}.0.downsample.0.weight  (1x1 convolution), .downsample.1.* (batch norm)

with 3, 4, 6, 3 bottlenecks in layers 1..4 (planes 64, 128, 256, 512; expansion 4).
"""
from __future__ import annotations

import torch
from torch import nn

LAYERS = (3, 4, 6, 3)
PLANES = (64, 128, 256, 512)
EXPANSION = 4
FEATURES = 2048


class Bottleneck(nn.Module):
    """1x1 (planes) -> 3x3 stride s (planes) -> 1x1 (4 planes), batch norm after each, ReLU,
    identity or projected (1x1 stride s + batch norm) shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * EXPANSION
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        s = x if self.downsample is None else self.downsample(x)
        return self.relu(y + s)


class ResNet50(nn.Module):
    """``forward(images (B,3,224,224)) -> (B,2048)``; inputs are RGB in [0,1] for EMOCA/DECA
    (no mean/std normalisation). Other square sizes work (the pooling adapts), but the
    official weights were trained at 224."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (n, planes) in enumerate(zip(LAYERS, PLANES)):
            blocks = []
            for k in range(n):
                blocks.append(Bottleneck(inplanes, planes, stride=2 if (k == 0 and i > 0) else 1))
                inplanes = planes * EXPANSION
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # DECA: AvgPool2d(7, stride=1) on the 7x7 map of a 224 input == global mean
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of the trunk's state_dict and its shape (for checkpoints and tests),
    without building the module."""
    out: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.{k}"] = (c,)
        out[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    inplanes = 64
    for i, (n, planes) in enumerate(zip(LAYERS, PLANES)):
        for k in range(n):
            p = f"layer{i + 1}.{k}"
            o = planes * EXPANSION
            out[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            out[f"{p}.conv3.weight"] = (o, planes, 1, 1)
            bn(f"{p}.bn3", o)
            if k == 0:
                out[f"{p}.downsample.0.weight"] = (o, inplanes, 1, 1)
                bn(f"{p}.downsample.1", o)
            inplanes = o
    return out
