"""Linear algebra: `torch.linalg` solves, inverses, factorisations and spectral decompositions.

Torch returns error codes, LU factors or pivots beside a result; its graph
reads them only to raise on a singular or indefinite matrix, a check jaxjac
leaves out (a singular matrix gives inf or NaN, as `check_errors=False` does
in torch). Eigenvectors and singular vectors are defined up to sign: JAX's
LAPACK calls choose as torch's do on the CPUs tried, and a model that uses
their signs, not just their products, is compared by the conversion check.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .registry import register


def _mT(a: jax.Array) -> jax.Array:
    return jnp.swapaxes(a, -1, -2)


def _mH(a: jax.Array) -> jax.Array:
    return jnp.conj(_mT(a))


def _hermitian_as_torch_reads(a: jax.Array, upper: bool) -> jax.Array:
    """The Hermitian matrix `a`'s `upper` (else lower) triangle spells out, with the tangent of `(a + a^H) / 2`.

    Torch's eigh and cholesky compute with one triangle, as LAPACK reads it,
    but their backward returns a Hermitian gradient: the derivative of the
    symmetrised matrix. Both agree when `a` is Hermitian (a covariance);
    this matches torch on any `a`, and keeps every tangent Hermitian, which
    JAX's rules for these decompositions assume.
    """
    triangle, strict = (jnp.triu(a), jnp.triu(a, 1)) if upper else (jnp.tril(a), jnp.tril(a, -1))
    symmetrised = (a + _mH(a)) / 2
    return jax.lax.stop_gradient(triangle + _mH(strict) - symmetrised) + symmetrised


@register("aten._linalg_solve_ex.default")
def linalg_solve_ex(a: jax.Array, b: jax.Array, *, left: bool = True, check_errors: bool = False) -> tuple:
    """`torch.linalg.solve`'s core: `(X, LU, pivots, info)` with `A X = B` (`left`) or `X A = B`; only `X` computed."""
    if not left:  # X A = B  <=>  A^T X^T = B^T
        return _mT(jnp.linalg.solve(_mT(a), _mT(b))), None, None, 0
    return jnp.linalg.solve(a, b), None, None, 0


@register("aten.linalg_inv_ex.default")
def linalg_inv_ex(a: jax.Array, *, check_errors: bool = False) -> tuple:
    """`torch.linalg.inv`'s core: `(A^-1, info)`."""
    return jnp.linalg.inv(a), 0


@register("aten.linalg_cholesky_ex.default")
def linalg_cholesky_ex(a: jax.Array, *, upper: bool = False, check_errors: bool = False) -> tuple:
    """`torch.linalg.cholesky`'s core: `(L, info)` with `A = L L^H` from A's lower triangle (`U^H U` with `upper`)."""
    lower = jnp.linalg.cholesky(_hermitian_as_torch_reads(a, upper=False), symmetrize_input=False)
    return (_mH(lower) if upper else lower), 0


@register("aten._linalg_eigh.default", "aten.linalg_eigh.default")
def linalg_eigh(a: jax.Array, UPLO: str = "L", compute_v: bool = True) -> tuple:  # noqa: N803  (torch's name)
    """`(eigenvalues, eigenvectors)` of the Hermitian matrix in A's `UPLO` triangle, eigenvalues ascending."""
    w, v = jnp.linalg.eigh(_hermitian_as_torch_reads(a, upper=UPLO.upper() == "U"), symmetrize_input=False)
    return w, (v if compute_v else jnp.zeros((0,), a.dtype))


@register("aten._linalg_svd.default")
def linalg_svd(a: jax.Array, full_matrices: bool = False, compute_uv: bool = True, *, driver=None) -> tuple:  # noqa: ANN001
    """`(U, S, Vh)` with `A = U diag(S) Vh`, singular values descending (`U`, `Vh` empty without `compute_uv`)."""
    if not compute_uv:
        empty = jnp.zeros((0,), a.dtype)
        return empty, jnp.linalg.svd(a, compute_uv=False), empty
    return tuple(jnp.linalg.svd(a, full_matrices=full_matrices))


