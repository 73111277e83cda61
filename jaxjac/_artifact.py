"""Save and load converted models as one safe file (owned by the artifact work; stub for now)."""

from __future__ import annotations

from os import PathLike

from ._model import ConvertedModel


def save(model: ConvertedModel, path: str | PathLike, *, overwrite: bool = False) -> None:
    """Write `model` to `path` atomically."""
    raise NotImplementedError


def load(path: str | PathLike) -> ConvertedModel:
    """Rebuild a converted model from `path`, without torch."""
    raise NotImplementedError
