"""Lowering rules from core ATen ops to JAX, one module per op family.

Importing this package fills the registry; `lookup` and `supported_ops` read it.
"""

from . import (  # noqa: F401  (imported to register their lowerings)
    activation,
    branches,
    conv,
    creation,
    elementwise,
    layout,
    linalg,
    linear,
    norm,
    pool,
    recurrent,
    reduction,
    sampling,
    scalar,
    shape,
    sorting,
    special,
    spectral,
)
from .registry import lookup as lookup
from .registry import register as register
from .registry import supported_ops as supported_ops
