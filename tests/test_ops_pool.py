"""Pooling lowerings against torch autograd: max/avg pools with every option, adaptive pools, indices."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_converts, precision

import jaxjac
from jaxjac.converters import pool

DTYPES = ("float32", "float64")
CHANNELS = 2


class Functional(nn.Module):
    """Runs `fn(x)` in forward, so functional pooling is exported."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def gather_at_indices(pool_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """A model that uses a pool's indices: the values plus the input gathered at the indices."""
    return Functional(lambda x: (lambda v, i: v + 2 * x.gather(-1, i))(*pool_fn(x)))


# name: (net factory, length). Lengths are picked so that ceil_mode adds a
# window and that window runs past the padded input where that matters.
CASES = {
    "max-k2": (lambda: nn.MaxPool1d(2), 17),
    "max-k3-s1": (lambda: nn.MaxPool1d(3, stride=1), 12),
    # Stride 1 reads shifted slices, not a gather (see `_shifted_windows`).
    "max-k3-s1-p1-indices-used": (
        lambda: gather_at_indices(lambda x: F.max_pool1d(x, 3, 1, 1, return_indices=True)),
        12,
    ),
    "max-k5-s1-p2-dilation2-indices-used": (
        lambda: gather_at_indices(lambda x: F.max_pool1d(x, 5, 1, 2, dilation=2, return_indices=True)),
        13,
    ),
    "max-k3-s2-p1": (lambda: nn.MaxPool1d(3, stride=2, padding=1), 16),
    "max-k4-s3-p2-ceil": (lambda: nn.MaxPool1d(4, stride=3, padding=2, ceil_mode=True), 11),
    "max-k2-ceil-odd": (lambda: nn.MaxPool1d(2, ceil_mode=True), 13),
    "max-k3-s2-p1-dilation2": (lambda: nn.MaxPool1d(3, stride=2, padding=1, dilation=2), 15),
    "max-k3-s3-p1-dilation2-ceil": (lambda: nn.MaxPool1d(3, stride=3, padding=1, dilation=2, ceil_mode=True), 14),
    "max-functional": (lambda: Functional(lambda x: F.max_pool1d(x, 3, 2, 1, ceil_mode=True)), 14),
    "max-indices-used": (
        lambda: gather_at_indices(lambda x: F.max_pool1d(x, 3, 2, 1, dilation=2, ceil_mode=True, return_indices=True)),
        14,
    ),
    "avg-k2": (lambda: nn.AvgPool1d(2), 17),
    "avg-k3-s2-p1": (lambda: nn.AvgPool1d(3, stride=2, padding=1), 16),
    "avg-k3-s2-p1-exclude-pad": (lambda: nn.AvgPool1d(3, stride=2, padding=1, count_include_pad=False), 16),
    "avg-k4-s3-p2-ceil": (lambda: nn.AvgPool1d(4, stride=3, padding=2, ceil_mode=True), 11),
    "avg-k4-s3-p2-ceil-exclude-pad": (
        lambda: nn.AvgPool1d(4, stride=3, padding=2, ceil_mode=True, count_include_pad=False),
        11,
    ),
    "avg-k3-s2-ceil-no-pad": (lambda: nn.AvgPool1d(3, stride=2, ceil_mode=True), 12),
    "avg-functional": (lambda: Functional(lambda x: F.avg_pool1d(x, 5, 3, 2, ceil_mode=True)), 15),
    "avg-divisor-override": (
        lambda: Functional(lambda x: F.avg_pool2d(x[:, :, None], (1, 3), (1, 2), (0, 1), divisor_override=2)[:, :, 0]),
        13,
    ),
    "lp-pool": (lambda: nn.LPPool1d(2, 3, stride=2), 13),
    "adaptive-avg-5-of-12": (lambda: nn.AdaptiveAvgPool1d(5), 12),
    "adaptive-avg-7-of-10": (lambda: nn.AdaptiveAvgPool1d(7), 10),
    "adaptive-avg-4-of-12": (lambda: nn.AdaptiveAvgPool1d(4), 12),
    "adaptive-avg-1": (lambda: nn.AdaptiveAvgPool1d(1), 12),
    "adaptive-avg-15-of-10": (lambda: nn.AdaptiveAvgPool1d(15), 10),
    "adaptive-max-5-of-12": (lambda: nn.AdaptiveMaxPool1d(5), 12),
    "adaptive-max-7-of-10": (lambda: nn.AdaptiveMaxPool1d(7), 10),
    "adaptive-max-4-of-12": (lambda: nn.AdaptiveMaxPool1d(4), 12),
    "adaptive-max-1": (lambda: nn.AdaptiveMaxPool1d(1), 12),
    "adaptive-max-indices-used": (lambda: gather_at_indices(nn.AdaptiveMaxPool1d(7, return_indices=True)), 10),
    "adaptive-max-consecutive-windows-indices-used": (
        lambda: gather_at_indices(nn.AdaptiveMaxPool1d(8, return_indices=True)),
        9,
    ),
}


def _cases() -> list:
    return [
        pytest.param(make, length, dtype, id=f"{name}-{dtype}")
        for name, (make, length) in CASES.items()
        for dtype in DTYPES
    ]


@pytest.mark.parametrize(("make", "length", "dtype"), _cases())
def test_pool(make: Callable[[], nn.Module], length: int, dtype: str) -> None:
    assert_converts(make(), (CHANNELS, length), dtype, n=2)


