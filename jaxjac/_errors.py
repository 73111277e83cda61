"""The exceptions jaxjac raises for problems a user can fix."""

from __future__ import annotations

ISSUES_URL = "https://github.com/jaxjac/jaxjac/issues"


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message (its type's name if it has none), for a one-line error."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class JaxjacError(Exception):
    """A problem with the user's input, model or files, explained in one line.

    The CLI prints these without a traceback and exits non-zero.
    """


class UnsupportedOpError(JaxjacError):
    """An ATen op in the model has no JAX lowering."""

    def __init__(self, op: str, where: str, others: int = 0, *, kind: str = "") -> None:
        more = f" (and {others} other unsupported op{'s' if others != 1 else ''})" if others else ""
        if kind == "random":
            message = (
                f"ATen op `{op}` from {where} draws random numbers on every call, eval mode included{more}, so "
                "the model's output is no function of its input and has no exact Jacobian; jaxjac converts "
                "deterministic models: switch that noise off for inference (a flag, or `if self.training:`)"
            )
        elif kind == "data-dependent":
            message = (
                f"ATen op `{op}` from {where} makes a shape depend on the input's values{more} (boolean-mask "
                "indexing, nonzero, .item()); jaxjac needs every shape fixed by the input's shape: rewrite it "
                "with torch.where or a multiplication by the mask"
            )
        else:
            message = (
                f"ATen op `{op}` from {where} has no JAX lowering{more}; "
                f"jaxjac refuses to build a model it cannot run exactly. Please report it at {ISSUES_URL} "
                f"with the layer that produced it; `jaxjac.converters.supported_ops()` lists what is covered."
            )
        super().__init__(message)
        self.op = op


class LoweringError(JaxjacError):
    """An ATen op has a lowering, but it failed on the arguments this model gives it: a gap in jaxjac."""

    def __init__(self, op: str, where: str, error: BaseException) -> None:
        super().__init__(
            f"ATen op `{op}` from {where} failed to lower ({type(error).__name__}: {first_line(error)}); "
            f"its rule does not cover these arguments. Please report it at {ISSUES_URL} with the layer "
            "that produced it (--debug, or the exception's __cause__, has the traceback)"
        )
        self.op = op


class ConversionCheckError(JaxjacError):
    """The converted model disagrees with torch beyond the tolerance."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report
