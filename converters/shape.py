"""Views, reshapes, slicing, indexing, scatter, concatenation, padding and 1-D upsampling.

Every function follows torch's semantics where they differ from numpy's:
`squeeze` keeps named axes whose size is not 1, `index_select` keeps its axis
for a 0-d index, `gather`/`scatter` accept an index smaller than the input in
the other axes, and `cat` skips legacy empty 1-D tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .registry import register

# ---------------------------------------------------------------------------
# Views and reshapes.


@register("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.view_copy.default")
def view(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """`x` reshaped to `size`; one entry may be -1."""
    return jnp.reshape(x, tuple(size))


@register("aten.permute.default", "aten.permute_copy.default")
def permute(x: jax.Array, dims: Sequence[int]) -> jax.Array:
    """`x` with its axes reordered to `dims` (negative entries allowed)."""
    return jnp.transpose(x, tuple(d % max(x.ndim, 1) for d in dims))


@register("aten.transpose.int", "aten.transpose_copy.int")
def transpose(x: jax.Array, dim0: int, dim1: int) -> jax.Array:
    """`x` with axes `dim0` and `dim1` swapped."""
    return jnp.swapaxes(x, dim0, dim1) if x.ndim else x


@register("aten.t.default", "aten.t_copy.default")
def t(x: jax.Array) -> jax.Array:
    """The transpose of a 0-, 1- or 2-D `x` (0-D and 1-D are returned as they are)."""
    return x.T


@register("aten.unsqueeze.default", "aten.unsqueeze_copy.default")
def unsqueeze(x: jax.Array, dim: int) -> jax.Array:
    """`x` with a new axis of size 1 at `dim`; -1 appends, as in torch."""
    return jnp.expand_dims(x, dim)


@register(
    "aten.squeeze.dims",
    "aten.squeeze.dim",
    "aten.squeeze.default",
    "aten.squeeze_copy.dims",
    "aten.squeeze_copy.dim",
    "aten.squeeze_copy.default",
)
def squeeze(x: jax.Array, dims: int | Sequence[int] | None = None) -> jax.Array:
    """`x` without the axes of size 1 among `dims` (all axes when `dims` is None)."""
    # torch silently keeps a named axis whose size is not 1; numpy raises.
    if x.ndim == 0:
        return x
    if dims is None:
        dims = range(x.ndim)
    elif isinstance(dims, int):
        dims = (dims,)
    return jnp.squeeze(x, tuple(sorted({d % x.ndim for d in dims if x.shape[d] == 1})))


@register(
    "aten.clone.default",
    "aten.alias.default",
    "aten.alias_copy.default",
    "aten.lift_fresh_copy.default",
    "aten.contiguous.default",
)
def identity(x: jax.Array, *args, **kwargs) -> jax.Array:
    """`x` itself: copies and memory-format changes mean nothing for immutable arrays."""
    return x


@register("aten.detach.default", "aten.detach_copy.default")
def detach(x: jax.Array) -> jax.Array:
    """`x`, through which no gradient flows (`tensor.detach()`)."""
    return lax.stop_gradient(x)


@register("aten.expand.default", "aten.expand_copy.default")
def expand(x: jax.Array, size: Sequence[int], implicit: bool = False) -> jax.Array:
    """`x` broadcast to `size`; -1 keeps an existing axis, new axes are prepended."""
    lead = len(size) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(size))
    return jnp.broadcast_to(x, shape)


@register("aten.repeat.default")
def repeat(x: jax.Array, repeats: Sequence[int]) -> jax.Array:
    """`x` tiled `repeats` times per axis; extra entries of `repeats` add leading axes."""
    return jnp.tile(x, tuple(repeats))


@register("aten.flip.default")
def flip(x: jax.Array, dims: Sequence[int]) -> jax.Array:
    """`x` reversed along `dims`."""
    return jnp.flip(x, tuple(dims)) if dims else x


@register("aten.roll.default")
def roll(x: jax.Array, shifts: Sequence[int], dims: Sequence[int] = ()) -> jax.Array:
    """`x` rolled by `shifts` along `dims`; with no `dims`, rolled as a flat vector."""
    if not dims:
        return jnp.roll(x.reshape(-1), shifts[0]).reshape(x.shape)
    return jnp.roll(x, tuple(shifts), tuple(dims))


@register("aten.flatten.using_ints")
def flatten(x: jax.Array, start_dim: int = 0, end_dim: int = -1) -> jax.Array:
    """`x` with axes `start_dim..end_dim` merged into one; a 0-D `x` becomes `(1,)`."""
    start, end = start_dim % max(x.ndim, 1), end_dim % max(x.ndim, 1)
    return x.reshape((*x.shape[:start], math.prod(x.shape[start : end + 1]), *x.shape[end + 1 :]))


@register("aten.unfold.default")
def unfold(x: jax.Array, dimension: int, size: int, step: int) -> jax.Array:
    """Sliding windows: axis `dimension` of length L becomes `(L - size) // step + 1`
    windows, and a new last axis of length `size` holds each window."""
    if x.ndim == 0:
        return x.reshape(1)
    dim = dimension % x.ndim
    count = (x.shape[dim] - size) // step + 1
    windows = np.arange(count)[:, None] * step + np.arange(size)[None, :]
    return jnp.moveaxis(jnp.take(x, windows, axis=dim), dim + 1, -1)


@register("aten.diagonal.default", "aten.diagonal_copy.default")
def diagonal(x: jax.Array, offset: int = 0, dim1: int = 0, dim2: int = 1) -> jax.Array:
    """The diagonal of `x` over `dim1`, `dim2`, appended as the last axis (as numpy does)."""
    return jnp.diagonal(x, offset, dim1, dim2)


# ---------------------------------------------------------------------------
# Slicing and selecting.


def _slice_index(ndim: int, dim: int, start: int | None, end: int | None, step: int) -> tuple:
    # Python slices clamp out-of-range bounds (end may be INT64_MAX) exactly
    # as torch does; torch forbids step <= 0, so no other case arises.
    index = [slice(None)] * ndim
    index[dim] = slice(start, end, step)
    return tuple(index)


@register("aten.slice.Tensor", "aten.slice_copy.Tensor")
def slice_(x: jax.Array, dim: int = 0, start: int | None = None, end: int | None = None, step: int = 1) -> jax.Array:
    """`x[..., start:end:step, ...]` on axis `dim`."""
    return x[_slice_index(x.ndim, dim, start, end, step)]


@register("aten.as_strided.default", "aten.as_strided_copy.default")
def as_strided(
    x: jax.Array,
    size: Sequence[int],
    stride: Sequence[int],
    storage_offset: int | None = None,
    *,
    input_strides: Sequence[int] | None = None,
) -> jax.Array:
    """torch's `as_strided`: element `i` of the result is storage element `offset + sum(i * stride)` of `x`.

    JAX arrays have no storage, so `input_strides`, the strides `x` had in
    torch (recorded from the export's metadata), map storage positions back
    to `x`'s elements; `x` must fill its storage exactly (a dense tensor in
    any dimension order, not a slice of a larger one). torch's decompositions
    use `as_strided` to restride a result (adaptive pooling of a transposed
    input), which this reads as a reshape.

    **Returns:** `(*size)`.
    """
    if input_strides is None:
        raise ValueError("as_strided needs the strides of its input in torch, which the lowering records")
    shape = tuple(x.shape)
    storage = _storage_positions(shape, tuple(input_strides)).reshape(-1)
    if not np.array_equal(np.sort(storage), np.arange(storage.size)):
        raise ValueError(
            f"as_strided of a tensor {shape} with strides {tuple(input_strides)} that does not fill its storage"
        )
    element_at = np.empty(storage.size, np.int64)
    element_at[storage] = np.arange(storage.size)
    wanted = (storage_offset or 0) + _storage_positions(tuple(size), tuple(stride))
    if wanted.size and (wanted.min() < 0 or wanted.max() >= storage.size):
        raise ValueError(
            f"as_strided reads storage positions {wanted.min()}..{wanted.max()} of a tensor of {storage.size}"
        )
    index = element_at[wanted.reshape(-1)]
    flat = x.reshape(-1)
    if np.array_equal(index, np.arange(storage.size)):
        return flat.reshape(tuple(size))  # a restride of the same elements, in order
    return jnp.take(flat, jnp.asarray(index), axis=0).reshape(tuple(size))


def _storage_positions(shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """The storage position of each element of a tensor `shape` with `strides`, row-major `(*shape)`."""
    positions = np.zeros(shape, np.int64)
    for axis, (n, step) in enumerate(zip(shape, strides, strict=True)):
        positions += (np.arange(n) * step).reshape((n,) + (1,) * (len(shape) - axis - 1))
    return positions


@register("aten.slice_scatter.default")
def slice_scatter(
    x: jax.Array, src: jax.Array, dim: int = 0, start: int | None = None, end: int | None = None, step: int = 1
) -> jax.Array:
    """`x` with `x[..., start:end:step, ...]` on axis `dim` replaced by `src`."""
    return x.at[_slice_index(x.ndim, dim, start, end, step)].set(src.astype(x.dtype))


def _select_index(ndim: int, dim: int, index: int) -> tuple:
    idx: list = [slice(None)] * ndim
    idx[dim] = index
    return tuple(idx)


@register("aten.select.int", "aten.select_copy.int")
def select(x: jax.Array, dim: int, index: int) -> jax.Array:
    """`x` at position `index` (negative counts from the end) of axis `dim`, which is dropped."""
    return x[_select_index(x.ndim, dim, index)]


@register("aten.select_scatter.default")
def select_scatter(x: jax.Array, src: jax.Array, dim: int, index: int) -> jax.Array:
    """`x` with position `index` of axis `dim` replaced by `src` (`x.shape` without `dim`)."""
    return x.at[_select_index(x.ndim, dim, index)].set(src.astype(x.dtype))


def _advanced_index(indices: Sequence[jax.Array | None]) -> tuple:
    # In ATen a None entry means "this whole axis", like `:` in numpy. With
    # that, torch and numpy place the broadcast index axes identically: in
    # place when the index tensors are adjacent, first when slices separate them.
    return tuple(slice(None) if i is None else i for i in indices)


@register("aten.index.Tensor", "aten._unsafe_index.Tensor")
def index(x: jax.Array, indices: Sequence[jax.Array | None]) -> jax.Array:
    """`x[indices]` with numpy's advanced-indexing rules; missing trailing entries mean `:`."""
    return x[_advanced_index(indices)]


