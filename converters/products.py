"""The operands of matrix products and convolutions under `precision="bfloat16"`.

Precision `"float32"` and `"tf32"` are XLA precision settings (JAX's
`default_matmul_precision`). bfloat16 is not one on every backend: XLA's
`DEFAULT` precision is one bfloat16 pass on TPUs but TF32 for float32 operands
on NVIDIA GPUs. So within `bfloat16_operands()` the product lowerings round
their float32 operands to bfloat16 themselves and sum the products in float32
(`preferred_element_type`), the same computation on every backend.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp

_BFLOAT16 = contextvars.ContextVar("jaxjac_bfloat16_operands", default=False)


@contextlib.contextmanager
def bfloat16_operands() -> Iterator[None]:
    """While tracing within, float32 product and convolution operands are rounded to bfloat16."""
    token = _BFLOAT16.set(True)
    try:
        yield
    finally:
        _BFLOAT16.reset(token)


def product_operands(*arrays: jax.Array) -> tuple[tuple[jax.Array, ...], jnp.dtype | None]:
    """`arrays` as a product's operands, and the result dtype to ask for (None: the operands' own).

    Only float32 operands are rounded: a float64 model keeps its precision.
    """
    if not _BFLOAT16.get() or any(jnp.result_type(a) != jnp.float32 for a in arrays):
        return arrays, None
    return tuple(jnp.asarray(a).astype(jnp.bfloat16) for a in arrays), jnp.dtype(jnp.float32)
