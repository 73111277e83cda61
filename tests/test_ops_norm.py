"""Normalisation layers against torch autograd: BatchNorm1d, LayerNorm, GroupNorm, InstanceNorm1d.

Affine parameters and running statistics are randomised, so that a lowering
that ignored one of them (or swapped weight and bias) would fail.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import assert_close, assert_converts
from torch import nn

from jaxjac import converters

DTYPES = ("float32", "float64")
C, L = 4, 6


def _randomise(module: nn.Module) -> nn.Module:
    """Random affine parameters and running statistics (variance kept positive)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator)
                tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
    return module


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_running_stats(affine: bool, dtype: str) -> None:
    net = nn.Sequential(nn.Conv1d(2, C, 3), _randomise(nn.BatchNorm1d(C, affine=affine)))
    assert_converts(net, (2, L + 2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_without_running_stats(affine: bool, dtype: str) -> None:
    # Eval mode still normalises with batch statistics; at batch 1 that is per
    # sample over the length axis, which is also torch's per-row reference.
    net = _randomise(nn.BatchNorm1d(C, affine=affine, track_running_stats=False))
    with pytest.warns(UserWarning, match="keeps no running statistics"):
        assert_converts(net, (C, L), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(L,), (C, L)], ids=["last", "last2"])
@pytest.mark.parametrize(
    "options",
    [{}, {"elementwise_affine": False}, {"bias": False}],
    ids=["affine", "no-affine", "no-bias"],
)
def test_layer_norm(shape: tuple[int, ...], options: dict, dtype: str) -> None:
    assert_converts(_randomise(nn.LayerNorm(shape, **options)), (C, L), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm(groups: int, affine: bool, dtype: str) -> None:
    assert_converts(_randomise(nn.GroupNorm(groups, C, affine=affine)), (C, L), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("track", [False, True], ids=["instance-stats", "running-stats"])
@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm(affine: bool, track: bool, dtype: str) -> None:
    net = _randomise(nn.InstanceNorm1d(C, affine=affine, track_running_stats=track))
    assert_converts(net, (C, L), dtype)


# The statistics outputs: a graph may read them through getitem, so they must
# hold torch's values and shapes, not placeholders.

_X = np.random.default_rng(0).standard_normal((2, C, L))
_W = np.random.default_rng(1).standard_normal(C)
_B = np.random.default_rng(2).standard_normal(C)


def _assert_outputs_match(ours: tuple, theirs: tuple) -> None:
    assert len(ours) == len(theirs), f"{len(ours)} outputs, torch has {len(theirs)}"
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert_close(np.asarray(a), b.numpy(), "float32", f"output {i}")


@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm_statistics(with_bias: bool) -> None:
    x = torch.as_tensor(_X, dtype=torch.float32)
    w = torch.randn(C, L)
    b = torch.randn(C, L) if with_bias else None
    theirs = torch.ops.aten.native_layer_norm.default(x, [C, L], w, b, 1e-5)
    lowering = converters.lookup("aten.native_layer_norm.default")
    ours = lowering(
        jnp.asarray(x.numpy()), (C, L), jnp.asarray(w.numpy()), None if b is None else jnp.asarray(b.numpy()), 1e-5
    )
    _assert_outputs_match(ours, theirs)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm_statistics(groups: int) -> None:
    x, w, b = (torch.as_tensor(a, dtype=torch.float32) for a in (_X, _W, _B))
    theirs = torch.ops.aten.native_group_norm.default(x, w, b, 2, C, L, groups, 1e-5)
    lowering = converters.lookup("aten.native_group_norm.default")
    ours = lowering(*(jnp.asarray(t.numpy()) for t in (x, w, b)), 2, C, L, groups, 1e-5)
    _assert_outputs_match(ours, theirs)


def test_batch_norm_no_stats_statistics() -> None:
    x, w, b = (torch.as_tensor(a, dtype=torch.float32) for a in (_X, _W, _B))
    theirs = torch.ops.aten._native_batch_norm_legit.no_stats(x, w, b, True, 0.1, 1e-5)
    lowering = converters.lookup("aten._native_batch_norm_legit.no_stats")
    ours = lowering(*(jnp.asarray(t.numpy()) for t in (x, w, b)), True, 0.1, 1e-5)
    _assert_outputs_match(ours, theirs)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_legit_statistics(training: bool) -> None:
    x, w, b = (torch.as_tensor(a, dtype=torch.float32) for a in (_X, _W, _B))
    mean, var = torch.randn(C), torch.rand(C) + 0.5
    theirs = torch.ops.aten._native_batch_norm_legit.default(x, w, b, mean.clone(), var.clone(), training, 0.1, 1e-5)
    lowering = converters.lookup("aten._native_batch_norm_legit.default")
    ours = lowering(*(jnp.asarray(t.numpy()) for t in (x, w, b, mean, var)), training, 0.1, 1e-5)
    if training:
        _assert_outputs_match(ours, theirs)
    else:
        # torch returns empty statistics in eval; only the output is compared.
        _assert_outputs_match(ours[:1], theirs[:1])
