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

from .._errors import JaxjacError

_SHAPE = re.compile(r"^\s*[\(\[]?\s*(\d+\s*(,\s*\d+\s*)*),?\s*[\)\]]?\s*$")


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
    """Refuse to go on when `path` exists (unless `force`) or cannot be created."""
    if path.exists() and not force:
        raise JaxjacError(f"{path} already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise JaxjacError(f"cannot write {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise JaxjacError(f"cannot write {path}: folder {path.parent} is not writable")
