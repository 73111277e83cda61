"""The benchmark's torch models: four 1D CNN families, input `(N, 1, 224)`, 3 logits.

Every builder seeds itself, randomises its BatchNorm statistics (a fresh BN is
the identity in eval mode, which would flatter any converter) and returns the
net in eval mode, so a model is identical in every process that builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jaxjac.example.model import SpectraNet

LENGTH = 224
N_CLASSES = 3
SAMPLE_SHAPE = (1, LENGTH)


def randomize_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(1.0 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return net


def SeedCNN(width: int = 1) -> nn.Module:  # noqa: N802  (stands where a class would)
    """The seed's shape, the bundled example's network: three Conv-BN-ReLU-MaxPool(2) blocks, two linear layers.

    `width` multiplies the channels (8, 16, 16); `width=16` gives (128, 256, 256).
    """
    return SpectraNet(channels=(8 * width, 16 * width, 16 * width))


class BasicBlock1d(nn.Module):
    """The ResNet basic block; a strided or widening block gets a 1x1 conv + BN shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet1d(nn.Module):
    """A ResNet-18-style stem, three stages of two basic blocks, global average pooling."""

    def __init__(self, width: int = 16, blocks: tuple[int, ...] = (2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(1, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.MaxPool1d(3, stride=2, padding=1),
        )
        stages, c_in = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                stages.append(BasicBlock1d(c_in, c_out, stride=2 if i > 0 and j == 0 else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(F.adaptive_avg_pool1d(x, 1).flatten(1))


class InceptionModule(nn.Module):
    """Bottleneck, three 'same' convolutions (kernels 9/19/39) and a max-pool branch, concatenated."""

    def __init__(self, c_in: int, filters: int, bottleneck: int) -> None:
        super().__init__()
        self.bottleneck = nn.Conv1d(c_in, bottleneck, 1, bias=False)
        self.convs = nn.ModuleList([nn.Conv1d(bottleneck, filters, k, padding="same", bias=False) for k in (9, 19, 39)])
        self.pool_conv = nn.Sequential(nn.MaxPool1d(3, stride=1, padding=1), nn.Conv1d(c_in, filters, 1, bias=False))
        self.bn = nn.BatchNorm1d(4 * filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bottleneck(x)
        return F.relu(self.bn(torch.cat([conv(z) for conv in self.convs] + [self.pool_conv(x)], dim=1)))


class InceptionTime(nn.Module):
    """InceptionTime-style: three inception modules with a residual shortcut, GAP, linear head."""

    def __init__(self, filters: int = 8, bottleneck: int = 8, depth: int = 3) -> None:
        super().__init__()
        out = 4 * filters
        self.inception = nn.Sequential(
            *[InceptionModule(1 if i == 0 else out, filters, bottleneck) for i in range(depth)]
        )
        self.residual = nn.Sequential(nn.Conv1d(1, out, 1, bias=False), nn.BatchNorm1d(out))
        self.fc = nn.Linear(out, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.inception(x) + self.residual(x))
        return self.fc(F.adaptive_avg_pool1d(x, 1).flatten(1))


@dataclass(frozen=True)
class BenchModel:
    """A benchmark model: a builder and a one-line description for the report."""

    build: Callable[[], nn.Module]
    description: str


MODELS: dict[str, BenchModel] = {
    "seed-cnn": BenchModel(lambda: SeedCNN(width=1), "the seed's CNN: 3x(Conv-BN-ReLU-MaxPool), channels 8/16/16"),
    "resnet1d": BenchModel(lambda: ResNet1d(width=16), "ResNet1d: stem + 3 stages x 2 basic blocks, width 16-64"),
    "inceptiontime": BenchModel(lambda: InceptionTime(), "InceptionTime: 3 modules (k 9/19/39), 32 channels"),
    "wide-cnn": BenchModel(lambda: SeedCNN(width=8), "the seed's CNN 8x wider: channels 64/128/128"),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The named benchmark model, seeded, with random BatchNorm statistics, in eval mode."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    torch.manual_seed(seed)
    return randomize_batchnorm(MODELS[name].build(), seed).eval()


def build_width(width: int, seed: int = 0) -> nn.Module:
    """The seed CNN with every channel count multiplied by `width`, for the width-scaling curve."""
    torch.manual_seed(seed)
    return randomize_batchnorm(SeedCNN(width=width), seed).eval()


def n_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
