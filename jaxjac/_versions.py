"""Versions of the packages a conversion depends on, for artifact metadata."""

from __future__ import annotations

import importlib.metadata
import sys


def package_version(name: str) -> str | None:
    """The installed version of `name`, or `None` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of Python, jaxjac, torch, jax and flax."""
    return {
        "python": sys.version.split()[0],
        **{name: package_version(name) for name in ("jaxjac", "torch", "jax", "jaxlib", "flax")},
    }
