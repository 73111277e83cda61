"""A bundled example: a trained torch 1D CNN on synthetic spectra, with its data.

The data are 300 synthetic spectra `(1, 224)` in 3 classes. Every spectrum is
a smooth random baseline plus noise; each class adds absorption peaks at its
own few bands, recorded in `bands.json`. A model that learned the task should
have its largest input Jacobians near those bands, which `jaxjac demo` shows.

>>> from jaxjac.example import load_example_data, load_example_model
>>> X, y = load_example_data()
>>> X.shape, y.shape
((300, 1, 224), (300,))
>>> net = load_example_model()  # doctest: +SKIP

All files are regenerated, reproducibly, by `python -m jaxjac.example._make`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "spectra_cnn.safetensors"
DATA_FILE = "spectra_X.npy"
LABELS_FILE = "spectra_y.npy"
BANDS_FILE = "bands.json"


def example_path(name: str) -> Path:
    """The path of one bundled file, e.g. `example_path("spectra_X.npy")`."""
    return Path(str(resources.files(__name__).joinpath(name)))


def load_example_data() -> tuple[np.ndarray, np.ndarray]:
    """The bundled spectra and labels.

    **Returns:** `(X, y)`: `X` float32 `(300, 1, 224)`, `y` int64 `(300,)` with classes 0, 1, 2.
    """
    # allow_pickle=False: the files are plain arrays, and must stay so.
    X = np.load(example_path(DATA_FILE), allow_pickle=False)
    y = np.load(example_path(LABELS_FILE), allow_pickle=False)
    return X, y


def load_example_bands() -> dict[int, list[int]]:
    """The planted bands: class index -> the wavelength indices where that class has peaks."""
    raw = json.loads(example_path(BANDS_FILE).read_text())
    return {int(k): [int(b) for b in v] for k, v in raw["bands"].items()}


def load_example_model() -> torch.nn.Module:
    """The trained `SpectraNet`, in eval mode, float32; maps `(N, 1, 224)` to logits `(N, 3)`.

    Needs torch. The weights are a safetensors file, so loading runs no pickle.
    """
    from safetensors.torch import load_file

    from .model import SpectraNet

    net = SpectraNet()
    net.load_state_dict(load_file(example_path(WEIGHTS_FILE)))
    return net.eval()


__all__ = ["example_path", "load_example_bands", "load_example_data", "load_example_model"]
