"""Reads a torch checkpoint of any common kind into a module `convert` can trace.

Formats are told apart by content, never by file extension:

- a TorchScript archive (`torch.jit.save`): a zip with `code/` entries;
- an ExportedProgram (`torch.export.save`, `.pt2`): a zip with
  `models/model.json` or `archive_format`;
- a state_dict (`torch.save(net.state_dict())`), possibly nested in a
  training checkpoint: needs the architecture (`arch="package.module:Class"`);
- a pickled module (`torch.save(net)`): refused unless `allow_pickle=True`,
  because unpickling runs arbitrary code.

Everything but an allowed pickle is read with `weights_only=True`. torch is
imported inside the functions, so `import jaxjac` never needs it.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._durable import path_kind
from ._errors import JaxjacError, first_line
from ._state_dicts import match_key_prefix, unwrap_state_dict

if TYPE_CHECKING:
    import torch

_ARCH_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_PICKLE_HINT = (
    "unpickling it executes arbitrary code from the file. Load it only if you trust its source, with "
    "allow_pickle=True (`--allow-pickle` on the command line), or save a state_dict and pass --arch instead"
)


@dataclass
class Checkpoint:
    """A checkpoint read into a torch module.

    `net` is in eval mode. `sample_shape` is the shape of one input sample
    when the file records it (ExportedPrograms do), else `None`. `notes` are
    one-line remarks for the user (unwrapped nesting, stripped prefixes).
    """

    net: torch.nn.Module
    format: str
    sample_shape: tuple[int, ...] | None = None
    notes: list[str] = field(default_factory=list)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    sample_shape: tuple[int, ...] | None = None,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    allow_pickle: bool = False,
) -> Checkpoint:
    """Read `path` into a torch module, whatever kind of checkpoint it is.

    **Arguments:**

    - `path`: the checkpoint file.
    - `sample_shape`: the shape of one input sample `(channels, length)`;
      TorchScript needs it to convert, an ExportedProgram records its own.
    - `arch`: ``"package.module:Class"`` (or a factory function) building the
      architecture a state_dict belongs to; imported with the current
      directory on `sys.path`, as `python -m` would.
    - `arch_kwargs`: keyword arguments for `arch`.
    - `allow_pickle`: allow a fully pickled module, which runs code from the file.
    """
    path = Path(path)
    found = path_kind(path)
    if found != "a file":
        raise JaxjacError(f"{path}: expected a torch checkpoint file; found {found}")
    kind = detect_format(path)
    notes: list[str] = []
    if arch is not None and kind in ("torchscript", "exported-program"):
        notes.append(f"ignoring --arch {arch}: {path.name} is {_DESCRIPTIONS[kind]}, which holds its own architecture")
    with _quiet_torch():
        if kind == "torchscript":
            checkpoint = _load_torchscript(path, sample_shape)
        elif kind == "exported-program":
            checkpoint = _load_exported_program(path, sample_shape)
        elif kind == "safetensors":
            checkpoint = _load_safetensors(path, arch, arch_kwargs)
        else:
            checkpoint = _load_pickle_based(path, arch, arch_kwargs, allow_pickle)
    checkpoint.notes[:0] = notes
    if checkpoint.format == "pickled-module" and any(m.training for m in checkpoint.net.modules()):
        checkpoint.notes.append(
            f"{path.name} holds a module saved in train mode; it is converted in eval mode "
            "(BatchNorm uses its running statistics, Dropout is the identity)"
        )
    for m in checkpoint.net.modules():
        # Set the flags directly: unlifted ExportedProgram modules refuse .eval().
        m.training = False
    return checkpoint


_DESCRIPTIONS = {
    "torchscript": "a TorchScript archive",
    "exported-program": "an ExportedProgram (torch.export.save)",
    "torch-pickle": "a torch.save file",
    "safetensors": "a safetensors file of weights",
}


def detect_format(path: Path) -> str:
    """``"torchscript"``, ``"exported-program"``, ``"torch-pickle"`` or ``"safetensors"``, from the file's content."""
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            raise JaxjacError(f"{path}: expected a torch checkpoint; found a damaged zip archive") from None
        # torch.save and torch.jit.save put everything under one top-level folder.
        inner = {name.split("/", 1)[1] for name in names if "/" in name}
        if "models/model.json" in inner or "archive_format" in inner:
            return "exported-program"
        if any(name.startswith("code/") for name in inner):
            return "torchscript"
        if "data.pkl" in inner:
            return "torch-pickle"
        raise JaxjacError(
            f"{path}: expected a torch checkpoint; found a zip archive with no data.pkl, code/ or models/ entries"
        )
    if head[:1] == b"\x80":  # a pickle protocol opcode: the legacy torch.save format
        return "torch-pickle"
    if len(head) == 8 and _looks_like_safetensors(path):
        if _safetensors_format(path) == "jaxjac":
            raise JaxjacError(
                f"{path} is already a jaxjac artifact: pass it to `jaxjac jacobian` or `jaxjac.load` as it is"
            )
        return "safetensors"
    raise JaxjacError(
        f"{path}: expected a torch checkpoint (torch.save, torch.jit.save or torch.export.save); "
        f"found a file starting with {head[:8]!r}"
    )


