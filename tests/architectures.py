"""A zoo of small, realistic 1D architectures, written the way research code writes them.

Every model takes a batch `(N, *sample_shape)` and returns logits `(N, n_classes)`.
They are deliberately tiny (a handful of channels) so that the per-sample
torch reference stays fast, but each one keeps the structure of its family:
`nn.Sequential` blocks, residual additions in `forward`, `torch.cat` of parallel
branches, functional calls (`F.relu`, `F.pad`, `F.adaptive_avg_pool1d`) and
library layers (`nn.LSTM`, `nn.TransformerEncoderLayer`, weight norm).

`ARCHITECTURES` maps a test id to `(builder, sample_shape)`; builders take
no arguments and seed themselves, so a model is the same in every test.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from jaxjac.example.model import SpectraNet

N_CLASSES = 3
LENGTH = 224


def randomize_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters.

    Freshly built BatchNorms have mean 0, variance 1, weight 1 and bias 0, so
    eval-mode BN is the identity and a wrong lowering would go unnoticed.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                if m.affine:
                    m.weight.copy_(1.0 + 0.3 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return net


# --- (1) the user's plain CNN ------------------------------------------------


# The bundled example's network, as users write it (3 x Conv-BN-ReLU-MaxPool, 2 linear layers).
def SpectraCNN() -> nn.Module:  # noqa: N802  (stands where a class would)
    return SpectraNet(channels=(4, 8, 8))


# --- (2) ResNet1d ------------------------------------------------------------


class BasicBlock1d(nn.Module):
    """The ResNet basic block; a strided block gets a 1x1 conv + BN shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(planes)
        self.conv2 = nn.Conv1d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv1d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm1d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet1d(nn.Module):
    """A ResNet-18-style stem and stages, global average pooling, linear head.

    Input `(N, 1, 224)` -> logits `(N, 3)`.
    """

    def __init__(self, num_blocks: tuple[int, ...] = (1, 1, 1), width: int = 4, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv1d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.maxpool = nn.MaxPool1d(kernel_size=3, stride=2, padding=1)
        layers = []
        for i, n in enumerate(num_blocks):
            layers.append(self._make_layer(width * 2**i, n, stride=1 if i == 0 else 2))
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(self.in_planes, n_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(BasicBlock1d(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        x = self.avgpool(x)
        return self.fc(torch.flatten(x, 1))


# --- (3) InceptionTime -------------------------------------------------------


class InceptionModule(nn.Module):
    """Bottleneck, three 'same' convs (kernels 9/19/39) and a maxpool branch, concatenated."""

    def __init__(self, in_channels: int, n_filters: int = 2, bottleneck: int = 2) -> None:
        super().__init__()
        self.bottleneck = nn.Conv1d(in_channels, bottleneck, kernel_size=1, bias=False)
        self.convs = nn.ModuleList(
            [nn.Conv1d(bottleneck, n_filters, kernel_size=k, padding="same", bias=False) for k in (9, 19, 39)]
        )
        self.maxconvpool = nn.Sequential(
            nn.MaxPool1d(kernel_size=3, stride=1, padding=1),
            nn.Conv1d(in_channels, n_filters, kernel_size=1, bias=False),
        )
        self.bn = nn.BatchNorm1d(4 * n_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bottleneck(x)
        branches = [conv(z) for conv in self.convs] + [self.maxconvpool(x)]
        return F.relu(self.bn(torch.cat(branches, dim=1)))


class InceptionTime(nn.Module):
    """Two inception modules with a residual shortcut around them, GAP, linear head.

    Input `(N, 1, 224)` -> logits `(N, 3)`.
    """

    def __init__(self, n_filters: int = 2, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        out = 4 * n_filters
        self.inception = nn.Sequential(InceptionModule(1, n_filters), InceptionModule(out, n_filters))
        self.residual = nn.Sequential(nn.Conv1d(1, out, kernel_size=1, bias=False), nn.BatchNorm1d(out))
        self.fc = nn.Linear(out, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.inception(x) + self.residual(x))
        x = F.adaptive_avg_pool1d(x, 1).squeeze(-1)
        return self.fc(x)


# --- (4) TCN ---------------------------------------------------------------------


class Chomp1d(nn.Module):
    """Drops the last `chomp` steps, turning symmetric padding into causal padding."""

    def __init__(self, chomp: int) -> None:
        super().__init__()
        self.chomp = chomp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.chomp].contiguous()


class TemporalBlock(nn.Module):
    """Two weight-normed dilated causal convs, one causal by chomping and one by left `F.pad`."""

    def __init__(self, n_in: int, n_out: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        pad = (kernel_size - 1) * dilation
        self.conv1 = parametrizations.weight_norm(nn.Conv1d(n_in, n_out, kernel_size, padding=pad, dilation=dilation))
        self.chomp1 = Chomp1d(pad)
        self.conv2 = parametrizations.weight_norm(nn.Conv1d(n_out, n_out, kernel_size, dilation=dilation))
        self.left_pad = pad
        self.dropout = nn.Dropout(0.2)
        self.downsample = nn.Conv1d(n_in, n_out, 1) if n_in != n_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(F.relu(self.chomp1(self.conv1(x))))
        out = self.dropout(F.relu(self.conv2(F.pad(out, (self.left_pad, 0)))))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class TCN(nn.Module):
    """A temporal convolutional network with dilations 1, 2, 4; classifies from the last step.

    Input `(N, 1, 224)` -> logits `(N, 3)`.
    """

    def __init__(self, channels: tuple[int, ...] = (4, 4, 4), kernel_size: int = 3, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        blocks = []
        for i, c in enumerate(channels):
            blocks.append(TemporalBlock(1 if i == 0 else channels[i - 1], c, kernel_size, dilation=2**i))
        self.network = nn.Sequential(*blocks)
        self.linear = nn.Linear(channels[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.network(x)
        return self.linear(y[:, :, -1])


# --- (5) CNN-LSTM ----------------------------------------------------------------


class CNNLSTM(nn.Module):
    """Conv feature extractor, then an LSTM over the downsampled sequence; last step -> linear.

    Input `(N, 1, 224)` -> logits `(N, 3)`.
    """

    def __init__(self, channels: int = 4, hidden: int = 6, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size=5, padding=2),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.MaxPool1d(4),
            nn.Conv1d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool1d(8),
        )
        self.lstm = nn.LSTM(input_size=channels, hidden_size=hidden, num_layers=1, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cnn(x)  # (N, C, 7): a short sequence keeps the unrolled LSTM small
        x = x.permute(0, 2, 1)  # (N, 7, C): batch_first LSTM wants time second
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


# --- (6) conv + attention --------------------------------------------------------


class ConvTransformer(nn.Module):
    """A strided conv stem, learned positions, one Transformer encoder layer, mean pooling.

    Input `(N, 1, 224)` -> logits `(N, 3)`.
    """

    def __init__(self, d_model: int = 8, n_heads: int = 2, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(1, d_model, kernel_size=8, stride=8),
            nn.BatchNorm1d(d_model),
            nn.GELU(),
        )
        self.pos = nn.Parameter(0.1 * torch.randn(1, LENGTH // 8, d_model))
        self.encoder = nn.TransformerEncoderLayer(
            d_model=d_model, nhead=n_heads, dim_feedforward=16, dropout=0.1, batch_first=True
        )
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).transpose(1, 2) + self.pos  # (N, 28, d_model)
        x = self.encoder(x)
        return self.head(x.mean(dim=1))


# --- extras ---------------------------------------------------------------------


class FlatInputCNN(nn.Module):
    """Takes spectra as `(N, 224)` and adds the channel axis itself.

    Input `(N, 224)` -> logits `(N, 3)`; the Jacobian rows are `(224,)`.
    """

    def __init__(self, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, kernel_size=9, stride=2, padding=4)
        self.bn = nn.BatchNorm1d(4)
        self.pool = nn.AvgPool1d(4)
        self.fc = nn.Linear(4 * 28, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        x = self.pool(torch.tanh(self.bn(self.conv(x))))
        return self.fc(x.view(x.size(0), -1))


class ModernConvNet(nn.Module):
    """GroupNorm + SiLU stem, a depthwise-separable block with LayerNorm and GELU (ConvNeXt-ish).

    Input `(N, 1, 224)` -> logits `(N, 3)`.
    """

    def __init__(self, dim: int = 8, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(1, dim, kernel_size=4, stride=4), nn.GroupNorm(2, dim), nn.SiLU())
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(2 * dim, dim)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 1)  # (N, L, C): LayerNorm and Linear act on channels last
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = shortcut + x.permute(0, 2, 1)
        return self.head(x.mean(-1))


class RevINPatchNet(nn.Module):
    """RevIN (each sample normalised by its own detached mean and std, as PatchTST does), patches, MLP.

    No gradient flows through the statistics (`.detach()` on one, `torch.no_grad()`
    around the other): the Jacobian differs from that of the same net without them.
    Input `(N, 1, 224)` -> logits `(N, 3)`.
    """

    def __init__(self, patch: int = 16, dim: int = 12, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.patches = nn.Conv1d(1, dim, kernel_size=patch, stride=patch)
        self.mlp = nn.Sequential(nn.GELU(), nn.Flatten(), nn.Linear(dim * (LENGTH // patch), n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True).detach()
        with torch.no_grad():  # the other way to say it
            std = torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5)
        return self.mlp(self.patches((x - mean) / std))


def _seeded(cls: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(seed)
        net = randomize_batchnorm(cls(), seed)
        return net.eval()

    build.__name__ = f"build_{cls.__name__}"
    return build


ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "spectra-cnn": (_seeded(SpectraCNN, 1), (1, LENGTH)),
    "resnet1d": (_seeded(ResNet1d, 2), (1, LENGTH)),
    "inception-time": (_seeded(InceptionTime, 3), (1, LENGTH)),
    "tcn": (_seeded(TCN, 4), (1, LENGTH)),
    "cnn-lstm": (_seeded(CNNLSTM, 5), (1, LENGTH)),
    "conv-transformer": (_seeded(ConvTransformer, 6), (1, LENGTH)),
    "flat-input-cnn": (_seeded(FlatInputCNN, 7), (LENGTH,)),
    "modern-convnet": (_seeded(ModernConvNet, 8), (1, LENGTH)),
    "revin-patch-mlp": (_seeded(RevINPatchNet, 9), (1, LENGTH)),
}
