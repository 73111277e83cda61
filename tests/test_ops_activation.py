"""Activations and (log-)softmax against torch autograd, including gradients at the kinks.

Inputs are standard normal times 3, so that the piecewise activations
(Hardswish at +-3, Softplus' threshold, Hardtanh's bounds) see both sides.
"""

from __future__ import annotations

import helpers
import jax
import numpy as np
import pytest
import torch
from helpers import assert_converts
from torch import nn

import jaxjac

DTYPES = ("float32", "float64")
C, L = 3, 5


def _prelu(channels: int) -> nn.PReLU:
    """PReLU with distinct, partly negative slopes, so a lowering that ignores them fails."""
    module = nn.PReLU(channels)
    with torch.no_grad():
        module.weight.copy_(torch.linspace(-0.4, 0.6, channels))
    return module


ACTIVATIONS = {
    "relu": lambda: nn.ReLU(),
    "relu6": lambda: nn.ReLU6(),
    "leaky_relu-0.01": lambda: nn.LeakyReLU(),
    "leaky_relu-0.3": lambda: nn.LeakyReLU(0.3),
    "prelu-single": lambda: _prelu(1),
    "prelu-per-channel": lambda: _prelu(C),
    "elu-0.5": lambda: nn.ELU(0.5),
    "celu-0.7": lambda: nn.CELU(0.7),
    "selu": lambda: nn.SELU(),
    "gelu": lambda: nn.GELU(),
    "gelu-tanh": lambda: nn.GELU("tanh"),
    "silu": lambda: nn.SiLU(),
    "mish": lambda: nn.Mish(),
    "hardswish": lambda: nn.Hardswish(),
    "hardsigmoid": lambda: nn.Hardsigmoid(),
    "hardtanh-custom": lambda: nn.Hardtanh(-0.5, 2.0),
    "rrelu": lambda: nn.RReLU(0.1, 0.4),
    "softplus": lambda: nn.Softplus(),
    "softplus-beta2-threshold3": lambda: nn.Softplus(beta=2.0, threshold=3.0),
    "softsign": lambda: nn.Softsign(),
    "tanh": lambda: nn.Tanh(),
    "sigmoid": lambda: nn.Sigmoid(),
    "logsigmoid": lambda: nn.LogSigmoid(),
    "softmax-1": lambda: nn.Softmax(dim=1),
    "softmax--1": lambda: nn.Softmax(dim=-1),
    "log_softmax-1": lambda: nn.LogSoftmax(dim=1),
    "log_softmax--1": lambda: nn.LogSoftmax(dim=-1),
}


# torch's float64 backward kernels for these use float32 constants
# (hardsigmoid_backward multiplies by 1.0f / 6.0f; celu's derivative uses
# 1.0 / alpha.toFloat()), so torch itself is only float32-accurate there: its
# Hardsigmoid slope is 0.1666666716 in float64.
TORCH_FLOAT32_CONSTANTS = {"hardsigmoid", "celu-0.7", "celu"}


def _inputs(n: int = 2) -> np.ndarray:
    return 3.0 * np.random.default_rng(0).standard_normal((n, C, L))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(name: str, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if name in TORCH_FLOAT32_CONSTANTS:
        monkeypatch.setitem(helpers.RTOL, "float64", 1e-7)
    assert_converts(ACTIVATIONS[name](), (C, L), dtype, x=_inputs())


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_between_layers(dtype: str) -> None:
    # The usual placement: a conv feeding the activation, a linear reading it.
    net = nn.Sequential(nn.Conv1d(2, C, 3), nn.GELU(), nn.Flatten(), nn.Linear(C * (L - 2), 4), nn.Softmax(-1))
    assert_converts(net, (2, L), dtype)


class Clamp(nn.Module):
    """`torch.clamp` as a module; its gradient at the bounds is 1, unlike Hardtanh's 0."""

    def __init__(self, low: float | None, high: float | None) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.low, self.high)


# Modules and the points where their derivative jumps; torch picks one side.
# Hardswish and Hardsigmoid stay whole in jaxjac's export, so their kinks
# follow torch's fused backward kernels, not a clamp chain.
KINKS = {
    "hardswish": (lambda: nn.Hardswish(), [-3.0, 3.0]),
    "hardsigmoid": (lambda: nn.Hardsigmoid(), [-3.0, 3.0]),
    "relu": (lambda: nn.ReLU(), [0.0]),
    "relu6": (lambda: nn.ReLU6(), [0.0, 6.0]),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), [0.0]),
    "prelu": (lambda: _prelu(C), [0.0]),
    "hardtanh": (lambda: nn.Hardtanh(-0.5, 2.0), [-0.5, 2.0]),
    "elu": (lambda: nn.ELU(0.5), [0.0]),
    "celu": (lambda: nn.CELU(0.7), [0.0]),
    "clamp": (lambda: Clamp(-0.5, 2.0), [-0.5, 2.0]),
    "clamp_min": (lambda: Clamp(0.0, None), [0.0]),
    "clamp_max": (lambda: Clamp(None, 1.0), [1.0]),
}


@pytest.mark.parametrize("name", list(KINKS))
def test_gradient_at_kinks(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exactly at the kinks the Jacobian must take torch's side, in float64."""
    if name in TORCH_FLOAT32_CONSTANTS:
        monkeypatch.setitem(helpers.RTOL, "float64", 1e-7)
    make, points = KINKS[name]
    x = _inputs(1)
    flat = x.reshape(-1)
    flat[: 2 * len(points)] = np.repeat(points, 2)  # every kink, twice, plus random values
    assert_converts(make(), (C, L), "float64", x=x)


# Activations torch exports as `where(x > threshold, x, f(exp(x)))`: the
# unused branch overflows for large inputs and must not turn the Jacobian NaN.
SATURATING = {
    "softplus": lambda: nn.Softplus(),
    "mish": lambda: nn.Mish(),
    "celu": lambda: nn.CELU(0.7),
    "elu": lambda: nn.ELU(),
    "silu": lambda: nn.SiLU(),
    "logsigmoid": lambda: nn.LogSigmoid(),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(SATURATING))
def test_large_inputs_keep_finite_jacobians(name: str, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if name == "celu":
        monkeypatch.setitem(helpers.RTOL, "float64", 1e-7)  # torch's float32 constant, as above
    x = _inputs(1)
    x.reshape(-1)[:4] = [100.0, -100.0, 800.0, -800.0]  # past exp's overflow in float32 and float64
    assert_converts(SATURATING[name](), (C, L), dtype, x=x)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_nan_inputs_give_what_torch_gives(name: str) -> None:
    # A NaN must not turn into a finite output (relu(NaN) = 0 would hide bad data).
    net = ACTIVATIONS[name]().double().eval()
    x = _inputs(1)
    x.reshape(-1)[[0, 7]] = np.nan
    expected = net(torch.as_tensor(x)).detach().numpy()
    with jax.enable_x64(True):
        model = jaxjac.convert(net, torch.as_tensor(_inputs(1)), dtype="float64", check=False)
        actual = np.asarray(model(x))
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