@register("aten.index_put.default", "aten._unsafe_index_put.default")
def index_put(
    x: jax.Array, indices: Sequence[jax.Array | None], values: jax.Array, accumulate: bool = False
) -> jax.Array:
    """`x` with `x[indices]` set to (or, with `accumulate`, incremented by) broadcast `values`."""
    values = values.astype(x.dtype)
    mask = _traced_mask(x, indices)
    if mask is not None and values.size == 1:  # `x[torch.isnan(x)] = 0`: a select, whatever the mask holds
        values = values.reshape(())
        return jnp.where(mask, x + values, x) if accumulate else jnp.where(mask, values, x)
    ref = x.at[_advanced_index(indices)]
    return ref.add(values) if accumulate else ref.set(values)


@register("jaxjac.masked_operand")
def masked_operand(x: jax.Array, mask: jax.Array) -> jax.Array:
    """`x` where `mask` holds; elsewhere, without gradient, `x` at the first position it holds (see `jaxjac._masked_regions`)."""
    first = x.reshape(-1)[jnp.argmax(mask.reshape(-1))]
    return jnp.where(mask, x, lax.stop_gradient(first))


@register("jaxjac.masked_reduction")
def masked_reduction(x: jax.Array, mask: jax.Array, kind: str, keepdim: bool = False) -> jax.Array:
    """`x[mask]` reduced whole by `kind` (sum, mean, max or min), without selecting (see `jaxjac._masked_regions`)."""
    if kind in ("sum", "mean"):
        out = jnp.sum(jnp.where(mask, x, jnp.zeros((), x.dtype)))
        out = out / jnp.sum(mask).astype(x.dtype) if kind == "mean" else out
    else:
        fill = jnp.asarray(-jnp.inf if kind == "max" else jnp.inf, x.dtype)
        out = (jnp.max if kind == "max" else jnp.min)(jnp.where(mask, x, fill))
    return out.reshape(1) if keepdim else out


