"""TorchScript modules (`torch.jit.script`/`trace`/`load`) as modules `torch.export` can trace."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch

from ._errors import JaxjacError, first_line


def from_torchscript(scripted: torch.jit.ScriptModule, sample_shape: tuple[int, ...], where: str) -> torch.nn.Module:
    """`scripted` rebuilt by torch's TorchScript-to-export converter, traced on a zero batch of one.

    **Arguments:** `sample_shape`, the shape of one sample; `where` names the
    module in errors (a file, or "the TorchScript module").

    **Returns:** an `nn.Module` whose parameters are the scripted module's
    parameters (the converter lifts every tensor as a buffer).
    """
    from torch._export.converter import TS2EPConverter

    training = scripted.training
    scripted.eval()
    dtype = next((t.dtype for t in (*scripted.parameters(), *scripted.buffers()) if t.is_floating_point()), None)
    sample = torch.zeros((1, *sample_shape), dtype=dtype or torch.float32)
    try:
        with quiet_converter():
            module = TS2EPConverter(scripted, (sample,)).convert().module()
    except Exception as error:  # the converter raises many types; keep its first line
        raise JaxjacError(
            f"{where}: could not convert the TorchScript module to torch.export on an input of shape "
            f"{tuple(sample.shape)}: {first_line(error)}. Convert the original nn.Module (a state_dict with "
            "--arch on the command line) instead"
        ) from error
    finally:
        scripted.train(training)
    _restore_parameters(module, [name for name, _ in scripted.named_parameters()])
    # Traced in eval mode; the flags say whether the user handed over a training module. Set
    # directly: a module unlifted from an ExportedProgram refuses train() and eval().
    for m in module.modules():
        m.training = training
    return module


def _restore_parameters(module: torch.nn.Module, names: list[str]) -> None:
    # Re-registered as parameters so that they become nnx.Param, not Buffer, in JAX. The
    # converter drops submodules that forward never uses (an auxiliary head): nothing to restore.
    for name in names:
        owner_name, _, leaf = name.rpartition(".")
        try:
            owner = module.get_submodule(owner_name)
        except AttributeError:
            continue
        if leaf in owner._buffers:
            tensor = owner._buffers.pop(leaf)
            owner.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """Silence torch.export's logging, and the warnings of its TorchScript converter about its own internals."""
    logger = logging.getLogger("torch._export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Manually populate .* never used by the ExportedProgram")
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
