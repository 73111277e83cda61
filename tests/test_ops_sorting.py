"""Order statistics against torch: sort, topk, median, kthvalue, quantile, running extrema and products.

Each case is a small function of the input batch `(1, C, L)`; outputs and
Jacobians are compared with torch autograd in float32 and float64. Standard
normal inputs have no ties, so every Jacobian row is well defined.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from helpers import Fn, assert_converts

from jaxjac import convert

DTYPES = ("float32", "float64")
C, L = 3, 8


_BUCKETS = torch.tensor([0, 2, 2, 0, 3, 3, 3, 0])  # bucket 1 is reached by no step

CASES = {
    "sort": lambda x: torch.sort(x, dim=-1)[0] * torch.arange(L),
    "sort-descending-dim1": lambda x: torch.sort(x, dim=1, descending=True)[0][:, :2],
    "sort-stable": lambda x: torch.sort(x, stable=True, dim=-1)[0][..., 1:4],
    "sort-indices-gather": lambda x: torch.gather(x * 2, -1, torch.sort(x[:, :1], dim=-1)[1].expand(-1, C, -1)),
    "topk": lambda x: torch.topk(x, 3, dim=-1)[0] * torch.tensor([3.0, 2.0, 1.0]),
    "topk-smallest-dim1": lambda x: torch.topk(x, 2, dim=1, largest=False)[0],
    "topk-indices": lambda x: x.flatten(1)[:, torch.topk(x[0, 0], 2)[1]],
    "median-dim": lambda x: x.median(dim=-1).values + x.median(dim=1, keepdim=True).values.sum(-1),
    "median-even": lambda x: x[..., :6].median(dim=-1)[0],
    "median-all": lambda x: x.median() * x,
    "nanmedian-dim": lambda x: x.nanmedian(dim=-1).values + torch.nanmedian(x, dim=1, keepdim=True)[0].sum(-1),
    "nanmedian-all": lambda x: x.nanmedian() * x,
    "kthvalue": lambda x: x.kthvalue(3, dim=-1).values + x.kthvalue(1, dim=1, keepdim=True)[0].mean(-1),
    "quantile": lambda x: torch.quantile(x, torch.tensor([0.1, 0.5, 0.9], dtype=x.dtype), dim=-1).permute(1, 2, 0),
    "nanquantile": lambda x: torch.nanquantile(x, 0.3, dim=-1),
    "cummax": lambda x: torch.cummax(x, dim=-1).values,
    "cummin-dim1": lambda x: torch.cummin(x, dim=1)[0],
    "cumprod": lambda x: torch.cumprod(x, dim=-1),
    "logcumsumexp": lambda x: torch.logcumsumexp(x, dim=-1),
    "mode": lambda x: torch.mode(x, dim=-1).values + x.mode(1, keepdim=True)[0].sum(-1),
    # Segment reductions: `scatter_reduce` of the time steps into buckets, with and without the base.
    **{
        f"scatter-reduce-{reduce}{'' if include_self else '-alone'}": (
            lambda x, reduce=reduce, include_self=include_self: torch.ones(1, C, 4, dtype=x.dtype).scatter_reduce(
                -1, _BUCKETS.expand(1, C, L), x, reduce, include_self=include_self
            )
        )
        for reduce in ("sum", "prod", "mean", "amax", "amin")
        for include_self in (True, False)
    },
    "masked-scatter": lambda x: torch.zeros_like(x).masked_scatter(torch.arange(L) % 3 == 0, x.flip(-1) * 2),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_order_statistics_match_torch(name: str, dtype: str) -> None:
    methods = ("vmap-jacrev", "batched-vjp") if dtype == "float64" else ("vmap-jacrev",)
    assert_converts(Fn(CASES[name]), (C, L), dtype, methods=methods)


# Ties and NaN, where the order rules show: torch's values and their Jacobian rows.
TIES = np.array([[[1.0, 3.0, 3.0, -1.0, 3.0, 0.5, -1.0, 2.0]]])
NANS = np.array([[[1.0, np.nan, 3.0, -1.0, np.nan, 0.5, 4.0, 2.0]]])


@pytest.mark.parametrize(
    "name, fn",
    [
        ("sort", lambda x: torch.sort(x, dim=-1)[0]),
        ("sort-descending", lambda x: torch.sort(x, dim=-1, descending=True)[0]),
        ("cummax", lambda x: torch.cummax(x, dim=-1)[0]),
        ("cummin", lambda x: torch.cummin(-x, dim=-1)[0]),
        ("median-all", lambda x: x.median().reshape(1)),
        ("nanmedian-all", lambda x: x.nanmedian().reshape(1)),
        ("mode", lambda x: torch.mode(x, -1).values * torch.mode(x, -1).indices + x.mode(0, keepdim=True)[0][0]),
        ("mode-of-levels", lambda x: torch.round(x * 0.7).mode(-1).values + x.flip(-1).mode(-1).values),
        ("mode-all-once", lambda x: x[..., 5:].mode(-1).values * x[..., 5:].mode(-1).indices),
        # The gradient shared evenly among the values equal to the maximum: the base's too.
        (
            "scatter-amax",
            lambda x: torch.full((1, 1, 3), 3.0, dtype=x.dtype).scatter_reduce(
                -1, _BUCKETS[None, None, :3] // 2 + 1, x[..., :3] * 0 + x[..., 1:2], "amax"
            ),
        ),
        (
            "scatter-amin-alone",
            lambda x: x.new_zeros(1, 1, 4).scatter_reduce(-1, _BUCKETS[None, None], x, "amin", include_self=False),
        ),
    ],
)
def test_ties_follow_torch(name: str, fn) -> None:
    assert_converts(Fn(fn), (1, L), "float64", x=TIES)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: torch.sort(x, dim=-1)[0],
        lambda x: torch.sort(x, dim=-1, descending=True)[0],
        lambda x: torch.topk(x, 3, dim=-1)[0],
        lambda x: x.median(dim=-1).values,
        lambda x: x.median().reshape(1),
        # The median of the numbers; of none (the all-NaN slice), NaN.
        lambda x: torch.cat(
            [x.nanmedian(dim=-1).values, x[..., 4:5].nanmedian(-1)[0], x.nanmedian().reshape(1, 1)], -1
        ),
        lambda x: x.nanmedian(dim=-1).indices.to(x.dtype),
        lambda x: x.kthvalue(8, dim=-1).values,
        lambda x: torch.cummax(x, dim=-1).values,
        lambda x: torch.cummin(x, dim=-1).values,
    ],
)
def test_nan_values_follow_torch(fn) -> None:
    net = Fn(fn).double().eval()
    expected = net(torch.from_numpy(NANS)).numpy()
    with jax.enable_x64(True):
        model = convert(net, torch.from_numpy(NANS), dtype="float64", check=False)
        actual = np.asarray(model(NANS))
    np.testing.assert_array_equal(actual, expected)


def test_running_maximum_indices_follow_torch() -> None:
    x = torch.tensor([[[1.0, 1.0, 0.0, 2.0, 2.0, float("nan"), 3.0, float("nan")]]], dtype=torch.float64)
    net = Fn(lambda t: torch.cummax(t, dim=-1)[1].to(t.dtype) + torch.cummin(t, dim=-1)[1].to(t.dtype)).eval()
    with jax.enable_x64(True):
        model = convert(net, x, dtype="float64", check=False)
        np.testing.assert_array_equal(np.asarray(model(x.numpy())), net(x).numpy())
