"""The progress sidecar `OUT.progress.json`: what an interrupted run finished, and for which inputs.

The sidecar is rewritten atomically (temporary file, fsync, rename) and only
after the writer has flushed the rows it records, so after any crash,
SIGKILL included, every row below `completed_rows` is on disk. Its
`fingerprint` pins the model file, the data and every argument that changes
the numbers; `--resume` refuses a run whose fingerprint differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ._durable import replace_atomically
from ._errors import JaxjacError

FORMAT = "jaxjac-progress"
VERSION = 1


def sidecar_path(out: Path) -> Path:
    """`J.npy` -> `J.npy.progress.json`."""
    out = Path(out)
    return out.with_name(f"{out.name}.progress.json")


def write_progress(path: Path, *, fingerprint: dict[str, Any], completed_rows: int, **extra: Any) -> None:
    """Atomically replace the sidecar at `path` with the given state."""
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, "completed_rows": int(completed_rows), **extra}
    state["fingerprint"] = fingerprint
    replace_atomically(path, json.dumps(state, indent=1, sort_keys=True))


def read_progress(path: Path) -> dict[str, Any]:
    """The sidecar's state; a one-line `JaxjacError` if it is not a jaxjac progress file."""
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise JaxjacError(f"{path}: cannot read the progress file ({error}); pass --force to start over") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT or "fingerprint" not in state:
        raise JaxjacError(f"{path} is not a jaxjac progress file; pass --force to start over")
    if not isinstance(state["fingerprint"], dict):
        raise JaxjacError(
            f"{path}: expected `fingerprint` to be a JSON object, found {type(state['fingerprint']).__name__}; "
            "the progress file is damaged: pass --force to start over"
        )
    if state.get("version") != VERSION:
        raise JaxjacError(f"{path} has progress format version {state.get('version')!r}; this jaxjac reads {VERSION}")
    for field, least in (("completed_rows", 0), ("batch_size", 1)):
        value = state.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise JaxjacError(
                f"{path}: expected `{field}` to be an integer >= {least}, found {value!r}; the progress file is "
                "damaged: pass --force to start over"
            )
    return state


def data_digest(reader, rows: int = 64) -> str:
    """A sha256 of up to `rows` rows spread evenly over `reader` (first and last included).

    Part of the resume fingerprint: a data file regenerated in place, with the
    same path, shape and dtype, is caught without reading all of it.
    """
    n = reader.n_samples
    digest = hashlib.sha256()
    for index in sorted({round(i * (n - 1) / max(rows - 1, 1)) for i in range(rows)} if n else set()):
        digest.update(np.ascontiguousarray(reader.read(index, index + 1)).tobytes())
    return digest.hexdigest()


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], sidecar: Path) -> None:
    """Refuse to resume when any fingerprint field differs, naming the first one."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise JaxjacError(
                f"cannot --resume: {sidecar} was written for {key}={saved.get(key)!r}, this run has "
                f"{key}={current.get(key)!r}; rerun with the original arguments, or pass --force to start over"
            )