def _safetensors_format(path: Path) -> str | None:
    """The `format` entry of a safetensors file's metadata (`"pt"`, `"jaxjac"`), if it has one."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            return (f.metadata() or {}).get("format")
    except Exception:  # a damaged header: loading it says so
        return None


def _looks_like_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n < 100_000_000 and f.read(1) == b"{"


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence torch.export's internal logging and warnings that say nothing to a jaxjac user."""
    from ._torchscript import quiet_converter

    with quiet_converter(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*num_batches_tracked.*")
        yield


def _load_torchscript(path: Path, sample_shape: tuple[int, ...] | None) -> Checkpoint:
    import torch

    from ._torchscript import from_torchscript

    if sample_shape is None:
        raise JaxjacError(
            f"{path} is a TorchScript archive, which does not record its input shape; "
            "pass the shape of one sample, e.g. --input-shape 1,224"
        )
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise JaxjacError(
            f"{path}: torch.jit.load could not read the TorchScript archive: {first_line(error)}"
        ) from error
    return Checkpoint(from_torchscript(scripted, tuple(sample_shape), str(path)), "torchscript", tuple(sample_shape))


def _load_exported_program(path: Path, sample_shape: tuple[int, ...] | None) -> Checkpoint:
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as error:  # torch raises many types for damaged archives
        raise JaxjacError(
            f"{path}: torch.export.load could not read the ExportedProgram: {first_line(error)}"
        ) from error
    user_inputs = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    if len(user_inputs) != 1:
        raise JaxjacError(f"{path}: expected a program of one input tensor; found {len(user_inputs)} inputs")
    (placeholder,) = [n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0]]
    shape = tuple(placeholder.meta["val"].shape)
    batch = shape[0]
    if isinstance(batch, int) and batch != 1:
        raise JaxjacError(
            f"{path} was exported with a fixed batch size of {batch}; jaxjac traces one sample at a time. "
            "Export with a dynamic batch dimension: torch.export.export(net, (x,), dynamic_shapes="
            "({0: torch.export.Dim('batch')},)), or save net.state_dict() and pass --arch"
        )
    recorded = tuple(shape[1:]) if all(isinstance(d, int) for d in shape[1:]) else None
    if sample_shape is not None and recorded is not None and tuple(sample_shape) != recorded:
        raise JaxjacError(
            f"--input-shape {','.join(map(str, sample_shape))} does not fit {path}, which was exported for "
            f"samples of shape {recorded}"
        )
    sample_shape = sample_shape or recorded
    if sample_shape is None:
        raise JaxjacError(f"{path} was exported with a dynamic sample shape {shape}; pass --input-shape")
    return Checkpoint(program.module(), "exported-program", tuple(sample_shape))


