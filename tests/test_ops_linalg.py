"""`torch.linalg` in forward (whitening, SPD-matrix EEG nets, linear prediction) against torch autograd.

Each case maps a sample `(C, L)` to matrices built from it, well conditioned
and with distinct eigenvalues, where every decomposition is differentiable.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import Fn, assert_converts

DTYPES = ("float32", "float64")
C, L = 3, 10


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Each sample's channel covariance plus a ridge: `(N, C, C)`, symmetric positive definite."""
    return x @ x.transpose(-1, -2) / x.shape[-1] + 0.5 * torch.eye(x.shape[-2], dtype=x.dtype)


def tilted(x: torch.Tensor) -> torch.Tensor:
    """The covariance with its upper triangle changed: torch reads only the triangle it is told to."""
    return covariance(x) + torch.triu(x[..., : x.shape[-2]], 1)


def whiten(x: torch.Tensor, upper: bool) -> torch.Tensor:
    eigenvalues, vectors = torch.linalg.eigh(tilted(x).transpose(-1, -2) if upper else tilted(x), "U" if upper else "L")
    return vectors @ torch.diag_embed(eigenvalues.rsqrt()) @ vectors.transpose(-1, -2) @ x


def log_map(x: torch.Tensor) -> torch.Tensor:
    """SPDNet's LogEig: `V log(Λ) V^T`, flattened."""
    eigenvalues, vectors = torch.linalg.eigh(covariance(x))
    return vectors @ torch.diag_embed(eigenvalues.log()) @ vectors.transpose(-1, -2)


CASES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "eigh-lower": lambda x: whiten(x, upper=False),
    "eigh-upper": lambda x: whiten(x, upper=True),
    "eigvalsh": lambda x: torch.linalg.eigvalsh(tilted(x)),
    "log-eig": log_map,
    "inv": lambda x: torch.linalg.inv(covariance(x)) @ x,
    "cholesky": lambda x: torch.linalg.cholesky(tilted(x)),
    "cholesky-upper": lambda x: torch.linalg.cholesky(covariance(x), upper=True),
    "det": lambda x: torch.linalg.det(covariance(x))[:, None],
    "slogdet": lambda x: torch.stack(torch.linalg.slogdet(covariance(x) - 1.0), -1),
    "logdet": lambda x: torch.logdet(covariance(x))[:, None],
    "svdvals": lambda x: torch.linalg.svdvals(x),
    "svd": lambda x: (lambda u, s, vh: u @ torch.diag_embed(s.sqrt()) @ vh)(*torch.linalg.svd(x, full_matrices=False)),
    "qr": lambda x: torch.linalg.qr(x.transpose(-1, -2))[1],
    "matrix-exp": lambda x: torch.linalg.matrix_exp(covariance(x) - 1.0),
    "pinv": lambda x: torch.linalg.pinv(x),
    "pinv-hermitian": lambda x: torch.linalg.pinv(covariance(x), hermitian=True),
    "pinv-rank-deficient": lambda x: torch.linalg.pinv(torch.cat([x, x[:, :1]], 1), atol=1e-3),
    "pinv-rtol": lambda x: torch.linalg.pinv(x, rtol=0.05),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_linalg_matches_torch(name, dtype):
    fn = CASES[name]
    assert_converts(Fn(lambda x: fn(x).flatten(1)), (C, L), dtype, n=3)
