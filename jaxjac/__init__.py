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

from ._artifact import load as load
from ._artifact import save as save
from ._attribute import attribute as attribute
from ._attribute import attribution_fn as attribution_fn
from ._errors import ConversionCheckError as ConversionCheckError
from ._errors import JaxjacError as JaxjacError
from ._errors import UnsupportedOpError as UnsupportedOpError
from ._importance import ImportanceReport as ImportanceReport
from ._importance import importance as importance
from ._jacobian import jacobian as jacobian
from ._jacobian import jacobian_fn as jacobian_fn
from ._model import Buffer as Buffer
from ._model import ConvertedModel as ConvertedModel
from ._versions import package_version as _package_version

__version__ = _package_version("jaxjac") or "0+unknown"

# `convert` (which needs torch) is left out so that `from jaxjac import *` works without torch.
__all__ = [
    "Buffer",
    "ConversionCheckError",
    "ConvertedModel",
    "ImportanceReport",
    "JaxjacError",
    "UnsupportedOpError",
    "attribute",
    "attribution_fn",
    "importance",
    "jacobian",
    "jacobian_fn",
    "load",
    "save",
]


def __getattr__(name: str):
    # `convert` needs torch; import it only when asked, so that loading and
    # running a converted model works in an environment without torch.
    if name == "convert":
        from ._convert import convert

        return convert
    raise AttributeError(f"module 'jaxjac' has no attribute {name!r}")
