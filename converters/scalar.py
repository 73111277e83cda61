"""Python numbers read from tensors (`.item()`) and the arithmetic torch.export records on them.

`t.item()` of a float tensor computed from the input becomes a traced scalar
that no gradient flows through, as in torch, where it is a plain Python float
to autograd: torchlibrosa's `clamp(x, min=x.max().item() - top_db)` or a
normalisation by `x.abs().max().item()`. A number read back from the input
and used as a shape or an index, which must not depend on the input's values,
stops the trace, and the interpreter says so.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .registry import register


@register("aten._local_scalar_dense.default", "aten.item.default")
def item(x: Any) -> Any:
    """The one value of `x`: a Python number if it is known without the input, else a gradient-free scalar.

    Used as a size or an index, such a scalar stops the trace with JAX's
    concretization error, which the interpreter reports as a shape that
    depends on the input's values.
    """
    if not isinstance(x, jax.core.Tracer):
        return np.asarray(x).reshape(()).item()
    return lax.stop_gradient(jnp.reshape(x, ()))


for _name, _fn in {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "neg": operator.neg,
    "pow": operator.pow,
}.items():
    register(f"_operator.{_name}")(_fn)