@register("aten.linalg_qr.default")
def linalg_qr(a: jax.Array, mode: str = "reduced") -> tuple:
    """`(Q, R)` with `A = Q R` (`mode` 'reduced', 'complete', or 'r' for an empty `Q`)."""
    if mode == "r":
        return jnp.zeros((0,), a.dtype), jnp.linalg.qr(a, mode="r")
    return tuple(jnp.linalg.qr(a, mode=mode))


@register("aten._linalg_det.default")
def linalg_det(a: jax.Array) -> tuple:
    """`torch.linalg.det`'s core: `(det, LU, pivots)`; only `det` computed."""
    return jnp.linalg.det(a), None, None


@register("aten._linalg_slogdet.default")
def linalg_slogdet(a: jax.Array) -> tuple:
    """`torch.linalg.slogdet`'s core: `(sign, log|det|, LU, pivots)`; only the first two computed."""
    sign, logabsdet = jnp.linalg.slogdet(a)
    return sign, logabsdet, None, None


@register("aten.linalg_matrix_exp.default")
def linalg_matrix_exp(a: jax.Array) -> jax.Array:
    """The matrix exponential of each matrix of `a`."""
    return jax.scipy.linalg.expm(a)


@register("aten.linalg_pinv.atol_rtol_tensor", "aten.linalg_pinv.atol_rtol_float")
def linalg_pinv(a: jax.Array, *, atol=None, rtol=None, hermitian: bool = False) -> jax.Array:  # noqa: ANN001
    """The pseudo-inverse, dropping singular values at most `max(atol, rtol * largest)`, as torch does.

    Without `rtol`, torch takes `eps * max(m, n)`, or 0 when `atol` is positive.
    """
    m, n = a.shape[-2:]
    default = np.finfo(np.dtype(a.dtype)).eps * max(m, n)
    atol = jnp.zeros((), jnp.real(a).dtype) if atol is None else jnp.asarray(atol)
    rtol = jnp.where(atol > 0, 0.0, default) if rtol is None else jnp.asarray(rtol)
    return _pinv(a, atol, rtol, hermitian)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _pinv(a: jax.Array, atol: jax.Array, rtol: jax.Array, hermitian: bool) -> jax.Array:
    if hermitian:
        w, v = jnp.linalg.eigh(a)
        s = jnp.abs(w)
        cutoff = jnp.maximum(atol[..., None], rtol[..., None] * jnp.max(s, axis=-1, keepdims=True))
        inverse = jnp.where(s > cutoff, 1 / jnp.where(s > cutoff, w, 1), 0)
        return (v * inverse[..., None, :].astype(v.dtype)) @ _mH(v)
    u, s, vh = jnp.linalg.svd(a, full_matrices=False)
    cutoff = jnp.maximum(atol[..., None], rtol[..., None] * s[..., :1])
    inverse = jnp.where(s > cutoff, 1 / jnp.where(s > cutoff, s, 1), 0)
    return (_mH(vh) * inverse[..., None, :].astype(u.dtype)) @ _mH(u)


@_pinv.defjvp
def _pinv_jvp(hermitian: bool, primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
    # Golub and Pereyra's derivative of the pseudo-inverse at constant rank, which
    # stays finite where a product of singular-vector derivatives would not
    # (repeated or zero singular values); the cut-offs move nothing.
    a, atol, rtol = primals
    a_dot = tangents[0]
    p = _pinv(a, atol, rtol, hermitian)
    left = jnp.eye(a.shape[-2], dtype=a.dtype) - a @ p
    right = jnp.eye(a.shape[-1], dtype=a.dtype) - p @ a
    p_dot = -p @ a_dot @ p + p @ _mH(p) @ _mH(a_dot) @ left + right @ _mH(a_dot) @ _mH(p) @ p
    return p, p_dot