def _traced_mask(x: jax.Array, indices: Sequence[jax.Array | None]) -> jax.Array | None:
    """The one traced boolean index of `indices`, broadcast against `x`; None for any other indexing.

    JAX needs a boolean index's values to know the selection's shape; assigning
    one value to the selection has `x`'s shape whatever the mask holds.
    """
    given = [(axis, i) for axis, i in enumerate(indices) if i is not None]
    if len(given) != 1 or given[0][1].dtype != jnp.bool_ or isinstance(given[0][1], np.ndarray):
        return None
    ((before, mask),) = given  # every entry before it is `:`, one axis each
    return mask.reshape((1,) * before + mask.shape + (1,) * (x.ndim - before - mask.ndim))


@register("aten.index_select.default")
def index_select(x: jax.Array, dim: int, index: jax.Array) -> jax.Array:
    """`x` at positions `index` (0-D or 1-D) of axis `dim`; a 0-D index keeps the axis with size 1."""
    return jnp.take(x, jnp.reshape(index, (-1,)), axis=dim) if x.ndim else x


def _grid(index: jax.Array, dim: int) -> tuple:
    # The coordinates that gather/scatter visit: every position of `index`,
    # with axis `dim` replaced by the value of `index` there.
    coords = list(jnp.indices(index.shape, sparse=True))
    coords[dim] = index
    return tuple(coords)