def _load_pickle_based(
    path: Path, arch: str | None, arch_kwargs: Mapping[str, Any] | None, allow_pickle: bool
) -> Checkpoint:
    import pickle

    import torch

    from_main: list[str] = []
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error).lower() and "unsupported global" not in str(error).lower():
            raise JaxjacError(f"{path}: torch.load could not read it: {first_line(error)}") from error
        if not allow_pickle:
            found = _unsupported_global(error)
            raise JaxjacError(f"{path} holds pickled Python objects{found}; {_PICKLE_HINT}") from None
        obj, from_main = _unpickled(path, arch)
    except Exception as error:  # truncated zips and the like
        raise JaxjacError(f"{path}: torch.load could not read it: {first_line(error)}") from error
    module = _find_module(obj)
    if module is not None:
        notes = [f"ignoring --arch {arch}: {path.name} holds a pickled module"] if arch else []
        if from_main:
            where = str(arch).partition(":")[0]
            notes = [
                f"looked up the classes {path.name} pickled under __main__ ({', '.join(from_main)}) in module {where}"
            ]
        return Checkpoint(module, "pickled-module", None, notes)
    net = None if arch is None else build_arch(arch, arch_kwargs)
    state, notes = unwrap_state_dict(obj, path, None if net is None else list(net.state_dict()))
    return _state_dict_checkpoint(path, state, notes, arch, net)


