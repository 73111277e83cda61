"""Tensors made from nothing or from another's shape, and dtype casts.

Every `dtype` reaching these functions is already a JAX dtype: the lowering
fills a missing dtype from torch's traced result, and the interpreter maps
float32/float64 to the model's float dtype.
"""

from __future__ import annotations

import jax.numpy as jnp

from .registry import register


@register("aten.arange.start_step", "aten.arange.start")
def arange_start(start, end, step=1, dtype=None):
    return jnp.arange(start, end, step, dtype=dtype)


@register("aten.arange.default")
def arange(end, dtype=None):
    return jnp.arange(end, dtype=dtype)


@register("aten.full.default")
def full(size, fill_value, dtype=None):
    return jnp.full(tuple(size), fill_value, dtype=dtype)


@register("aten.full_like.default")
def full_like(x, fill_value, dtype=None):
    return jnp.full(x.shape, fill_value, dtype=dtype or x.dtype)


@register("aten.zeros.default", "aten.empty.memory_format", "aten.new_zeros.default", "aten.new_empty.default")
def zeros(*args, dtype=None):
    size = args[-1]
    return jnp.zeros(tuple(size), dtype=dtype or (args[0].dtype if len(args) == 2 else None))


@register("aten.ones.default", "aten.new_ones.default")
def ones(*args, dtype=None):
    size = args[-1]
    return jnp.ones(tuple(size), dtype=dtype or (args[0].dtype if len(args) == 2 else None))


@register("aten.zeros_like.default", "aten.empty_like.default")
def zeros_like(x, dtype=None):
    return jnp.zeros(x.shape, dtype=dtype or x.dtype)


@register("aten.ones_like.default")
def ones_like(x, dtype=None):
    return jnp.ones(x.shape, dtype=dtype or x.dtype)


@register("aten.scalar_tensor.default")
def scalar_tensor(s, dtype=None):
    return jnp.asarray(s, dtype=dtype)


@register("aten._to_copy.default")
def to_copy(x, dtype=None):
    return x if dtype is None else x.astype(dtype)
