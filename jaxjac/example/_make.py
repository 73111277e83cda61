"""Regenerate the bundled example: synthetic spectra, a trained SpectraNet, the planted bands.

Run `python -m jaxjac.example._make` (a few seconds on one CPU core). Seeds fix
the data and the training, so a rerun on the same torch version writes the
same data and, up to kernel nondeterminism, the same weights.

Writes, next to this file:

- `spectra_X.npy`: float32 `(300, 1, 224)` spectra;
- `spectra_y.npy`: int64 `(300,)` labels in {0, 1, 2};
- `bands.json`: the planted bands per class and the training summary;
- `spectra_cnn.safetensors`: the trained weights (`SpectraNet().state_dict()`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from . import BANDS_FILE, DATA_FILE, LABELS_FILE, WEIGHTS_FILE
from .model import LENGTH, N_CLASSES, SpectraNet

N_SAMPLES = 300
N_TRAIN = 240
SEED = 0
# Each class adds narrow peaks at its own bands; the baselines carry no class information.
BANDS: dict[int, list[int]] = {0: [32, 148], 1: [70, 188], 2: [105, 126]}
PEAK_WIDTH = 2.5
EPOCHS = 40


def make_spectra(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic spectra `(N_SAMPLES, 1, LENGTH)` float32 and balanced labels `(N_SAMPLES,)` int64."""
    grid = np.arange(LENGTH, dtype=np.float64)
    y = rng.permutation(np.arange(N_SAMPLES) % N_CLASSES).astype(np.int64)
    X = np.empty((N_SAMPLES, LENGTH))
    for i, label in enumerate(y):
        # A smooth baseline of three broad bumps and a slope, different for every sample,
        # so that the classifier has to find the narrow peaks rather than the overall level.
        centers = rng.uniform(0, LENGTH, 3)
        widths = rng.uniform(25, 80, 3)
        heights = rng.uniform(0.2, 1.0, 3)
        spectrum = (heights * np.exp(-0.5 * ((grid[:, None] - centers) / widths) ** 2)).sum(axis=1)
        spectrum += rng.uniform(-0.3, 0.3) * grid / LENGTH
        for band in BANDS[int(label)]:
            spectrum += rng.uniform(0.25, 0.5) * np.exp(-0.5 * ((grid - band) / PEAK_WIDTH) ** 2)
        X[i] = spectrum + rng.normal(0.0, 0.03, LENGTH)
    return X[:, None, :].astype(np.float32), y


def train(X: np.ndarray, y: np.ndarray) -> tuple[SpectraNet, dict[str, float]]:
    """Train a SpectraNet on the first `N_TRAIN` samples; report accuracy on the rest."""
    torch.manual_seed(SEED)
    net = SpectraNet()
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for _ in range(EPOCHS):
        net.train()
        for batch in torch.randperm(N_TRAIN, generator=generator).split(32):
            optimizer.zero_grad()
            loss = loss_fn(net(xt[batch]), yt[batch])
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        predicted = net(xt).argmax(dim=1)
    summary = {
        "train_accuracy": float((predicted[:N_TRAIN] == yt[:N_TRAIN]).float().mean()),
        "test_accuracy": float((predicted[N_TRAIN:] == yt[N_TRAIN:]).float().mean()),
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    return net, summary


def main(out: Path | None = None) -> None:
    """Write the four example files into `out` (default: this package's directory)."""
    out = Path(__file__).parent if out is None else out
    torch.set_num_threads(1)
    X, y = make_spectra(np.random.default_rng(SEED))
    net, summary = train(X, y)
    np.save(out / DATA_FILE, X, allow_pickle=False)
    np.save(out / LABELS_FILE, y, allow_pickle=False)
    state = {name: t.detach().contiguous() for name, t in net.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"model": "jaxjac.example.model.SpectraNet"})
    info = {
        "bands": {str(k): v for k, v in BANDS.items()},
        "peak_width": PEAK_WIDTH,
        "n_train": N_TRAIN,
        "torch_version": torch.__version__,
        **summary,
    }
    (out / BANDS_FILE).write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
