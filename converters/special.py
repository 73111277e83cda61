"""Special functions: gamma and its logarithmic derivatives, Bessel functions, the normal quantile, zeta.

Probabilistic heads compute them in forward: a Student-t's or a negative
binomial's log-likelihood and entropy take `lgamma` and `digamma`, a von
Mises's normaliser takes `i0e`. Integer inputs become float, as in torch.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import jax.scipy.special as sp

from .elementwise import as_float, unary_float
from .registry import register

for _op, _fn in {
    "lgamma": sp.gammaln,
    "digamma": sp.digamma,
    "i0": sp.i0,
    "special_i0e": sp.i0e,
    "special_i1": sp.i1,
    "special_i1e": sp.i1e,
    "special_ndtri": sp.ndtri,
    "special_erfcx": sp.erfcx,
}.items():
    register(f"aten.{_op}.default")(unary_float(_fn))


@register("aten.polygamma.default")
def polygamma(n: int, x: Any) -> Any:
    """The `n`-th derivative of `digamma`, elementwise."""
    return sp.polygamma(n, as_float(x))


@register("aten.special_zeta.default")
@register("aten.special_zeta.self_scalar")
@register("aten.special_zeta.other_scalar")
def zeta(x: Any, q: Any) -> Any:
    """Hurwitz's zeta function `sum_k (k + q) ** -x`, elementwise."""
    x, q = as_float(x), as_float(q)
    return sp.zeta(*jnp.broadcast_arrays(x, q))
