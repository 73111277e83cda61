"""Shape, indexing, creation and matmul lowerings against the ATen ops they lower, one call each.

Each case runs `torch.ops.aten.<op>` and the registered lowering on the same
arguments, in float64 with 64-bit JAX, and asserts equal shapes, dtype kinds
and values: these pin down torch's semantics where numpy's differ.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxjac.converters as converters

rng = np.random.default_rng(0)
INT64_MAX = 2**63 - 1


def f64(*shape: int) -> torch.Tensor:
    return torch.as_tensor(rng.standard_normal(shape))


def ints(*values: Any) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _to_jax(arg: Any) -> Any:
    if isinstance(arg, torch.Tensor):
        return jnp.asarray(arg.numpy())
    if isinstance(arg, torch.dtype):
        return jnp.dtype(str(arg).removeprefix("torch."))
    if isinstance(arg, list | tuple):
        return type(arg)(_to_jax(a) for a in arg)
    return arg


def _kind(dtype: Any) -> str:
    return np.dtype(str(dtype).removeprefix("torch.")).kind


def _assert_same(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, tuple | list):
        assert len(actual) == len(expected), f"{where}: {len(actual)} outputs, torch gives {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_same(a, e, f"{where}[{i}]")
        return
    assert tuple(actual.shape) == tuple(expected.shape), f"{where}: shape {actual.shape} != {tuple(expected.shape)}"
    assert _kind(actual.dtype) == _kind(expected.dtype), f"{where}: dtype {actual.dtype} vs torch's {expected.dtype}"
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected.double().numpy(), rtol=1e-6, atol=1e-6)


def check(op: str, *args: Any, **kwargs: Any) -> None:
    """Assert that the lowering of ATen `op` (e.g. ``"index.Tensor"``) matches torch on `args`."""
    packet, overload = op.rsplit(".", 1)
    expected = getattr(getattr(torch.ops.aten, packet), overload)(*args, **kwargs)
    lowering = converters.lookup(f"aten.{op}")
    assert lowering is not None, f"no lowering registered for aten.{op}"
    with jax.enable_x64(True):
        actual = lowering(*_to_jax(list(args)), **{k: _to_jax(v) for k, v in kwargs.items()})
        _assert_same(actual, expected, op)


def c(op: str, *args: Any, **kwargs: Any) -> tuple[str, tuple, dict]:
    """One case: the ATen op (without the ``aten.`` prefix) and its arguments."""
    return op, args, kwargs


CASES: dict[str, tuple] = {
    # Views and reshapes.
    "view-minus-one": c("view.default", f64(2, 3, 4), [4, -1]),
    "permute-negative": c("permute.default", f64(2, 3, 4), [-1, 0, -2]),
    "transpose-negative": c("transpose.int", f64(2, 3, 4), -1, 0),
    "t-1d": c("t.default", f64(5)),
    "unsqueeze-last": c("unsqueeze.default", f64(2, 3), -1),
    "unsqueeze-neg2": c("unsqueeze.default", f64(2, 3), -2),
    "squeeze-dims-keeps-non-1": c("squeeze.dims", f64(1, 3, 1, 2), [0, 1, -2]),
    "squeeze-dims-empty": c("squeeze.dims", f64(1, 3, 1), []),
    "squeeze-dim-non-1": c("squeeze.dim", f64(2, 3), 1),
    "squeeze-all": c("squeeze.default", f64(1, 3, 1)),
    "squeeze-0d": c("squeeze.dim", torch.tensor(2.0, dtype=torch.float64), 0),
    "expand-minus-one-new-lead": c("expand.default", f64(1, 3, 1), [2, 4, -1, 3, -1]),
    "repeat-extra-dims": c("repeat.default", f64(2, 3), [2, 1, 2]),
    "flip-two": c("flip.default", f64(2, 3, 4), [0, -1]),
    "roll-flat": c("roll.default", f64(2, 3), [2]),
    "roll-dims": c("roll.default", f64(2, 3, 4), [1, -3], [0, -1]),
    "flatten-middle": c("flatten.using_ints", f64(2, 3, 4, 5), 1, -2),
    "flatten-all": c("flatten.using_ints", f64(2, 3, 4)),
    "flatten-0d": c("flatten.using_ints", torch.tensor(2.0, dtype=torch.float64)),
    "unfold": c("unfold.default", f64(2, 11, 3), 1, 4, 3),
    "unfold-last": c("unfold.default", f64(2, 9), -1, 3, 1),
    "diagonal-offset": c("diagonal.default", f64(2, 4, 5), 1, -2, -1),
    "diagonal-neg-offset": c("diagonal.default", f64(4, 5, 2), -2, 0, 1),
    # Slicing and selecting.
    "slice-int64-max": c("slice.Tensor", f64(2, 9), 1, 2, INT64_MAX, 3),
    "slice-negative-bounds": c("slice.Tensor", f64(2, 20), -1, 10, -5),
    "slice-empty": c("slice.Tensor", f64(2, 9), 1, 7, 3),
    "slice-start-past-end": c("slice.Tensor", f64(2, 9), 1, 20, INT64_MAX),
    "slice-none": c("slice.Tensor", f64(2, 9), 0, None, None),
    "slice-scatter": c("slice_scatter.default", f64(3, 9), f64(3, 3), 1, 1, INT64_MAX, 3),
    "select-negative": c("select.int", f64(2, 3, 4), -1, -2),
    "select-scatter": c("select_scatter.default", f64(2, 3, 4), f64(2, 4), -2, -1),
    # Advanced indexing: None means `:`; adjacent index tensors stay in place,
    # separated ones go first; index tensors broadcast; negative indices wrap.
    "index-one": c("index.Tensor", f64(2, 3, 4), [None, ints(2, 0, -1)]),
    "index-adjacent-broadcast": c("index.Tensor", f64(2, 3, 4), [None, ints([1], [0]), ints(3, 2, 0)]),
    "index-separated": c("index.Tensor", f64(2, 3, 4), [ints(1, 0), None, ints(3, -1)]),
    "index-leading-only": c("index.Tensor", f64(2, 3, 4), [ints([0, 1], [1, 1])]),
    "index-trailing-none": c("index.Tensor", f64(2, 3, 4), [None, None, ints(0, 0, 3)]),
    "index-0d": c("index.Tensor", f64(2, 3, 4), [None, torch.tensor(1)]),
    "unsafe-index": c("_unsafe_index.Tensor", f64(2, 3, 4), [None, ints(2, 1), ints(0, 3)]),
    "index-put": c("index_put.default", f64(2, 3, 4), [None, ints(2, 0)], f64(2, 1, 4)),
    "index-put-accumulate": c("index_put.default", f64(3, 4), [ints(1, 1, 0)], f64(3, 4), True),
    "index-put-separated": c("index_put.default", f64(2, 3, 4), [ints(1, 0), None, ints(3, 2)], f64(2, 3)),
    "index-select-1d": c("index_select.default", f64(2, 3, 4), -1, ints(3, 3, 0)),
    "index-select-0d": c("index_select.default", f64(2, 3, 4), 1, torch.tensor(2)),
    "gather-smaller-index": c("gather.default", f64(3, 5), 1, ints([0, 4], [2, 2])),
    "gather-negative-dim": c("gather.default", f64(2, 3, 4), -2, ints([[0, 2, 1, 1]], [[2, 2, 0, 1]])),
    "scatter-src": c("scatter.src", f64(3, 5), 1, ints([0, 4], [2, 1]), f64(3, 3)),
    "scatter-value": c("scatter.value", f64(3, 5), 0, ints([0, 2, 1]), 7.5),
    "scatter-add-repeats": c("scatter_add.default", f64(3, 5), 1, ints([0, 0, 4], [1, 1, 1]), f64(2, 3)),
    "scatter-reduce-multiply": c("scatter.reduce", f64(3, 5), 1, ints([0, 0], [3, 3]), f64(2, 2), reduce="multiply"),
    "scatter-reduce-mean": c("scatter_reduce.two", f64(3, 5), 1, ints([0, 0, 4], [1, 1, 1]), f64(2, 3), "mean"),
    "scatter-reduce-amax-alone": c(
        "scatter_reduce.two", f64(3, 5), 1, ints([0, 0, 4], [1, 3, 1]), f64(2, 3), "amax", include_self=False
    ),
    "scatter-reduce-amin": c("scatter_reduce.two", f64(3, 5), 0, ints([0, 2], [2, 2]), f64(2, 2), "amin"),
    "scatter-reduce-prod-alone": c(
        "scatter_reduce.two", f64(3, 5), 1, ints([0, 0], [3, 3]), f64(2, 2), "prod", include_self=False
    ),
    "scatter-reduce-sum-int": c("scatter_reduce.two", ints(1, 2, 3), 0, ints(0, 0, 2), ints(5, 6, 7), "sum"),
    "scatter-reduce-mean-int": c("scatter_reduce.two", ints(1, 2, 3), 0, ints(0, 0, 2), ints(5, 6, 7), "mean"),
    "masked-scatter-broadcast": c(
        "masked_scatter.default", f64(3, 4), torch.tensor([True, False, False, True]), f64(4, 3)
    ),
    "embedding": c("embedding.default", f64(5, 3), ints([0, 4, 4], [1, 2, 3])),
    # Joining, splitting, padding.
    "cat-mixed-int-float": c("cat.default", [ints(1, 2), torch.tensor([0.5], dtype=torch.float64)]),
    "cat-bool-int": c("cat.default", [torch.tensor([True, False]), ints(3)]),
    "cat-legacy-empty": c("cat.default", [f64(2, 3), torch.zeros(0, dtype=torch.float64), f64(2, 2)], -1),
    "stack-negative": c("stack.default", [f64(2, 3), f64(2, 3)], -1),
    "split-with-sizes": c("split_with_sizes.default", f64(2, 9), [2, 0, 7], -1),
    "split-uneven": c("split.Tensor", f64(2, 8), 3, -1),
    "unbind-negative": c("unbind.int", f64(2, 3), -1),
    "pad-negative": c("constant_pad_nd.default", f64(2, 8), [2, -3]),
    "pad-two-axes": c("constant_pad_nd.default", f64(2, 3, 4), [1, 0, -1, 2], 1.5),
    "pad-crop-both": c("constant_pad_nd.default", f64(2, 8), [-2, -1]),
    # Undecomposed upsampling.
    "nearest-scale": c("upsample_nearest1d.vec", f64(1, 2, 5), None, [1.7]),
    "nearest-size": c("upsample_nearest1d.vec", f64(1, 2, 5), [13], None),
    "nearest-down": c("upsample_nearest1d.vec", f64(1, 2, 9), [4], None),
    "nearest-default-scales": c("upsample_nearest1d.default", f64(1, 2, 5), [12], 2.5),
    "linear-align": c("upsample_linear1d.vec", f64(1, 2, 5), [12], True, None),
    "linear-scale": c("upsample_linear1d.vec", f64(1, 2, 5), None, False, [2.5]),
    "linear-size": c("upsample_linear1d.vec", f64(1, 2, 5), [7], False, None),
    "linear-one-out": c("upsample_linear1d.vec", f64(1, 2, 5), [1], True, None),
    # Creation and casts.
    "arange-float-step": c("arange.start_step", 0, 1, 0.1),
    "arange-float-dtype": c("arange.start_step", -1, 2, 0.25, dtype=torch.float64),
    "arange-int": c("arange.start_step", 3, 17, 4),
    "triu-indices": c("triu_indices.default", 4, 5),
    "triu-indices-offset": c("triu_indices.default", 5, 3, 1),
    "triu-indices-negative-offset": c("triu_indices.default", 3, 4, -1),
    "tril-indices": c("tril_indices.default", 4, 3),
    "tril-indices-offset-dtype": c("tril_indices.default", 3, 5, 2, dtype=torch.int32),
    "arange-end-float": c("arange.default", 4.5),
    "arange-negative-step": c("arange.start_step", 5, -2, -1.5),
    "full-int-inferred": c("full.default", [2, 3], 7),
    "full-bool-inferred": c("full.default", [2], True),
    "full-like-dtype": c("full_like.default", ints(1, 2), 0.5, dtype=torch.float64),
    "new-zeros": c("new_zeros.default", ints(1, 2), [2, 2]),
    "new-ones-dtype": c("new_ones.default", ints(1, 2), [3], dtype=torch.float64),
    "new-full": c("new_full.default", f64(2), [3], 2),
    "zeros-like-int": c("zeros_like.default", f64(2, 3), dtype=torch.int64),
    "scalar-tensor-int": c("scalar_tensor.default", 3),
    "to-copy-truncates": c("_to_copy.default", torch.tensor([-1.7, 1.7, 2.5], dtype=torch.float64), dtype=torch.int64),
    "to-copy-bool": c("_to_copy.default", torch.tensor([0.0, 0.2], dtype=torch.float64), dtype=torch.bool),
    "linspace": c("linspace.default", -1, 1, 7, dtype=torch.float64),
    # Matrix products.
    "addmm-alpha-beta": c("addmm.default", f64(3), f64(2, 4), f64(4, 3), beta=0.5, alpha=2.0),
    "addmm-beta-zero-ignores-nan": c(
        "addmm.default", torch.full((3,), float("nan"), dtype=torch.float64), f64(2, 4), f64(4, 3), beta=0
    ),
    "baddbmm": c("baddbmm.default", f64(2, 3, 5), f64(2, 3, 4), f64(2, 4, 5), beta=2.0),
    "mv": c("mv.default", f64(3, 4), f64(4)),
    "dot": c("dot.default", f64(4), f64(4)),
    "addmv": c("addmv.default", f64(3), f64(3, 4), f64(4), alpha=-1.0),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_lowering_matches_aten(case):
    op, args, kwargs = case
    check(op, *args, **kwargs)
