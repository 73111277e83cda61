"""Helpers shared by the subcommands: argument types and one-line messages."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .._durable import folder_problem, path_kind
from .._errors import JaxjacError

_SHAPE = re.compile(r"^\s*[\(\[]?\s*(\d+\s*(,\s*\d+\s*)*),?\s*[\)\]]?\s*$")


def add_precision_flag(group: argparse._ActionsContainer) -> None:
    """`--precision`, shared by the commands that compile a model."""
    group.add_argument(
        "--precision",
        choices=("float32", "tf32", "bfloat16", "default"),
        default="float32",
        help="products and convolutions: float32 (exact, default); tf32 (GPUs' tensor cores); bfloat16 "
        "(operands rounded, on every backend); default (XLA's choice)",
    )


def parse_shape(text: str) -> tuple[int, ...]:
    """`'1,224'`, `'224'`, `'(1, 224)'` or `'[1, 224]'` -> `(1, 224)`; an argparse type."""
    match = _SHAPE.match(text)
    dims = tuple(int(d) for d in match.group(1).split(",")) if match else ()
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(
            f"expected the shape of one sample as positive integers like 1,224 (channels,length); got {text!r}"
        )
    return dims


def parse_json_object(text: str) -> dict[str, Any]:
    """A JSON object such as `'{"n_classes": 3}'`; an argparse type."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"n_classes\": 3}}'; got {text!r} ({error.msg} at column {error.colno})"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"n_classes\": 3}}'; got {text!r}")
    return value


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def print_error(message: str) -> None:
    """Print `jaxjac: error: <message>` as one line on stderr."""
    print(f"jaxjac: error: {' '.join(message.split())}", file=sys.stderr)


def print_note(message: str) -> None:
    """Print `jaxjac: note: <message>` on stderr."""
    print(f"jaxjac: note: {message}", file=sys.stderr)


def require_new_file(path: Path, force: bool) -> None:
    """Refuse to go on when `path` exists (unless `force`), is a folder, or cannot be created."""
    if not path.name or path.name in (".", ".."):
        raise JaxjacError(f"-o {str(path)!r}: expected a file name")
    if path.is_dir():
        raise JaxjacError(f"-o {path} is an existing folder; expected a file path (choose another -o)")
    if path.exists() and not force:
        raise JaxjacError(f"{path} already exists; pass --force to overwrite it")
    problem = folder_problem(path.parent)
    if problem:
        raise JaxjacError(f"cannot write {path}: {problem}")


def refuse_writing_over_inputs(
    outputs: dict[str, Path | None],
    inputs: dict[str, Path | None],
    side_files: dict[str, list[tuple[Path, str]]] | None = None,
) -> None:
    """Refuse an output that is, holds or lies inside one of the command's input files.

    `--force` allows replacing an old *output*, never the data the command reads.
    Keys name the flags (`-o`, `DATA`, `--labels`) for the message. `side_files`
    lists, per output flag, the other files a run writes or deletes beside it, each
    with what it is for (`(Path("J.npy.partial"), "its unfinished rows")`).
    """
    written = [(flag, out, out, None) for flag, out in outputs.items() if out is not None]
    for flag, files in (side_files or {}).items():
        written += [(flag, outputs[flag], path, role) for path, role in files]
    for out_flag, out, path, role in written:
        for in_flag, source in inputs.items():
            if source is None or not paths_overlap(path, source):
                continue
            if role is None:
                raise JaxjacError(
                    f"{out_flag} {out} would overwrite the input {in_flag} {source}; choose another {out_flag}"
                )
            raise JaxjacError(
                f"{out_flag} {out} would overwrite the input {in_flag} {source}: the run writes {role} at {path}; "
                f"choose another {out_flag} or rename the input"
            )


def paths_overlap(a: Path, b: Path) -> bool:
    """Whether paths `a` and `b` name the same file, or one folder holds the other."""
    real_a, real_b = os.path.realpath(a), os.path.realpath(b)
    if real_a == real_b or real_a.startswith(real_b + os.sep) or real_b.startswith(real_a + os.sep):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


_MAX_TEXT_BYTES = 64 << 20  # names or wavelengths of a few million features; more is not a list of names


def read_text_file(path: Path, flag: str, expected: str) -> str:
    """The text of the small regular file `path`, or a one-line error naming `flag` and what was `expected`."""
    kind = path_kind(path)
    if kind != "a file":  # a device (/dev/zero) or a pipe would be read forever
        raise JaxjacError(f"{flag} {path}: expected {expected}; found {kind}")
    size = path.stat().st_size
    if size > _MAX_TEXT_BYTES:
        raise JaxjacError(
            f"{flag} {path}: expected {expected}; found a file of {size:,} bytes (at most "
            f"{_MAX_TEXT_BYTES >> 20} MiB is read)"
        )
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise JaxjacError(f"{flag} {path}: cannot read {expected} from it ({error})") from None


def load_npy(path: Path, flag: str, expected: str, *, mmap: bool = False) -> np.ndarray:
    """The array in the `.npy` file `path`, or a one-line error naming `flag` and what was `expected`."""
    from .._sources import npy_header

    kind = path_kind(path)
    if kind not in ("a file", "no such file"):  # opening a pipe would wait for a writer forever
        raise JaxjacError(f"{flag} {path}: expected {expected} in a .npy file; found {kind}")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
            if head == b"\x93NUMPY":  # a forged header is told as such, before numpy allocates for it
                npy_header(f, f"{flag} {path}", os.fstat(f.fileno()).st_size)
    except OSError as error:
        raise JaxjacError(f"{flag} {path}: cannot read it ({error.strerror or error})") from None
    if head != b"\x93NUMPY":
        found = "an empty file" if not head else f"a file that is not .npy (it starts with {head!r})"
        raise JaxjacError(f"{flag} {path}: expected {expected} in a .npy file; found {found}")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise JaxjacError(
            f"{flag} {path}: expected {expected} in a .npy file; it is damaged or pickled ({error})"
        ) from None
    if array.dtype.kind not in "biuf":
        raise JaxjacError(f"{flag} {path}: expected {expected}; found an array of dtype {array.dtype}")
    return array