@register("aten.gather.default")
def gather(x: jax.Array, dim: int, index: jax.Array, sparse_grad: bool = False) -> jax.Array:
    """`out[i][j][k] = x[i][index[i][j][k]][k]` (for `dim=1`); `index` may be smaller than `x` in
    the other axes, so the result has `index.shape`."""
    if x.ndim == 0:
        return x
    return x[_grid(index, dim % x.ndim)]


def _scatter(x: jax.Array, dim: int, index: jax.Array, src: jax.Array | float, reduce: str | None) -> jax.Array:
    if x.ndim == 0:
        return jnp.asarray(src, x.dtype) if reduce is None else x + jnp.asarray(src, x.dtype)
    dim = dim % x.ndim
    if isinstance(src, jax.Array | np.ndarray) and src.ndim:
        # Only the leading index.shape block of src is scattered.
        src = src[tuple(slice(0, n) for n in index.shape)]
    ref = x.at[_grid(index, dim)]
    src = jnp.asarray(src).astype(x.dtype)
    if reduce in (None,):
        return ref.set(src)
    if reduce in ("add", "sum"):
        return ref.add(src)
    if reduce in ("multiply", "prod"):
        return _scatter_prod(x, dim, index, src, include_self=True)
    raise NotImplementedError(f"scatter reduce={reduce!r} is not supported; expected 'add' or 'multiply'")


def _scatter_prod(x: jax.Array, dim: int, index: jax.Array, src: jax.Array, include_self: bool) -> jax.Array:
    """`x` times, at each position `index` reaches along `dim`, the `src` values sent there.

    A product over a one-hot expansion of `index`, `(..., J, T)`: JAX
    differentiates a scatter-multiply only where indices are unique.
    """
    src = jnp.broadcast_to(jnp.asarray(src, x.dtype), index.shape)
    index, src = jnp.moveaxis(index, dim, -1), jnp.moveaxis(src, dim, -1)
    onehot = index[..., :, None] == jnp.arange(x.shape[dim])
    products = jnp.prod(jnp.where(onehot, src[..., :, None], jnp.ones((), x.dtype)), axis=-2)
    reached = onehot.any(-2)
    region = tuple(slice(0, n) for n in index.shape[:-1])  # the other axes index covers, `dim` last
    part = jnp.moveaxis(x, dim, -1)[region]
    part = jnp.where(reached, (part if include_self else 1) * products, part)
    return jnp.moveaxis(jnp.moveaxis(x, dim, -1).at[region].set(part), -1, dim)


