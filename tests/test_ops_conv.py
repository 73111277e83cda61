"""Convolution lowerings against torch autograd: every Conv1d/ConvTranspose1d option, F.conv1d and F.pad."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_converts

DTYPES = ("float32", "float64")
CHANNELS, LENGTH = 3, 17
SAMPLE = (CHANNELS, LENGTH)


class Functional(nn.Module):
    """Runs `fn(x, weight, bias)` in forward, so functional ops with parameters are exported."""

    def __init__(self, fn: Callable[..., torch.Tensor], weight_shape: tuple[int, ...] = (), bias: int = 0):
        super().__init__()
        self.fn = fn
        self.weight = nn.Parameter(torch.randn(weight_shape)) if weight_shape else None
        self.bias = nn.Parameter(torch.randn(bias)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.weight, self.bias)


CONV1D = {
    "stride2-pad1": dict(out_channels=4, kernel_size=3, stride=2, padding=1),
    "stride3-pad4-k5": dict(out_channels=2, kernel_size=5, stride=3, padding=4),
    "dilation2-pad3-stride2": dict(out_channels=4, kernel_size=4, dilation=2, padding=3, stride=2),
    "same-odd": dict(out_channels=4, kernel_size=5, padding="same"),
    "same-even": dict(out_channels=4, kernel_size=4, padding="same"),
    "same-even-dilation3": dict(out_channels=4, kernel_size=4, padding="same", dilation=3),
    "valid": dict(out_channels=4, kernel_size=6, padding="valid"),
    "reflect-stride2-dilation2": dict(
        out_channels=4, kernel_size=3, padding=3, padding_mode="reflect", stride=2, dilation=2
    ),
    "replicate": dict(out_channels=4, kernel_size=3, padding=3, padding_mode="replicate"),
    "circular-dilation2-stride2": dict(
        out_channels=4, kernel_size=3, padding=4, padding_mode="circular", dilation=2, stride=2
    ),
    "same-even-reflect": dict(out_channels=4, kernel_size=4, padding="same", padding_mode="reflect"),
    "same-replicate-dilation2": dict(
        out_channels=4, kernel_size=3, padding="same", padding_mode="replicate", dilation=2
    ),
    "same-even-circular": dict(out_channels=4, kernel_size=6, padding="same", padding_mode="circular"),
    "groups3": dict(out_channels=6, kernel_size=3, groups=3, padding=1),
    "depthwise": dict(out_channels=3, kernel_size=3, groups=3),
    "depthwise-multiplier2": dict(out_channels=6, kernel_size=5, groups=3, padding="same"),
    "no-bias": dict(out_channels=4, kernel_size=3, bias=False),
    "everything": dict(
        out_channels=6, kernel_size=4, stride=2, padding=3, dilation=2, groups=3, bias=False, padding_mode="replicate"
    ),
}

CONV_TRANSPOSE1D = {
    "stride2-pad1-outpad1": dict(out_channels=4, kernel_size=3, stride=2, padding=1, output_padding=1),
    "stride3-outpad2-k4": dict(out_channels=2, kernel_size=4, stride=3, output_padding=2),
    "dilation3-outpad2": dict(out_channels=4, kernel_size=2, dilation=3, stride=2, output_padding=2),
    "pad-beyond-kernel": dict(out_channels=4, kernel_size=3, stride=3, padding=3),
    "groups3": dict(out_channels=6, kernel_size=3, groups=3, stride=2),
    "depthwise": dict(out_channels=3, kernel_size=4, groups=3, stride=2, padding=1),
    "no-bias": dict(out_channels=4, kernel_size=3, stride=2, bias=False),
    "everything": dict(
        out_channels=6, kernel_size=3, stride=2, padding=2, output_padding=1, groups=3, dilation=2, bias=False
    ),
}

FUNCTIONAL = {
    "conv1d-stride-dilation-groups": lambda: Functional(
        lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=2, dilation=2, groups=3), (6, 1, 3), bias=6
    ),
    "conv1d-same-even": lambda: Functional(lambda x, w, b: F.conv1d(x, w, b, padding="same"), (4, 3, 4), bias=4),
    "conv-transpose1d": lambda: Functional(
        lambda x, w, b: F.conv_transpose1d(x, w, b, stride=2, padding=1, output_padding=1, groups=3, dilation=2),
        (3, 2, 3),
        bias=6,
    ),
    "pad-constant": lambda: Functional(lambda x, w, b: F.pad(x, (2, 3), mode="constant", value=1.5) * 2),
    "pad-constant-crop": lambda: Functional(lambda x, w, b: F.pad(x, (-2, 3)) * 2),
    "pad-reflect": lambda: Functional(lambda x, w, b: F.pad(x, (1, 4), mode="reflect") * 2),
    "pad-replicate": lambda: Functional(lambda x, w, b: F.pad(x, (3, 1), mode="replicate") * 2),
    "pad-circular": lambda: Functional(lambda x, w, b: F.pad(x, (1, 3), mode="circular") * 2),
    "pad-reflect-conv-stack": lambda: nn.Sequential(
        nn.ReflectionPad1d((2, 1)),
        nn.Conv1d(3, 4, 4),
        nn.ReplicationPad1d(1),
        nn.Tanh(),
        nn.CircularPad1d((1, 2)),
        nn.Conv1d(4, 2, 3, stride=2),
    ),
}


def _cases(table: dict, make: Callable) -> list:
    """`(make_net, dtype)` params named `option-dtype`, every option in both dtypes."""
    return [
        pytest.param(make(options), dtype, id=f"{name}-{dtype}") for name, options in table.items() for dtype in DTYPES
    ]


# torch warns that it copies the input to pad an even 'same' kernel; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")


@pytest.mark.parametrize(("make", "dtype"), _cases(CONV1D, lambda o: lambda: nn.Conv1d(CHANNELS, **o)))
def test_conv1d(make: Callable[[], nn.Module], dtype: str) -> None:
    assert_converts(make(), SAMPLE, dtype, n=2)


@pytest.mark.parametrize(
    ("make", "dtype"), _cases(CONV_TRANSPOSE1D, lambda o: lambda: nn.ConvTranspose1d(CHANNELS, **o))
)
def test_conv_transpose1d(make: Callable[[], nn.Module], dtype: str) -> None:
    assert_converts(make(), SAMPLE, dtype, n=2)


@pytest.mark.parametrize(("make", "dtype"), _cases(FUNCTIONAL, lambda f: f))
def test_functional(make: Callable[[], nn.Module], dtype: str) -> None:
    assert_converts(make(), SAMPLE, dtype, n=2)
