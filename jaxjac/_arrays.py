"""Arrays in and out of the library API: samples, labels and batch sizes as users pass them.

Users hand over numpy arrays, memory-mapped `.npy` files, h5py or zarr
datasets, JAX arrays, torch tensors (which may still require grad) and plain
lists. These helpers turn each into what the engines take, and check it
against the model with an error that says what was expected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import ml_dtypes
import numpy as np

from ._batching import round_to_devices
from ._errors import JaxjacError
from ._formulations import check_labels
from ._readers import Reader
from ._sources import ArraySource

if TYPE_CHECKING:
    from ._graph_model import ModelInterface


def is_torch_tensor(x: Any) -> bool:
    """True for a torch tensor, without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach") and hasattr(x, "numpy")


def as_array(x: Any) -> Any:
    """`x` unchanged if it is a JAX array or a row-sliceable array; torch tensors and lists as numpy arrays."""
    if is_torch_tensor(x):
        import torch  # imported already: x is a torch tensor

        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16; ml_dtypes' has the same bits
            return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return x.numpy()
    if isinstance(x, jax.Array) or (hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "__getitem__")):
        return x
    return np.asarray(x)


def as_target(target: Any) -> Any:
    """A target with label arrays in any form (list, torch tensor) as arrays; names and indices unchanged."""
    if isinstance(target, str | int | np.integer) or target is None:
        return target
    if isinstance(target, list | tuple) or is_torch_tensor(target):
        return as_array(target)
    return target


def check_samples(x: Any, sample_shape: tuple[int, ...], what: str = "input") -> Any:
    """`as_array(x)`, checked to be real-valued samples `(N, *sample_shape)`."""
    x = as_array(x)
    dtype = np.dtype(x.dtype)
    # JAX's issubdtype also knows ml_dtypes' floats (bfloat16), which numpy's calls void.
    if not (jax.numpy.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise JaxjacError(f"{what} must hold real numbers; got an array of dtype {dtype}")
    if len(x.shape) < 1 or tuple(x.shape[1:]) != tuple(sample_shape):
        raise JaxjacError(f"{what} has samples of shape {tuple(x.shape[1:])}; the model expects {tuple(sample_shape)}")
    return x


def batch_labels(labels: Any, n: int, n_outputs: int) -> Any:
    """One batch's labels `(n,)`: checked now where their values are known, else (under a jit) by shape.

    Labels known only inside a jit are checked by the program itself, which
    turns the rows of labels that are not classes into NaN.
    """
    if not isinstance(labels, jax.core.Tracer):
        labels = np.asarray(as_array(labels))
    if tuple(labels.shape) != (n,):
        raise JaxjacError(f"labels have shape {tuple(labels.shape)}; expected ({n},), one per sample of the batch")
    return labels if isinstance(labels, jax.core.Tracer) else check_labels(labels, n, n_outputs)


def positive_int(value: Any, name: str) -> int:
    """`value` as an int, if it is a positive whole number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise JaxjacError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def batch_size_for(batch_size: int, n: int) -> int:
    """The batch size for `n` rows: `batch_size`, or less when the data is smaller.

    Less data is not padded to the full batch, but the size is rounded up to
    a number with three significant bits (at most 25% padding), so that calls
    on many different small sizes share a few compiled programs; then to a
    multiple of the device count.
    """
    size = min(positive_int(batch_size, "batch_size"), _coarse(max(n, 1)))
    return round_to_devices(size, jax.device_count())


def _coarse(n: int) -> int:
    step = 1 << max(n.bit_length() - 3, 0)
    return -(-n // step) * step


def array_reader(model: ModelInterface, x: Any) -> Reader:
    """A `Reader` over an array of samples `(N, *sample_shape)` in memory or memory-mapped."""
    source = ArraySource(check_samples(x, model.sample_shape))
    return Reader("<array>", source, sample_shape=model.sample_shape, dtype=model.dtype, cube=False, notes=[])


class ArrayWriter:
    """An in-memory sink for `run_stream`'s row programs."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.array = np.empty(shape, dtype)

    def write(self, start: int, rows: np.ndarray) -> None:
        self.array[start : start + rows.shape[0]] = rows

    def flush(self) -> None:
        pass