# Cubes (C, D, H, W): hyperspectral patches or volumes, pooled over three axes at once.
CASES_3D = {
    "max3d-k2": lambda: nn.MaxPool3d(2),
    "max3d-k3-s2-p1-ceil": lambda: nn.MaxPool3d(3, stride=2, padding=1, ceil_mode=True),
    "max3d-indices-used": lambda: Functional(
        lambda x: (lambda v, i: v + 2 * x.flatten(2).gather(-1, i.flatten(2)).view_as(v))(
            *F.max_pool3d(x, (2, 3, 2), (1, 2, 2), return_indices=True)
        )
    ),
    "avg3d-k3-s2-p1-exclude-pad": lambda: nn.AvgPool3d(3, stride=2, padding=1, count_include_pad=False),
    "avg3d-k2-ceil": lambda: nn.AvgPool3d((2, 2, 3), ceil_mode=True),
    "adaptive-avg3d": lambda: nn.AdaptiveAvgPool3d((2, 3, 4)),
    "adaptive-max3d": lambda: nn.AdaptiveMaxPool3d((3, 2, 2)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", CASES_3D.values(), ids=CASES_3D.keys())
def test_pool_3d(make: Callable[[], nn.Module], dtype: str) -> None:
    assert_converts(make(), (2, 5, 6, 7), dtype, n=2)


TIED = np.round(np.random.default_rng(1).standard_normal((3, CHANNELS, 14)))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: nn.MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True), id="max-pool"),
        pytest.param(lambda: nn.AdaptiveMaxPool1d(5), id="adaptive-max-pool"),
    ],
)
def test_max_gradient_ties(make: Callable[[], nn.Module]) -> None:
    # Inputs rounded to integers tie within windows; torch sends each window's
    # gradient to its first maximum only, and so must the lowering.
    assert_converts(make(), TIED.shape[1:], "float64", x=TIED)


# torch's call, and the lowering's call on the `(N, C, 1, L)` form with the
# arguments torch.export records for it.
INDEX_CASES = {
    "max-dilation2-ceil": (
        lambda x: F.max_pool1d(x, 3, 2, 1, dilation=2, ceil_mode=True, return_indices=True),
        lambda x: pool.max_pool_with_indices(x, (1, 3), (1, 2), (0, 1), (1, 2), True),
    ),
    "max-default-stride": (
        lambda x: F.max_pool1d(x, 2, return_indices=True),
        lambda x: pool.max_pool_with_indices(x, (1, 2), ()),
    ),
    "max-ceil-past-padding": (
        lambda x: F.max_pool1d(x, 4, 3, 2, ceil_mode=True, return_indices=True),
        lambda x: pool.max_pool_with_indices(x, (1, 4), (1, 3), (0, 2), (1, 1), True),
    ),
    "adaptive-max-4-of-11": (
        lambda x: F.adaptive_max_pool1d(x, 4, return_indices=True),
        lambda x: pool.adaptive_max_pool(x, (1, 4)),
    ),
}


@pytest.mark.parametrize(("torch_fn", "lowering"), list(INDEX_CASES.values()), ids=list(INDEX_CASES))
def test_indices_match_torch_with_ties_and_nan(torch_fn: Callable, lowering: Callable) -> None:
    # Rounded inputs tie within windows, where torch's index is the first
    # maximum; a NaN wins its windows.
    x = torch.as_tensor(np.round(np.random.default_rng(2).standard_normal((2, 3, 11)) * 0.7))
    x[0, 1, 4] = float("nan")
    values, indices = torch_fn(x)
    with precision("float64"):
        actual_values, actual_indices = (np.asarray(a)[:, :, 0] for a in lowering(x[:, :, None].numpy()))
    np.testing.assert_array_equal(actual_indices, indices.numpy())
    np.testing.assert_array_equal(actual_values, values.numpy())


def test_conv_pool_stack_both_jacobian_methods() -> None:
    # The lowerings must batch under either Jacobian formulation (float64
    # only: each method compiles the whole stack again).
    net = nn.Sequential(
        nn.Conv1d(CHANNELS, 4, 3, padding=2, padding_mode="reflect", groups=2),
        nn.MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
        nn.ConvTranspose1d(4, 2, 3, stride=2, output_padding=1),
        nn.AvgPool1d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        nn.AdaptiveMaxPool1d(3),
    )
    assert_converts(net, (CHANNELS, 13), "float64", n=2, methods=("vmap-jacrev", "batched-vjp"))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: nn.MaxPool1d(3, stride=2, padding=1), id="resnet-stem-k3-s2-p1"),
        pytest.param(lambda: nn.MaxPool1d(3, stride=1, padding=1), id="inception-k3-s1-p1"),
        pytest.param(lambda: nn.MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True), id="dilated-ceil"),
    ],
)
def test_windows_at_a_regular_step_differentiate_without_a_scatter(make: Callable[[], nn.Module]) -> None:
    # Overlapping windows at any stride are strided slices of the padded input,
    # whose gradient is a pad; a gather's gradient is a scatter-add, which XLA's
    # CPU backend runs several times slower.
    model = jaxjac.convert(make().eval(), torch.zeros(1, CHANNELS, 16), check=False)
    jacobian = jaxjac.jacobian_fn(model, target="all")
    hlo = jax.jit(jacobian).lower(jnp.zeros((2, CHANNELS, 16))).compile().as_text()
    assert " scatter(" not in hlo
    assert " gather(" not in hlo