@register("aten.scatter.src", "aten.scatter.value")
def scatter(x: jax.Array, dim: int, index: jax.Array, src: jax.Array | float) -> jax.Array:
    """`x` with `x[i][index[i][j]]` set to `src[i][j]` (for `dim=1`), or to a scalar `src`."""
    return _scatter(x, dim, index, src, None)


@register("aten.scatter.reduce", "aten.scatter.value_reduce")
def scatter_reduce_legacy(x: jax.Array, dim: int, index: jax.Array, src: jax.Array | float, reduce: str) -> jax.Array:
    """`scatter` that adds or multiplies into `x` instead of overwriting."""
    return _scatter(x, dim, index, src, reduce)


@register("aten.scatter_reduce.two")
def scatter_reduce(
    x: jax.Array, dim: int, index: jax.Array, src: jax.Array, reduce: str, include_self: bool = True
) -> jax.Array:
    """`x` with `src[i][j]` reduced into `x[i][index[i][j]]` (for `dim=1`) by sum, prod, mean, amax or amin.

    Without `include_self`, the positions `index` reaches reduce `src` alone.
    amax and amin share the gradient evenly among the values equal to the
    result, as torch's backward does.
    """
    if x.ndim == 0:
        return scatter_reduce(x.reshape(1), 0, index.reshape(-1), src.reshape(-1), reduce, include_self).reshape(())
    dim = dim % x.ndim
    src = src[tuple(slice(0, n) for n in index.shape)].astype(x.dtype)
    grid = _grid(index, dim)
    counts_self = jnp.ones(x.shape, bool) if include_self else ~jnp.zeros(x.shape, bool).at[grid].set(True)
    if reduce == "sum":
        return jnp.where(counts_self, x, 0).at[grid].add(src)
    if reduce == "prod":
        return _scatter_prod(x, dim, index, src, include_self)
    if reduce == "mean":
        total = jnp.where(counts_self, x, 0).at[grid].add(src)
        count = counts_self.astype(x.dtype).at[grid].add(1)
        return total / count if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.floor_divide(total, count)
    if reduce not in ("amax", "amin"):
        raise NotImplementedError(f"scatter_reduce reduce={reduce!r}; expected sum, prod, mean, amax or amin")
    largest = reduce == "amax"
    if jnp.issubdtype(x.dtype, jnp.inexact):
        fill = -jnp.inf if largest else jnp.inf
    else:
        info = jnp.iinfo(x.dtype)
        fill = info.min if largest else info.max
    base = jnp.where(counts_self, x, jnp.asarray(fill, x.dtype)).at[grid]
    result = lax.stop_gradient(base.max(src) if largest else base.min(src))
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return result
    self_is, src_is = counts_self & (x == result), src == result[grid]
    ties = self_is.astype(x.dtype).at[grid].add(src_is.astype(x.dtype))
    tied = jnp.where(self_is, x, 0).at[grid].add(jnp.where(src_is, src, 0))
    # The result's value, with the gradient of the mean of the values that equal it.
    return result + (tied - lax.stop_gradient(tied)) / jnp.where(ties > 0, ties, 1)


@register("aten.masked_scatter.default")
def masked_scatter(x: jax.Array, mask: jax.Array, source: jax.Array) -> jax.Array:
    """`x` with the positions `mask` holds filled, in order, by the leading elements of `source`."""
    shape = jnp.broadcast_shapes(x.shape, mask.shape)
    x, mask = jnp.broadcast_to(x, shape), jnp.broadcast_to(mask, shape)
    taken = jnp.clip(jnp.cumsum(mask.reshape(-1)) - 1, 0, max(source.size - 1, 0))
    return jnp.where(mask, source.reshape(-1)[taken].reshape(shape).astype(x.dtype), x)


@register("aten.scatter_add.default")
def scatter_add(x: jax.Array, dim: int, index: jax.Array, src: jax.Array) -> jax.Array:
    """`x` with `src[i][j]` added at `x[i][index[i][j]]` (for `dim=1`); repeats accumulate."""
    return _scatter(x, dim, index, src, "add")


@register("aten.embedding.default")
def embedding(
    weight: jax.Array, indices: jax.Array, padding_idx: int = -1, scale_grad_by_freq: bool = False, sparse: bool = False
) -> jax.Array:
    """Rows of `weight (V, D)` picked by integer `indices (*)`: `(*, D)`."""
    return weight[indices]


