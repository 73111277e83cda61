"""Measure channels-first against channels-last convolution layouts on XLA, for the seed-shaped CNN.

jaxjac interprets torch graphs in torch's channels-first layout and lets XLA's
layout assignment choose physical layouts. This probe writes the same network
by hand in both layouts, with jaxjac's pooling formulation, and times the
forward pass and the per-sample Jacobian, interleaving the variants so that
machine load affects them alike. Run: `python -m bench.layout_probe`.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CHANNELS = ((1, 16, 5), (16, 32, 5), (32, 64, 3))


def _params(seed: int = 0):
    rng = np.random.default_rng(seed)
    convs = [jnp.asarray(rng.standard_normal((o, i, k)) * 0.3, jnp.float32) for i, o, k in CHANNELS]
    fc = jnp.asarray(rng.standard_normal((3, 64 * 28)) * 0.05, jnp.float32)
    return convs, fc


def _pool(x: jax.Array, axis: int) -> jax.Array:
    # jaxjac's max pool for tiling windows: slice, reshape, value at the first argmax.
    n = x.shape[axis] // 2
    x = lax.slice_in_dim(x, 0, 2 * n, axis=axis)
    x = x.reshape((*x.shape[:axis], n, 2, *x.shape[axis + 1 :]))
    arg = jnp.argmax(x, axis=axis + 1, keepdims=True)
    return jnp.take_along_axis(x, arg, axis=axis + 1).squeeze(axis + 1)


def network(params, x: jax.Array, channels_last: bool) -> jax.Array:
    """The seed-shaped CNN on `x` `(N, 1, 224)`; returns logits `(N, 3)`."""
    convs, fc = params
    if channels_last:
        x = jnp.transpose(x, (0, 2, 1))
    for w, (_, _, k) in zip(convs, CHANNELS, strict=True):
        if channels_last:
            x = lax.conv_general_dilated(
                x, jnp.transpose(w, (2, 1, 0)), (1,), [(k // 2, k // 2)], dimension_numbers=("NHC", "HIO", "NHC")
            )
        else:
            x = lax.conv_general_dilated(x, w, (1,), [(k // 2, k // 2)], dimension_numbers=("NCH", "OIH", "NCH"))
        x = _pool(jnp.where(x > 0, x, 0), axis=1 if channels_last else 2)
    if channels_last:
        x = jnp.transpose(x, (0, 2, 1))
    return x.reshape(x.shape[0], -1) @ fc.T


def main(n: int = 4096, repeats: int = 7) -> None:
    params = _params()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((n, 1, 224)), jnp.float32)
    variants = {}
    for name, cl in (("channels-first", False), ("channels-last", True)):
        forward = jax.jit(lambda p, x, cl=cl: network(p, x, cl))
        jac = jax.jit(
            jax.vmap(jax.jacrev(lambda p, xi, cl=cl: network(p, xi[None], cl)[0], argnums=1), in_axes=(None, 0))
        )
        variants[f"{name} forward"] = lambda f=forward: f(params, x).block_until_ready()
        variants[f"{name} jacobian"] = lambda f=jac: f(params, x).block_until_ready()
    times = {name: [] for name in variants}
    for fn in variants.values():
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print(f"| variant | samples/s (median of {repeats}, N={n}) |\n|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {n / statistics.median(ts):,.0f} |")


if __name__ == "__main__":
    main()
