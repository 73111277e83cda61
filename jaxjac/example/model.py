"""The bundled example's torch model: a small 1D CNN for spectra.

This is the only module of `jaxjac.example` that imports torch at the top,
so `import jaxjac.example` stays cheap and works without torch.
"""

from __future__ import annotations

import torch
from torch import nn

LENGTH = 224
N_CLASSES = 3


class SpectraNet(nn.Module):
    """Three Conv-BatchNorm-ReLU-MaxPool blocks and a two-layer classifier.

    Maps spectra `(N, 1, 224)` to class logits `(N, 3)`; the shape of the
    network in jaxjac's user story.
    """

    def __init__(self, channels: tuple[int, int, int] = (8, 16, 16), hidden: int = 16) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            nn.Conv1d(1, c1, kernel_size=7, padding=3),
            nn.BatchNorm1d(c1),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(c1, c2, kernel_size=5, padding=2),
            nn.BatchNorm1d(c2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(c2, c3, kernel_size=3, padding=1),
            nn.BatchNorm1d(c3),
            nn.ReLU(),
            nn.MaxPool1d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(c3 * (LENGTH // 8), hidden),
            nn.ReLU(),
            nn.Linear(hidden, N_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, 1, 224)` spectra -> `(N, 3)` logits."""
        return self.classifier(self.features(x))