# ---------------------------------------------------------------------------
# Joining, splitting and padding.


@register("aten.cat.default")
def cat(tensors: Sequence[jax.Array], dim: int = 0) -> jax.Array:
    """`tensors` joined along `dim`, promoted to their common dtype as torch does."""
    # torch skips legacy empty 1-D tensors whatever the other shapes are.
    kept = [t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0)] or list(tensors)
    dtype = jnp.result_type(*tensors)
    return jnp.concatenate([t.astype(dtype) for t in kept], axis=dim)


@register("aten.stack.default")
def stack(tensors: Sequence[jax.Array], dim: int = 0) -> jax.Array:
    """`tensors` of one shape stacked along a new axis `dim`."""
    dtype = jnp.result_type(*tensors)
    return jnp.stack([t.astype(dtype) for t in tensors], axis=dim)


@register("aten.split_with_sizes.default", "aten.split_with_sizes_copy.default")
def split_with_sizes(x: jax.Array, split_sizes: Sequence[int], dim: int = 0) -> tuple[jax.Array, ...]:
    """`x` cut along `dim` into consecutive pieces of lengths `split_sizes` (which sum to its length)."""
    offsets = np.cumsum(split_sizes)[:-1].tolist()
    return tuple(jnp.split(x, offsets, axis=dim))


@register("aten.split.Tensor", "aten.split_copy.Tensor")
def split(x: jax.Array, split_size: int, dim: int = 0) -> tuple[jax.Array, ...]:
    """`x` cut along `dim` into pieces of `split_size`, the last one possibly shorter."""
    length = x.shape[dim]
    sizes = [min(split_size, length - s) for s in range(0, length, split_size)] or [0]
    return split_with_sizes(x, sizes, dim)


@register("aten.unbind.int", "aten.unbind_copy.int")
def unbind(x: jax.Array, dim: int = 0) -> tuple[jax.Array, ...]:
    """The slices of `x` along `dim`, each without that axis."""
    return tuple(jnp.moveaxis(x, dim, 0))


@register("aten.constant_pad_nd.default")
def constant_pad_nd(x: jax.Array, pad: Sequence[int], value: float = 0) -> jax.Array:
    """`x` padded with `value`; `pad` lists (before, after) pairs from the last axis backwards."""
    # Negative entries crop, which lax.pad supports directly.
    config = [(0, 0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        config[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1], 0)
    return lax.pad(x, jnp.asarray(value, x.dtype), config)


@register("aten.copy.default")
def copy(x: jax.Array, src: jax.Array, non_blocking: bool = False) -> jax.Array:
    """`src` broadcast to `x`'s shape and cast to its dtype (the out-of-place `x.copy_(src)`)."""
    return jnp.broadcast_to(src, x.shape).astype(x.dtype)


# ---------------------------------------------------------------------------
# 1-D upsampling, for programs in which torch left these ops undecomposed.
# The source positions are computed in numpy in the input's precision, as
# torch's CPU kernels compute them, because a rounding difference there moves
# a nearest-neighbour pick by a whole sample.


def _scale(in_size: int, out_size: int, scale: float | None, align_corners: bool = False) -> float:
    if align_corners:
        return (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return 1.0 / scale if scale is not None and scale > 0 else in_size / out_size


def _out_size(in_size: int, output_size: Sequence[int] | None, scales: Sequence[float] | None) -> int:
    if output_size is not None:
        return int(output_size[0])
    return int(math.floor(in_size * scales[0]))


@register("aten.upsample_nearest1d.vec")
def upsample_nearest1d_vec(
    x: jax.Array, output_size: Sequence[int] | None, scale_factors: Sequence[float] | None
) -> jax.Array:
    """Nearest-neighbour upsampling of `(N, C, L)` to `(N, C, L_out)`."""
    out = _out_size(x.shape[-1], output_size, scale_factors)
    return upsample_nearest1d(x, [out], scale_factors[0] if scale_factors else None)


@register("aten.upsample_nearest1d.default")
def upsample_nearest1d(x: jax.Array, output_size: Sequence[int], scales: float | None = None) -> jax.Array:
    """Nearest-neighbour upsampling of `(N, C, L)` to `(N, C, output_size[0])`: `src = floor(i * L / L_out)`."""
    in_size, out = x.shape[-1], int(output_size[0])
    scale = np.float32(_scale(in_size, out, scales))
    src = np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int64), in_size - 1)
    return x[..., src]


