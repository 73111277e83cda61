"""Views, reshapes, slicing, indexing, concatenation and padding."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from .registry import register


@register("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.view_copy.default")
def view(x, size):
    return jnp.reshape(x, tuple(size))


@register("aten.permute.default", "aten.permute_copy.default")
def permute(x, dims):
    return jnp.transpose(x, tuple(dims))


@register("aten.transpose.int")
def transpose(x, dim0, dim1):
    return jnp.swapaxes(x, dim0, dim1)


@register("aten.t.default")
def t(x):
    return x.T


@register("aten.unsqueeze.default", "aten.unsqueeze_copy.default")
def unsqueeze(x, dim):
    return jnp.expand_dims(x, dim)


@register("aten.squeeze.dims", "aten.squeeze.dim", "aten.squeeze.default", "aten.squeeze_copy.dims")
def squeeze(x, dims=None):
    # torch silently keeps a named axis whose size is not 1; numpy raises.
    if dims is None:
        dims = range(x.ndim)
    elif isinstance(dims, int):
        dims = (dims,)
    axes = tuple(d % x.ndim for d in dims if x.shape[d] == 1) if x.ndim else ()
    return jnp.squeeze(x, axes)


@register(
    "aten.clone.default",
    "aten.alias.default",
    "aten.detach.default",
    "aten.lift_fresh_copy.default",
    "aten.contiguous.default",
)
def identity(x, *args, **kwargs):
    return x


@register("aten.expand.default", "aten.expand_copy.default")
def expand(x, size, implicit=False):
    lead = len(size) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(size))
    return jnp.broadcast_to(x, shape)


@register("aten.repeat.default")
def repeat(x, repeats):
    return jnp.tile(x, tuple(repeats))


@register("aten.flip.default")
def flip(x, dims):
    return jnp.flip(x, tuple(dims))


@register("aten.roll.default")
def roll(x, shifts, dims=()):
    if not dims:
        return jnp.roll(x.reshape(-1), tuple(shifts)).reshape(x.shape)
    return jnp.roll(x, tuple(shifts), tuple(dims))


def _slice_index(ndim: int, dim: int, start, end, step) -> tuple:
    index = [slice(None)] * ndim
    index[dim] = slice(start, end, step)
    return tuple(index)


@register("aten.slice.Tensor", "aten.slice_copy.Tensor")
def slice_(x, dim=0, start=None, end=None, step=1):
    return x[_slice_index(x.ndim, dim, start, end, step)]


@register("aten.slice_scatter.default")
def slice_scatter(x, src, dim=0, start=None, end=None, step=1):
    return x.at[_slice_index(x.ndim, dim, start, end, step)].set(src.astype(x.dtype))


@register("aten.select.int", "aten.select_copy.int")
def select(x, dim, index):
    return jnp.take(x, index, axis=dim)


@register("aten.select_scatter.default")
def select_scatter(x, src, dim, index):
    idx = [slice(None)] * x.ndim
    idx[dim] = index
    return x.at[tuple(idx)].set(src.astype(x.dtype))


@register("aten.index.Tensor")
def index(x, indices):
    # In ATen, a None entry means "this whole axis", like `:` in numpy.
    return x[tuple(slice(None) if i is None else i for i in indices)]


@register("aten.index_select.default")
def index_select(x, dim, index):
    return jnp.take(x, index, axis=dim)


@register("aten.gather.default")
def gather(x, dim, index, sparse_grad=False):
    return jnp.take_along_axis(x, index, axis=dim)


@register("aten.cat.default")
def cat(tensors, dim=0):
    # torch skips legacy empty 1-D tensors whatever the other shapes are.
    kept = [t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0)] or list(tensors)
    return jnp.concatenate(kept, axis=dim)


@register("aten.stack.default")
def stack(tensors, dim=0):
    return jnp.stack(tensors, axis=dim)


@register("aten.split_with_sizes.default", "aten.split_with_sizes_copy.default")
def split_with_sizes(x, split_sizes, dim=0):
    offsets = [sum(split_sizes[:i]) for i in range(1, len(split_sizes))]
    return tuple(jnp.split(x, offsets, axis=dim))


@register("aten.split.Tensor", "aten.split_copy.Tensor")
def split(x, split_size, dim=0):
    length = x.shape[dim]
    return split_with_sizes(x, [min(split_size, length - s) for s in range(0, length, split_size)], dim)


@register("aten.unbind.int")
def unbind(x, dim=0):
    return tuple(jnp.moveaxis(x, dim, 0))


@register("aten.constant_pad_nd.default")
def constant_pad_nd(x, pad, value=0):
    # `pad` runs from the last axis backwards, (left, right) per axis; negative
    # entries crop, which lax.pad supports directly.
    config = [(0, 0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        config[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1], 0)
    return lax.pad(x, jnp.asarray(value, x.dtype), config)


@register("aten.copy.default")
def copy(x, src, non_blocking=False):
    return jnp.broadcast_to(src, x.shape).astype(x.dtype)


@register("aten.flatten.using_ints")
def flatten(x, start_dim=0, end_dim=-1):
    start, end = start_dim % max(x.ndim, 1), end_dim % max(x.ndim, 1)
    return x.reshape((*x.shape[:start], math.prod(x.shape[start : end + 1]), *x.shape[end + 1 :]))
