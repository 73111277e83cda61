"""Pointwise ops and reductions against torch: autograd through whole models, and torch's dtype rules.

Each case is a small function of the input batch `(1, C, L)` that torch
exports to the ops under test; outputs and Jacobians are compared with
torch autograd in float32 and float64.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_converts
from torch import nn

import jaxjac
from jaxjac import converters

DTYPES = ("float32", "float64")
C, L = 3, 6


class Fn(nn.Module):
    """A function of the input as a module, with one positive buffer `b` of shape `(C, L)` to use as a tensor operand."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.register_buffer("b", torch.rand(C, L) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.b)


def _int_positions() -> torch.Tensor:
    return torch.arange(L) - 2  # int64 [-2 .. 3], exported as aten.arange then arithmetic


# Cases group related ops so that the file stays fast; each name says what it covers.
POINTWISE = {
    "arithmetic": lambda x, b: (
        (x * 2.5 + 3 - x / 4) * (1 - x)
        + torch.add(x, b, alpha=2)
        - torch.sub(x, b, alpha=0.5)
        + x * b / (b + 1)
        - x.abs() * -x
    ),
    "clamp-scalar": lambda x, b: torch.clamp(x, -0.5, 0.8) + torch.clamp(x, min=1.0, max=0.5) * x,
    "clamp-tensor": lambda x, b: (
        torch.clamp(x, min=-b, max=b * x.mean()) + torch.clamp_min(x, 0.1) + torch.clamp_max(x, -0.2)
    ),
    "where": lambda x, b: torch.where(x > 0, x * b, 0.5 * x),
    "compare-logic": lambda x, b: (
        x * (x >= 0.2)
        + x * (x < -0.1)
        + x * (x != b)
        + x * (x == x)
        - x * (x <= 0)
        + x * ((x > 0) & (x < 1))
        + x * ((x < -1) | (x > 1))
        + x * ~(x > 0)
        + x * ((x > 0) ^ (b > 1))
    ),
    "pow": lambda x, b: x**2 + x**3 - 0.5 * x ** (-2) + 2**x + (x.abs() + 0.5) ** 0.5 + (x.abs() + 1) ** 1.7 + x**2.0,
    "pow-tensor": lambda x, b: b**x + (x.abs() + 0.5) ** b,
    "roots-reciprocal": lambda x, b: torch.sqrt(x.abs() + 1) + torch.rsqrt(x * x + 1) + torch.reciprocal(x.abs() + 0.5),
    "exp-log": lambda x, b: (
        torch.exp(x)
        + torch.log(x.abs() + 0.5)
        + torch.expm1(x)
        + torch.log1p(x.abs())
        + torch.log2(x.abs() + 1)
        + torch.log10(x.abs() + 1)
        + torch.exp2(x)
    ),
    "trig": lambda x, b: (
        torch.sin(x)
        + torch.cos(x)
        + torch.tan(0.3 * x)
        + torch.atan(x)
        + torch.atan2(x, b)
        + torch.asin(0.3 * x)
        + torch.acos(0.3 * x)
    ),
    "hyperbolic": lambda x, b: (
        torch.sinh(x) + torch.cosh(x) + torch.asinh(x) + torch.acosh(x.abs() + 1.5) + torch.atanh(0.3 * x)
    ),
    "signbit-bucketize": lambda x, b: (
        x * torch.signbit(x)
        + x * torch.bucketize(x, torch.tensor([-0.5, 0.0, 0.5]))
        + x * torch.bucketize(x.detach(), torch.tensor([-1.0, 0.25]), right=True, out_int32=True)
    ),
    "erf-hypot": lambda x, b: torch.erf(x) + torch.erfc(x) + torch.special.erfinv(0.3 * x) + torch.hypot(x, b),
    "gamma-family": lambda x, b: (
        torch.lgamma(x.abs() + 0.5)
        + torch.digamma(x.abs() + 0.5)
        + torch.polygamma(1, x.abs() + 0.5)
        + torch.polygamma(2, b + 1)
        + torch.mvlgamma(x.abs() + 2, 2)
        + torch.lgamma(_int_positions() + 3) * x
    ),
    "bessel-ndtri": lambda x, b: (
        torch.special.i0(x)
        + torch.special.i0e(x * b)
        + torch.special.i1(x)
        + torch.special.i1e(3 * x)
        + torch.special.ndtri(torch.sigmoid(x))
        # torch has no derivative of zeta: its value only.
        + x * torch.special.zeta(x.detach().abs() + 2, b.detach().abs() + 1)
        + x * torch.special.zeta(3.0, b.detach().abs() + 1)
        + torch.special.erfcx(3 * x)
    ),
    "copysign": lambda x, b: (
        torch.copysign(x, b - 0.5)
        + torch.copysign(x, -1.0)
        + torch.copysign(torch.relu(x), x * 0.0 - 0.0)  # a zero magnitude; -0.0 and +0.0 as signs
        + torch.copysign(b, x)
    ),
    "searchsorted": lambda x, b: (
        x * torch.searchsorted(torch.tensor([-0.5, 0.0, 0.5]), x.detach().contiguous())
        + x * torch.searchsorted(torch.tensor([-1.0, 0.25, 0.25]), x.detach().contiguous(), right=True, out_int32=True)
        + x
        * torch.searchsorted(torch.tensor([0.5, -1.0, 0.0]), x.detach(), side="right", sorter=torch.tensor([1, 2, 0]))
        # One sorted row per channel, matched with that channel's entries.
        + x * torch.searchsorted(torch.sort(b[0], dim=-1)[0].detach(), x.detach().contiguous())
        + x * torch.searchsorted(torch.tensor([-0.5, 0.5]), 0.1)
    ),
    "empty-like-filled": lambda x, b: x * torch.empty_like(x).fill_(0.5) + x.new_empty(x.shape).fill_(2.0) * b,
    "minimum-maximum": lambda x, b: torch.maximum(x, b - 1) + torch.minimum(x, 0.5 - b),
    "fmax-fmin": lambda x, b: (
        torch.fmax(x, b - 1)
        + torch.fmin(x, torch.where(x > 0.3, torch.nan, 0.5 - b))  # a NaN operand is ignored
        # Exact ties everywhere, with derivatives 1 and 0: the first operand's gradient is taken.
        + torch.fmax(x - x.detach(), torch.zeros_like(x)) * 3
        + torch.fmin(torch.zeros_like(x), x - x.detach()) * 5
    ),
    "sign-round": lambda x, b: x * (torch.sign(x) + torch.floor(x) + torch.ceil(x) + torch.round(x) + torch.trunc(x)),
    "modulo-division": lambda x, b: (
        torch.remainder(x, 0.7)
        + torch.fmod(x, 0.7)
        + torch.remainder(x, b)
        + x * torch.div(x, 0.5, rounding_mode="floor")
        + x * torch.div(x, 0.5, rounding_mode="trunc")
    ),
    "integer-operands": lambda x, b: (
        x * (_int_positions() // 4)
        + x * torch.div(_int_positions(), 4, rounding_mode="trunc")
        + x * (_int_positions() / 4)
        + x / (_int_positions() + 3)
        + x * (_int_positions() % 3)
    ),
    # Exact values only: torch computes these in its default float32 even in a float64 model.
    "integer-to-float": lambda x, b: (
        x * torch.sqrt(torch.arange(L) ** 2)
        + x * torch.exp2(torch.arange(L))
        + x * torch.reciprocal(2 ** torch.arange(L))
        + x * (torch.arange(L) * 0.5)
    ),
}

REDUCTIONS = {
    "mean-sum": lambda x, b: (
        x.mean(-1)
        + x.sum(1, keepdim=True).mean(-1)
        + x.mean()
        + x.sum()
        + x.sum(dim=(1, 2))
        + x.mean(dim=(-1, -2), keepdim=True).squeeze(-1)
    ),
    "amax-amin-max": lambda x, b: x.amax(-1) + x.amin(1).sum(-1, keepdim=True) + x.amax(dim=(1, 2)) + x.max() + x.min(),
    "max-min-dim": lambda x, b: x.max(-1).values + x.min(1, keepdim=True).values.squeeze(1).sum(-1, keepdim=True),
    "var-std": lambda x, b: (
        x.var(-1)
        + x.var(1, unbiased=False).mean(-1, keepdim=True)
        + x.std(-1, keepdim=True)[..., 0]
        + torch.var(x, dim=(1, 2), correction=2)
        + torch.var(x)
        + torch.var_mean(x, -1)[0] * torch.var_mean(x, -1)[1]
    ),
    "vector-norm": lambda x, b: (
        x.norm(dim=-1)
        + torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)[..., 0]
        + x.norm(p=1, dim=-1)
        + torch.linalg.vector_norm(x, 3, dim=-1)
        + torch.linalg.vector_norm(x, 2.5)
        + torch.linalg.vector_norm(x, float("inf"), dim=-1)
    ),
    "normalize": lambda x, b: F.normalize(x, dim=1),
    "prod-cumsum": lambda x, b: x.prod(-1) + x[..., :3].prod() + torch.cumsum(x, -1)[..., -1],
    "logsumexp": lambda x, b: torch.logsumexp(x, -1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(POINTWISE))
def test_pointwise(name: str, dtype: str) -> None:
    assert_converts(Fn(POINTWISE[name]), (C, L), dtype, n=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reduction(name: str, dtype: str) -> None:
    assert_converts(Fn(REDUCTIONS[name]), (C, L), dtype, n=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_norm(dtype: str) -> None:
    # weight_norm rebuilds the kernel with linalg_vector_norm over (in, k) each forward.
    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(C, 2, 3))
    assert_converts(nn.Sequential(conv, nn.Tanh()), (C, L), dtype, n=2)


def test_norm_of_zero_has_zero_gradient() -> None:
    """torch masks the division by a zero norm: F.normalize of an all-zero row has a finite Jacobian."""
    x = np.random.default_rng(0).standard_normal((2, C, L))
    x[0, :, 2] = 0.0  # one position whose channel vector is zero
    assert_converts(Fn(lambda x, b: F.normalize(x, dim=1)), (C, L), "float64", x=x)
    assert_converts(Fn(lambda x, b: x.norm(dim=1)), (C, L), "float64", x=x)


# Exact zeros and constant slices: zero-padded records and flat channels put inputs right on
# these points, where torch's backward makes a choice that a naive lowering does not.
AT_ZEROS = {
    "abs": lambda x, b: (x.abs() * b).sum(-1) + torch.abs(x[:, :1] - x[:, 1:2]).mean(-1),
    "norm-1": lambda x, b: torch.linalg.vector_norm(x, 1, dim=-1) + x.norm(p=1, dim=1).sum(-1, keepdim=True),
    "cdist-1": lambda x, b: torch.cdist(x, x[:, :2], p=1).flatten(1),
    "sinc": lambda x, b: torch.sinc(x * b).sum(-1),
    "std": lambda x, b: (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-3),
    "std-biased-all": lambda x, b: x.std(-1, unbiased=False) + x.std() * x[:, 0, :1],
    "std-mean": lambda x, b: torch.std_mean(x, -1)[0] * torch.std_mean(x, -1, correction=0)[1],
    # Adding 0.0 clears the sign of -0.0 (nnAudio's phase spectrogram, before atan2); XLA would fold it away.
    "signed-zero": lambda x, b: torch.atan2(-(x * 0.0) + 0.0, -b) + torch.atan2(0.0 + x * 0.0, -b) + x,
}


@pytest.mark.parametrize("name", list(AT_ZEROS))
def test_derivatives_at_exact_zeros_and_flat_slices_match_torch(name: str) -> None:
    x = np.random.default_rng(0).standard_normal((3, C, L))
    x[0] = 0.0  # a zero-padded sample: every function above sits on its special point
    x[1, 1] = 0.7  # a flat channel: its standard deviation is 0
    x[2, :, :2] = 0.0
    assert_converts(Fn(AT_ZEROS[name]), (C, L), "float64", x=x)


# Numbers read back with .item() are constants to torch's autograd: no gradient flows through them.
ITEM = {
    "top-db-clamp": lambda x, b: torch.clamp(10 * torch.log10(x * x + 1e-10), min=(x * x).max().item() - 8.0),
    "normalise": lambda x, b: x / x.abs().max().item() - x * x.mean().item() ** 2 + (-x.std().item()),
    "integer": lambda x, b: x * (x > 0).sum().item() + b,
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ITEM))
def test_numbers_read_with_item_are_gradient_free_constants(name: str, dtype: str) -> None:
    assert_converts(Fn(ITEM[name]), (C, L), dtype)


def test_a_number_read_with_item_that_moves_data_is_refused_as_data_dependent() -> None:
    net = Fn(lambda x, b: torch.roll(x, (x > 0).sum().item(), -1))
    with pytest.raises(jaxjac.UnsupportedOpError, match=r"`_operator\.mod` .* makes a shape depend on the input's"):
        jaxjac.convert(net.eval(), torch.randn(2, C, L))


def test_max_dim_gradient_goes_to_first_tie() -> None:
    """`max(dim)` sends the gradient to the index it returns; `amax` shares it among ties."""
    x = np.random.default_rng(0).standard_normal((2, C, L))
    x[:, :, 1] = x[:, :, 4] = 5.0
    assert_converts(Fn(lambda x, b: x.max(-1).values + x.amax(-1)), (C, L), "float64", x=x)


# Dtype rules, checked on integer inputs straight against the torch op.
_INTS = np.array([-7, -5, -1, 0, 3, 8], dtype=np.int32)
_DIVISORS = np.array([2, 3, -2, 5, 3, -3], dtype=np.int32)

INTEGER_CASES = {
    "aten.div.Tensor": lambda a, b: ((a, b), {}),
    "aten.div.Tensor_mode": lambda a, b: ((a, b), {"rounding_mode": "floor"}),
    "aten.div.Scalar_mode": lambda a, b: ((a, 3), {"rounding_mode": "trunc"}),
    "aten.remainder.Tensor": lambda a, b: ((a, b), {}),
    "aten.fmod.Tensor": lambda a, b: ((a, b), {}),
    "aten.sqrt.default": lambda a, b: ((abs(a),), {}),
    "aten.exp.default": lambda a, b: ((a,), {}),
    "aten.reciprocal.default": lambda a, b: ((b,), {}),
    "aten.rsqrt.default": lambda a, b: ((abs(b),), {}),
    "aten.floor.default": lambda a, b: ((a,), {}),
    "aten.round.default": lambda a, b: ((a,), {}),
    "aten.pow.Tensor_Scalar": lambda a, b: ((abs(a), 0.5), {}),
    "aten.mul.Tensor": lambda a, b: ((a > 0, b > 0), {}),
    "aten.clamp.default": lambda a, b: ((a, -2, 4), {}),
    "aten.clamp.Tensor": lambda a, b: ((a, b, None), {}),
    "aten.sum.dim_IntList": lambda a, b: ((a > 0, ()), {}),
}


def _torch_op(name: str):
    _, op, overload = name.split(".")
    return getattr(getattr(torch.ops.aten, op), overload)


@pytest.mark.parametrize("name", list(INTEGER_CASES))
def test_integer_semantics(name: str) -> None:
    """Integer and bool inputs: torch's values, and its float-versus-integer result kind."""
    args, kwargs = INTEGER_CASES[name](_INTS, _DIVISORS)
    theirs = _torch_op(name)(*(torch.as_tensor(a) if isinstance(a, np.ndarray) else a for a in args), **kwargs)
    ours = converters.lookup(name)(*(jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in args), **kwargs)
    assert jnp.issubdtype(ours.dtype, jnp.floating) == theirs.is_floating_point(), (
        f"{name}: result dtype {ours.dtype}, torch gives {theirs.dtype}"
    )
    assert (ours.dtype == jnp.bool_) == (theirs.dtype == torch.bool), f"{name}: {ours.dtype} vs torch {theirs.dtype}"
    np.testing.assert_allclose(np.asarray(ours, np.float64), theirs.numpy().astype(np.float64), rtol=1e-6)


def test_integer_to_float_follows_model_dtype() -> None:
    """An int tensor made float must not drag a float32 model into float64 when x64 is on."""
    with jax.enable_x64(True):
        ints = jnp.arange(4, dtype=jnp.int32)
        model_floats = jnp.ones(4, jnp.float32)
        for name in ("aten.sqrt.default", "aten.exp.default", "aten.reciprocal.default"):
            assert (converters.lookup(name)(ints) * model_floats).dtype == jnp.float32, name
        assert (converters.lookup("aten.div.Tensor")(ints, 2) * model_floats).dtype == jnp.float32
