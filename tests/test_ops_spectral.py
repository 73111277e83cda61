"""Fourier transforms and complex values against torch: `torch.fft`, `torch.stft` and a Fourier neural operator.

Outputs and Jacobians are compared with torch autograd in float32 and float64.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import Fn, assert_converts, precision
from torch import nn

import jaxjac

DTYPES = ("float32", "float64")
C, L = 2, 16


def _window(x: torch.Tensor) -> torch.Tensor:
    return torch.hann_window(8, dtype=x.dtype)


CASES = {
    "rfft-abs": lambda x: torch.fft.rfft(x).abs(),
    "rfft-norms": lambda x: torch.view_as_real(torch.fft.rfft(x, norm="ortho") + torch.fft.rfft(x, norm="forward")),
    "rfft-n-pad-and-crop": lambda x: torch.fft.rfft(x, n=24).abs()[..., :5] + torch.fft.rfft(x, n=10).real[..., :5],
    "irfft": lambda x: torch.fft.irfft(torch.fft.rfft(x) * torch.linspace(1, 0, L // 2 + 1), n=L),
    "irfft-odd-and-norms": lambda x: (
        torch.fft.irfft(torch.fft.rfft(x, norm="ortho"), n=L - 1, norm="ortho")
        + torch.fft.irfft(torch.fft.rfft(x, norm="forward"), n=L - 1, norm="forward")
    ),
    "fft-real-imag": lambda x: torch.fft.fft(x).real + 0.5 * torch.fft.fft(x).imag,
    "ifft": lambda x: torch.fft.ifft(torch.fft.fft(x) * torch.linspace(0, 1, L, dtype=x.dtype) * (1 + 0.5j)).real,
    "fft2": lambda x: torch.fft.fft2(x, norm="ortho").abs(),
    "rfft2-irfft2": lambda x: torch.fft.irfft2(torch.fft.rfft2(x) ** 2, s=(C, L)),
    "hfft": lambda x: torch.fft.hfft(torch.complex(x, x.flip(-1)), n=L),
    "stft-magnitude": lambda x: (
        torch.stft(x.flatten(0, 1), 8, hop_length=2, window=_window(x), return_complex=True).abs().reshape(1, C, -1)
    ),
    # torch's other windows, periodic and symmetric: constants the STFT front end multiplies by.
    "stft-windows": lambda x: (
        sum(
            torch.stft(x.flatten(0, 1), 8, hop_length=3, window=window, return_complex=True).abs().reshape(1, C, -1)
            for window in (
                torch.hamming_window(8, dtype=x.dtype),
                torch.hamming_window(8, periodic=False, alpha=0.5, beta=0.5, dtype=x.dtype),
                torch.blackman_window(8, dtype=x.dtype),
                torch.bartlett_window(8, periodic=False, dtype=x.dtype),
                torch.kaiser_window(8, True, 6.0, dtype=x.dtype),
                torch.kaiser_window(8, periodic=False, dtype=x.dtype),
            )
        )
        + x[..., :1] * torch.kaiser_window(1, dtype=x.dtype)
    ),
    # Frequencies of the bins, as a seasonal layer weighs them (pypots' ETSformer).
    "fftfreq": lambda x: (
        torch.fft.rfft(x).abs() * torch.fft.rfftfreq(L, d=0.5, dtype=x.dtype)
        + torch.fft.fftfreq(L, dtype=x.dtype)[: L // 2 + 1]
        + torch.fft.rfftfreq(L - 1, dtype=x.dtype)[: L // 2].sum()
    ),
    "complex-arithmetic": lambda x: torch.view_as_real(
        torch.complex(x, x**2) * torch.polar(x.abs() + 1, x) / (torch.complex(x, torch.ones_like(x)) + 2)
    ).sum(-1),
    "view-as-complex-conj": lambda x: (
        (torch.view_as_complex(torch.stack([x, -x], -1)).conj() * torch.fft.rfft(x, n=2 * L - 2)).imag
    ),
    "angle": lambda x: torch.angle(torch.fft.rfft(x)).sum(-1, keepdim=True) * x + torch.angle(x),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_fourier_ops_match_torch(name: str, dtype: str) -> None:
    methods = ("vmap-jacrev", "batched-vjp") if dtype == "float64" else ("vmap-jacrev",)
    assert_converts(Fn(CASES[name]), (C, L), dtype, methods=methods)


class SpectralConv1d(nn.Module):
    """A Fourier layer as in the Fourier neural operator: complex weights on the lowest `modes` frequencies."""

    def __init__(self, channels: int, modes: int) -> None:
        super().__init__()
        self.modes = modes
        self.weights = nn.Parameter(torch.rand(channels, channels, modes, dtype=torch.cfloat) / channels**2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_ft = torch.fft.rfft(x)
        out_ft = torch.zeros(x.shape[0], x.shape[1], x.shape[-1] // 2 + 1, dtype=x_ft.dtype)
        out_ft[:, :, : self.modes] = torch.einsum("bix,iox->box", x_ft[:, :, : self.modes], self.weights)
        return torch.fft.irfft(out_ft, n=x.shape[-1])


class FNO1d(nn.Module):
    """A small Fourier neural operator with a classification head."""

    def __init__(self, width: int = 8, modes: int = 5, n_classes: int = 3) -> None:
        super().__init__()
        self.lift = nn.Linear(2, width)
        self.spectral = nn.ModuleList(SpectralConv1d(width, modes) for _ in range(2))
        self.pointwise = nn.ModuleList(nn.Conv1d(width, width, 1) for _ in range(2))
        self.head = nn.Linear(width * L, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = torch.linspace(0, 1, x.shape[-1], dtype=x.dtype).expand(x.shape[0], 1, -1)
        h = self.lift(torch.cat([x, grid], 1).transpose(1, 2)).transpose(1, 2)
        for spectral, pointwise in zip(self.spectral, self.pointwise, strict=True):
            h = F.gelu(spectral(h) + pointwise(h))
        return self.head(h.flatten(1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fourier_neural_operator_matches_torch(dtype: str, tmp_path) -> None:
    torch.manual_seed(0)
    net = FNO1d()
    model = assert_converts(net, (1, L), dtype, methods=("vmap-jacrev", "batched-vjp"))
    with precision(dtype):
        jaxjac.save(model, tmp_path / "fno.jaxjac")
        loaded = jaxjac.load(tmp_path / "fno.jaxjac")
        x = np.random.default_rng(1).standard_normal((4, 1, L))
        np.testing.assert_array_equal(np.asarray(jaxjac.jacobian(loaded, x)), np.asarray(jaxjac.jacobian(model, x)))
    for name, value in model.tensors().items():
        assert loaded.tensors()[name].dtype == value.dtype, name
    header = _safetensors_header(tmp_path / "fno.jaxjac")
    assert header["__metadata__"]["format_version"] == "2"
    assert header["spectral.0.weights"]["dtype"] == {"float32": "F32", "float64": "F64"}[dtype]
    assert header["spectral.0.weights"]["shape"] == [8, 8, 5, 2]  # real and imaginary parts


def _safetensors_header(path) -> dict:
    data = path.read_bytes()
    return json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
