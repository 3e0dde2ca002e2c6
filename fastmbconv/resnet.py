"""A plain ResNet-50, the FLOPs anchor of the benchmarks.

The benchmarks use torchvision's ``resnet50`` when torchvision imports; this module is the
stand-in when it does not (CPU-only machines often lack a matching torchvision build). It is the
same network as torchvision's (bottleneck blocks with the stride on the 3x3 conv, "ResNet v1.5"),
with the same parameter count, 25,557,032, and the same FLOPs, so timings compare like for like.
Weights are randomly initialised; only speed is measured with it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESNET50_PARAMS = 25_557_032


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4; BN after each; ReLU; shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + shortcut)


class ResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000, in_chans: int = 3):
        super().__init__()
        self.in_chans = in_chans
        self.default_resolution = 224
        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, in_ch = [], 64
        for i, (repeats, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = []
            for j in range(repeats):
                blocks.append(Bottleneck(in_ch, width, stride=2 if (j == 0 and i > 0) else 1))
                in_ch = width * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 with torchvision's layout and parameter count (random weights)."""
    return ResNet((3, 4, 6, 3), num_classes)


def resnet50_anchor(prefer_torchvision: bool = True) -> tuple[nn.Module, str]:
    """(model, source): torchvision's ``resnet50`` if it imports, else :func:`resnet50`."""
    if prefer_torchvision:
        try:
            import torchvision  # noqa: F401
            from torchvision.models import resnet50 as tv_resnet50

            model = tv_resnet50(weights=None)
            model.default_resolution = 224
            return model, "torchvision"
        except Exception:  # not installed, or built against another torch
            pass
    return resnet50(), "fastmbconv.resnet"
