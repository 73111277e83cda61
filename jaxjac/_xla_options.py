"""The XLA compiler options jaxjac compiles with: the workaround for a CPU miscompilation.

XLA's CPU backend (seen in jaxlib 0.10.2) hands reductions, with the
elementwise work fused around them, to the YNNPACK library, which computes
some float32 batched gradients wrong. `jax.jit(jax.vmap(jax.jacrev(lambda x:
x * x.sum(-1, keepdims=True))))` on an `(8, 4, 64)` batch is 17% off the
per-sample Jacobians, and the Jacobians of models with a LayerNorm over many
time steps (tsai's TransformerModel and gMLP) are up to 65% off from a batch
of 4 rows on, while their forward outputs and float64 are right. Leaving
YNNPACK only the single matrix products (the default in other XLA sources)
gives exact rows, and was 1-4% faster on the benchmark models.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["compiler_options"]

# The field is a list of fusion kinds; a compile option sets it to the one kind given.
_YNN_FUSIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compiler_options(platform: str | None = None) -> dict[str, str]:
    """The XLA options that jaxjac compiles with on `platform`.

    **Arguments:**

    - `platform`: ``"cpu"``, ``"gpu"``, ``"tpu"``...; by default JAX's default backend.

    **Returns:** a new dict for `jax.jit(..., compiler_options=...)` or
    `.lower(...).compile(...)`: on CPUs whose XLA knows the option, YNNPACK
    keeps only single matrix products (see this module's docstring for the
    miscompilation it avoids); elsewhere empty.

    jaxjac's own functions (`jacobian_fn`, `attribution_fn`, the model's
    forward) are jitted with these. Inside a `jax.jit` of your own they are
    compiled with your options, so pass these there too:

    >>> fast = jax.jit(step, compiler_options=jaxjac.compiler_options())   # doctest: +SKIP
    """
    if (platform or jax.default_backend()) != "cpu":
        return {}
    return dict(_accepted_cpu_options())


@functools.cache
def _accepted_cpu_options() -> tuple[tuple[str, str], ...]:
    # An XLA without the field (older or newer) rejects it at compile time: ask once.
    options = tuple(_YNN_FUSIONS.items())
    try:
        x = jax.device_put(np.float32(0), jax.devices("cpu")[0])
        jax.jit(lambda v: v + 1).lower(x).compile(dict(options))
    except Exception:  # noqa: BLE001  (any refusal means: compile as XLA chooses)
        return ()
    return options


def jit(fn: Callable) -> Callable:
    """`jax.jit(fn)`, compiled with jaxjac's compiler options when called at the top level.

    JAX refuses compiler options on a jit nested in another trace, and a
    function handed to the user (`jacobian_fn`'s, the model's forward) may
    be called inside the user's own `jax.jit`: there it is the plain jit,
    inlined and compiled with the caller's options.
    """
    plain = jax.jit(fn)
    options = compiler_options()
    if not options:
        return plain
    with_options = jax.jit(fn, compiler_options=options)

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        return (plain if _under_a_trace(args) else with_options)(*args)

    return call


def top_level_jit(fn: Callable, **kwargs: Any) -> Any:
    """`jax.jit(fn, **kwargs)` with jaxjac's compiler options, for programs only jaxjac calls (never nested)."""
    return jax.jit(fn, compiler_options=compiler_options() or None, **kwargs)


def _under_a_trace(args: tuple) -> bool:
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args)):
        return True
    try:  # also a call on constants inside a trace, where JAX's private API tells it
        from jax._src import core

        return not core.trace_state_clean()
    except (ImportError, AttributeError):
        return False