class _PickledUnderMain(Exception):
    """A pickle names a class of `__main__`, the script that saved it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _unpickled(path: Path, arch: str | None) -> tuple[Any, list[str]]:
    """`torch.load(path)` with pickles allowed, classes imported with the current directory on the path.

    A module saved by a script run as `python train.py` names its classes
    `__main__.Net`, which no other program can import: with `arch`
    (`train:Net`), names under `__main__` are looked up in arch's module.
    Returns the object and the names so looked up.
    """
    import pickle

    import torch

    main = _arch_module(arch) if arch else None

    from_main: list[str] = []

    class MainFromArch(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module != "__main__":
                return super().find_class(module, name)
            if main is None:
                raise _PickledUnderMain(name)
            from_main.append(name)
            return getattr(main, name)

    class PickleModule:  # what torch.load asks of `pickle_module`
        Unpickler = MainFromArch
        load = staticmethod(pickle.load)

    with _cwd_importable():
        try:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=PickleModule), from_main
        except _PickledUnderMain as error:
            raise JaxjacError(
                f"{path}: the pickled module's class {error.name} was defined in a script run as __main__ "
                f"(python train.py), so its code cannot be found; pass --arch with the module that defines it, "
                f"importable from here (--arch train:{error.name}), or save net.state_dict() instead"
            ) from None
        except (ImportError, AttributeError) as error:
            raise JaxjacError(
                f"{path}: the pickled module needs code that cannot be imported from {Path.cwd()}"
                + (f" or --arch {arch}" if main is not None else "")
                + f": {first_line(error)}; run jaxjac from the directory that holds the model's code"
            ) from error


def _load_safetensors(path: Path, arch: str | None, arch_kwargs: Mapping[str, Any] | None) -> Checkpoint:
    """A state_dict saved with `safetensors.torch.save_file` (a Hugging Face `model.safetensors`, say)."""
    from safetensors.torch import load_file

    try:
        state = load_file(path, device="cpu")
    except Exception as error:  # safetensors reports bad framing with its own error types
        raise JaxjacError(f"{path}: the safetensors file cannot be read ({first_line(error)})") from error
    if not state:
        raise JaxjacError(f"{path}: expected a state_dict of tensors; found a safetensors file with no tensors")
    return _state_dict_checkpoint(path, state, [], arch, None if arch is None else build_arch(arch, arch_kwargs))


def _state_dict_checkpoint(
    path: Path, state: dict[str, Any], notes: list[str], arch: str | None, net: torch.nn.Module | None
) -> Checkpoint:
    """`net`, built from `--arch`, with the weights of `state` loaded (under whatever prefix holds them)."""
    if arch is None or net is None:
        example = next(iter(state), "")
        raise JaxjacError(
            f"{path} holds a state_dict ({len(state)} tensors, e.g. `{example}`) but not the architecture; "
            "pass --arch package.module:Class (and --arch-kwargs JSON if it takes arguments)"
        )
    state, prefix_notes = match_key_prefix(state, list(net.state_dict()))
    _load_strict(net, state, path, arch)
    return Checkpoint(net, "state-dict", None, notes + prefix_notes)


def _find_module(obj: Any) -> torch.nn.Module | None:
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, Mapping):
        for key in ("model", "module", "net"):
            if isinstance(obj.get(key), torch.nn.Module):
                return obj[key]
    return None


def _arch_module(arch: str) -> Any:
    """The module of ``"package.module:Class"``, imported with the current directory on `sys.path`."""
    if not _ARCH_PATTERN.match(arch):
        raise JaxjacError(f"--arch must look like package.module:Class; got {arch!r}")
    module_name = arch.partition(":")[0]
    with _cwd_importable():
        try:
            return importlib.import_module(module_name)
        except ImportError as error:
            raise JaxjacError(
                f"--arch {arch}: cannot import {module_name!r} from {Path.cwd()} or the installed packages "
                f"({first_line(error)}); run jaxjac from the directory that holds your model code"
            ) from error
        except Exception as error:  # the module's own code failed (SyntaxError, a failing import-time call)
            raise JaxjacError(
                f"--arch {arch}: importing {module_name!r} failed with {type(error).__name__}: {first_line(error)}"
            ) from error


def build_arch(arch: str, arch_kwargs: Mapping[str, Any] | None) -> torch.nn.Module:
    """Import and instantiate ``"package.module:Class"`` with `arch_kwargs`."""
    import torch

    module = _arch_module(arch)
    module_name, _, attr = arch.partition(":")
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise JaxjacError(f"--arch {arch}: module {module_name!r} has no attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise JaxjacError(f"--arch {arch}: expected a class or factory function; found a {type(target).__name__}")
    kwargs = dict(arch_kwargs or {})
    try:
        inspect.signature(target).bind(**kwargs)
    except TypeError as error:
        raise JaxjacError(f"--arch-kwargs {kwargs} do not fit {arch}: {first_line(error)}") from error
    except ValueError:  # no signature to check (a builtin): the call below tells
        pass
    try:
        net = target(**kwargs)
    except Exception as error:
        raise JaxjacError(
            f"--arch {arch}: building it with --arch-kwargs {kwargs} raised {type(error).__name__}: {first_line(error)}"
        ) from error
    if not isinstance(net, torch.nn.Module):
        raise JaxjacError(f"--arch {arch}: expected it to build a torch.nn.Module; it built a {type(net).__name__}")
    return net


def _load_strict(net: torch.nn.Module, state: dict[str, Any], path: Path, arch: str) -> None:
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches raise even when not strict
        detail = " ".join(str(error).split("\n\t")[1:2]).strip() or first_line(error)
        raise JaxjacError(f"{path} does not fit --arch {arch}: {detail}") from error
    problems = []
    for label, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)):
        if keys:
            shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
            problems.append(f"{len(keys)} {label} key{'s' if len(keys) != 1 else ''} ({shown})")
    if problems:
        raise JaxjacError(f"{path} does not fit --arch {arch}: {'; '.join(problems)}")


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """Put the current directory first on `sys.path`, as `python -m` does, for the block."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _unsupported_global(error: Exception) -> str:
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    return f" (e.g. {match.group(1)})" if match else ""
