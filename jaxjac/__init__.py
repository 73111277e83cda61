"""jaxjac: per-sample input Jacobians of PyTorch 1D CNNs, computed in JAX.

>>> model = jaxjac.convert(torch_net, X[:1])    # doctest: +SKIP
>>> J = jaxjac.jacobian(model, X)               # doctest: +SKIP
>>> J.shape                                     # doctest: +SKIP
(194109, 3, 1, 224)
"""

from __future__ import annotations

import os as _os

# The lowering rules live in the top-level `converters/` folder, which the
# wheel installs as `jaxjac.converters`. Run from a source checkout (say
# `python -m bench` in the repository root) the package would not find them:
# there, look for the folder beside the package too.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "converters")) and _os.path.isfile(
    _os.path.join(_checkout, "converters", "registry.py")
):
    __path__.append(_checkout)

from typing import TYPE_CHECKING

from ._errors import ConversionCheckError as ConversionCheckError
from ._errors import JaxjacError as JaxjacError
from ._errors import LoweringError as LoweringError
from ._errors import UnsupportedOpError as UnsupportedOpError
from ._versions import package_version as _package_version

if TYPE_CHECKING:
    from ._artifact import load as load
    from ._artifact import save as save
    from ._attribute import attribute as attribute
    from ._attribute import attribution_fn as attribution_fn
    from ._convert import convert as convert
    from ._distributed import read_sharded as read_sharded
    from ._importance import ImportanceReport as ImportanceReport
    from ._importance import importance as importance
    from ._jacobian import jacobian as jacobian
    from ._jacobian import jacobian_fn as jacobian_fn
    from ._model import Buffer as Buffer
    from ._model import ConvertedModel as ConvertedModel
    from ._xla_options import compiler_options as compiler_options

__version__ = _package_version("jaxjac") or "0+unknown"

# `convert` (which needs torch) is left out so that `from jaxjac import *` works without torch.
__all__ = [
    "Buffer",
    "ConversionCheckError",
    "ConvertedModel",
    "ImportanceReport",
    "JaxjacError",
    "LoweringError",
    "UnsupportedOpError",
    "attribute",
    "attribution_fn",
    "compiler_options",
    "importance",
    "jacobian",
    "jacobian_fn",
    "load",
    "read_sharded",
    "save",
]


# Imported on first use: `convert` needs torch, so that loading and running a
# converted model works without torch; the Flax module imports Flax (a third
# of a second), and neither it nor the attribution machinery is on the path of
# `jaxjac jacobian`, whose start-up is part of every run. Even JAX (half a
# second) waits until a name needs it, so that the command line answers
# `--help` at once and a Ctrl-C while JAX loads is the command's to report.
_LAZY = {
    "load": "._artifact",
    "save": "._artifact",
    "jacobian": "._jacobian",
    "jacobian_fn": "._jacobian",
    "read_sharded": "._distributed",
    "compiler_options": "._xla_options",
    "convert": "._convert",
    "ConvertedModel": "._model",
    "Buffer": "._model",
    "attribute": "._attribute",
    "attribution_fn": "._attribute",
    "importance": "._importance",
    "ImportanceReport": "._importance",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxjac' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