@register("aten.upsample_linear1d.vec")
def upsample_linear1d_vec(
    x: jax.Array, output_size: Sequence[int] | None, align_corners: bool, scale_factors: Sequence[float] | None
) -> jax.Array:
    """Linear interpolation of `(N, C, L)` to `(N, C, L_out)`."""
    out = _out_size(x.shape[-1], output_size, scale_factors)
    return upsample_linear1d(x, [out], align_corners, scale_factors[0] if scale_factors else None)


@register("aten.upsample_linear1d.default")
def upsample_linear1d(
    x: jax.Array, output_size: Sequence[int], align_corners: bool, scales: float | None = None
) -> jax.Array:
    """Linear interpolation of `(N, C, L)` to `(N, C, output_size[0])` with torch's source positions."""
    in_size, out = x.shape[-1], int(output_size[0])
    ftype = np.float64 if x.dtype == jnp.float64 else np.float32
    scale = ftype(_scale(in_size, out, scales, align_corners))
    i = np.arange(out, dtype=ftype)
    src = i * scale if align_corners else np.maximum((i + ftype(0.5)) * scale - ftype(0.5), ftype(0))
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    weight = jnp.asarray((src - lo).astype(ftype), x.dtype)
    return x[..., lo] * (1 - weight) + x[..., hi] * weight


def _along_height(upsample, x: jax.Array, *args) -> jax.Array:
    """Apply a last-axis resampling to the height axis of `(N, C, H, W)`."""
    return jnp.swapaxes(upsample(jnp.swapaxes(x, -1, -2), *args), -1, -2)


@register("aten.upsample_bilinear2d.vec")
def upsample_bilinear2d_vec(
    x: jax.Array, output_size: Sequence[int] | None, align_corners: bool, scale_factors: Sequence[float] | None
) -> jax.Array:
    """Bilinear interpolation of `(N, C, H, W)` to `(N, C, H_out, W_out)`."""
    scales = list(scale_factors) if scale_factors else [None, None]
    sizes = output_size or [math.floor(x.shape[-2] * scales[0]), math.floor(x.shape[-1] * scales[1])]
    return upsample_bilinear2d(x, sizes, align_corners, *scales)


@register("aten.upsample_bilinear2d.default")
def upsample_bilinear2d(
    x: jax.Array,
    output_size: Sequence[int],
    align_corners: bool,
    scales_h: float | None = None,
    scales_w: float | None = None,
) -> jax.Array:
    """Bilinear interpolation of `(N, C, H, W)` to `(N, C, *output_size)`: linear along the width, then the height."""
    x = upsample_linear1d(x, [int(output_size[1])], align_corners, scales_w)
    return _along_height(upsample_linear1d, x, [int(output_size[0])], align_corners, scales_h)


@register("aten.upsample_nearest2d.vec")
def upsample_nearest2d_vec(
    x: jax.Array, output_size: Sequence[int] | None, scale_factors: Sequence[float] | None
) -> jax.Array:
    """Nearest-neighbour upsampling of `(N, C, H, W)` to `(N, C, H_out, W_out)`."""
    scales = list(scale_factors) if scale_factors else [None, None]
    sizes = output_size or [math.floor(x.shape[-2] * scales[0]), math.floor(x.shape[-1] * scales[1])]
    return upsample_nearest2d(x, sizes, *scales)


@register("aten.upsample_nearest2d.default")
def upsample_nearest2d(
    x: jax.Array, output_size: Sequence[int], scales_h: float | None = None, scales_w: float | None = None
) -> jax.Array:
    """Nearest-neighbour upsampling of `(N, C, H, W)` to `(N, C, *output_size)`, one axis at a time."""
    x = upsample_nearest1d(x, [int(output_size[1])], scales_w)
    return _along_height(upsample_nearest1d, x, [int(output_size[0])], scales_h)
