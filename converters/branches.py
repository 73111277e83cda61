"""Branches on the data, traced one way and guarded (see `jaxjac._branches`).

A forward that branches on its input's values (`if torch.isnan(x).any():`)
has no single program. jaxjac traces the branch the example input takes, and
records each such condition as a `jaxjac.branch_guard` node. A sample whose
conditions come out otherwise would need another program: its outputs, and
so its Jacobian rows, are NaN rather than silently those of the wrong branch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from .registry import register

BRANCH_GUARD = "jaxjac.branch_guard"


@register(BRANCH_GUARD)
def branch_guard(condition: jax.Array, site: str) -> jax.Array:
    """Whether the traced branch at `site` (``"model.py:42"``) is the one this input takes: a bool scalar."""
    return jnp.all(condition)


def branch_sites(nodes: Sequence) -> list[str]:
    """Where (`file:line`) the forward of a graph with these nodes branched on its input, in order, once each."""
    return list(dict.fromkeys(node.args[1] for node in nodes if node.op == BRANCH_GUARD))


def branch_note(nodes: Sequence) -> str | None:
    """What a user running the model on data should know of its traced branches, or None without any."""
    sites = branch_sites(nodes)
    if not sites:
        return None
    return (
        f"the model's forward branches on its input's values (at {', '.join(sites)}); it was converted with the "
        "branches its example took there, and samples that take others get NaN rows"
    )


def poisoned_unless(outputs: Sequence[jax.Array], guards: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    """`outputs`, with every float value NaN where some guard is false.

    A product with NaN, not a `where`: `where` would pass a zero gradient to
    the branch not taken, so the Jacobian of a wrongly traced sample would
    read as zeros; NaN times anything keeps its rows NaN too.
    """
    if not guards:
        return tuple(outputs)
    taken = jnp.all(jnp.stack([jnp.asarray(g, bool) for g in guards]))
    return tuple(_times(out, jnp.where(taken, 1.0, jnp.nan)) for out in outputs)


def _times(out: jax.Array, factor: jax.Array) -> jax.Array:
    if not (jnp.issubdtype(out.dtype, jnp.floating) or jnp.issubdtype(out.dtype, jnp.complexfloating)):
        return out
    return out * factor.astype(out.dtype)
