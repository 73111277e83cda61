"""A cache of compiled batch programs, so that a rerun neither traces nor lowers the model again.

JAX's persistent compilation cache saves the XLA compilation of a rerun, but
not the tracing and lowering before it, which for a converted model under
`vmap(jacrev)` take about a quarter of a second: a few percent of a
194,109-row `jaxjac jacobian` run. This cache keeps the compiled executable
itself, keyed by everything that shapes the program: the model's graph and
spec, the tensors' shapes and dtypes, the program's options and batch size,
the devices and the host CPU, the JAX and jaxlib versions, 64-bit mode, the
default matmul precision, `XLA_FLAGS`, and a hash of jaxjac's own source (so
that an edited lowering rule is never served a stale program).

`_run.run_stream` uses it for row programs in single-process CPU runs (any
number of local devices). The entries live in `<JAX compilation
cache>/jaxjac-programs/`, so that the cache is on exactly when JAX's is
(`--compile-cache`; `off` turns both off).
A compiled executable is machine code, trusted like JAX's own cache: an entry
is used only when the current user owns it and no one else may write to it
or its folder. Any entry that cannot be read or loaded is ignored (and the
program compiled as usual); a miss costs the usual compilation plus storing
the entry and running it once on a probe batch to check it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jaxlib

from ._durable import replace_atomically
from ._xla_options import compiler_options

SUBDIR = "jaxjac-programs"


def cache_folder() -> Path | None:
    """Where entries live: beside JAX's compilation cache, or None while that is off."""
    base = jax.config.jax_compilation_cache_dir
    return Path(base) / SUBDIR if base else None


def program_key(description: dict[str, Any], devices: list[jax.Device]) -> str:
    """A hex digest of everything that shapes the compiled program.

    `description` is a JSON-able account of the program (model structure,
    options, batch size); the environment (devices, versions, 64-bit mode,
    jaxjac's source) is added here.
    """
    environment = {
        "devices": [(d.platform, d.device_kind, d.id, d.process_index) for d in devices],
        "process_count": jax.process_count(),
        "x64": bool(jax.config.jax_enable_x64),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        # Flags that change what XLA compiles, and the host CPU (an executable built for
        # one CPU's instruction set may not run on another sharing the same home folder).
        "flags": [os.environ.get(name) for name in ("XLA_FLAGS", "LIBTPU_INIT_ARGS")],
        "compiler_options": compiler_options(devices[0].platform) if devices else {},
        "host": _host(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jaxjac_source": _source_digest(),
    }
    text = json.dumps([description, environment], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_or_compile(
    key: str | None,
    compile_program: Callable[[], jax.stages.Compiled],
    in_tree: Any,
    out_tree: Any,
    probe_args: Callable[[], tuple],
) -> tuple[jax.stages.Compiled, bool]:
    """The cached executable for `key`, else `compile_program()` (then cached).

    `in_tree` and `out_tree` are the pytree structures of the program's
    arguments (`((args...), {})`) and result. A new entry is kept only once
    it has been read back and has given, on `probe_args()`, the very bits of
    the program it was made from: an executable that JAX itself had read from
    its cache does not survive a second serialisation on CPU (jaxlib 0.10:
    "Function ... not found" when run), and any other such surprise is caught
    the same way. **Returns** `(compiled, hit)`.
    """
    folder = cache_folder()
    if key is None or folder is None:
        return compile_program(), False
    path = folder / f"{key}.bin"
    compiled = _load(path, in_tree, out_tree)
    if compiled is not None:
        return compiled, True
    compiled = compile_program()
    if _store(path, compiled) and not _reproduces(path, compiled, in_tree, out_tree, probe_args):
        path.unlink(missing_ok=True)
    return compiled, False


def _reproduces(path: Path, compiled: jax.stages.Compiled, in_tree: Any, out_tree: Any, probe_args) -> bool:
    """Whether the entry at `path` loads and computes exactly what `compiled` does."""
    import numpy as np

    loaded = _load(path, in_tree, out_tree)
    if loaded is None:
        return False
    try:
        args = probe_args()
        return np.array_equal(np.asarray(loaded(*args)), np.asarray(compiled(*args)), equal_nan=True)
    except Exception:
        return False


def _load(path: Path, in_tree: Any, out_tree: Any) -> jax.stages.Compiled | None:
    from jax.experimental import serialize_executable

    try:
        if not (_trusted(path) and _trusted(path.parent)):
            return None
        data = path.read_bytes()
    except OSError:  # no entry yet
        return None
    try:
        return serialize_executable.deserialize_and_load(data, in_tree, out_tree)
    except Exception:  # a damaged or outdated entry of ours: compile instead, and drop it
        path.unlink(missing_ok=True)
        return None


def _store(path: Path, compiled: jax.stages.Compiled) -> bool:
    from jax.experimental import serialize_executable

    try:
        data, _, _ = serialize_executable.serialize(compiled)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_atomically(path, data, mode=0o600)
    except Exception:  # a program that cannot be serialised, or a read-only cache: just not cached
        return False
    return True


def _trusted(path: Path) -> bool:
    """Owned by this user, and writable by no one else (on systems with owners)."""
    info = path.stat()
    if not hasattr(os, "getuid"):
        return True
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


@functools.lru_cache(maxsize=1)
def _host() -> str:
    """The machine and its CPU's model and feature flags (Linux), as one digest."""
    text = platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        text += "".join(sorted(set(lines)))
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """sha256 over jaxjac's own Python source, including the lowering rules."""
    from . import converters

    digest = hashlib.sha256()
    folders = sorted({Path(__file__).parent, Path(converters.__file__).parent})
    for folder in folders:
        for file in sorted(folder.rglob("*.py")):
            digest.update(str(file.relative_to(folder)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()
