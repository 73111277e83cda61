"""Whole torch layers convert and match torch autograd: outputs and per-sample Jacobians.

Layers: Linear, Flatten, Dropout, Identity, Upsample, weight-normed Conv1d,
LSTM/GRU, MultiheadAttention and TransformerEncoderLayer, each over its
options, in float32 and float64. Sizes are tiny so that the unrolled
recurrences and attention graphs compile quickly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import TORCH_DTYPES, assert_close, assert_converts, precision, torch_reference

import jaxjac

DTYPES = ("float32", "float64")


class Apply(nn.Module):
    """`head(layer(x))`, where `head` picks a tensor out of what `layer` returns."""

    def __init__(self, layer: nn.Module, head: Callable = lambda y: y, prep: Callable = lambda x: x):
        super().__init__()
        self.layer, self.head, self.prep = layer, head, prep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.prep(x)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_on_3d_input(bias, dtype):
    # (N, C, L) -> (N, C, out): Linear acts on the last axis of every channel.
    assert_converts(nn.Linear(8, 5, bias=bias), (3, 8), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", [(1, -1), (2, 3), (-3, -2), (0, -1)])
def test_flatten(dims, dtype):
    net = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Unflatten(2, (2, 3)), nn.Flatten(*dims))
    assert_converts(net, (2, 8), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_and_identity(dtype):
    net = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Dropout(0.5), nn.Identity(), nn.Flatten(), nn.Dropout1d(0.3))
    assert_converts(net, (2, 8), dtype)


class PoolOfATransposedView(nn.Module):
    """A Linear over time steps, then adaptive pooling of its transposed (non-contiguous) result.

    torch's decomposition then restrides the pool's result with `as_strided`
    (braindecode's BDTCN ends this way).
    """

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.lin, self.pool = nn.Linear(4, 3), pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.lin(x.transpose(1, 2)).transpose(1, 2)).flatten(1)


def strided(x: torch.Tensor, size: tuple[int, ...], stride: tuple[int, ...], offset: int | None = None) -> torch.Tensor:
    """`x.as_strided` per sample; `clone` gives `x` storage of its own, at offset 0 as in a traced graph."""
    return x.clone().as_strided((x.shape[0], *size), (x[0].numel(), *stride), offset)


AS_STRIDED = {
    "pool-transposed-avg": lambda: PoolOfATransposedView(nn.AdaptiveAvgPool1d(1)),
    "pool-transposed-avg-3": lambda: PoolOfATransposedView(nn.AdaptiveAvgPool1d(3)),
    "pool-transposed-max": lambda: PoolOfATransposedView(nn.AdaptiveMaxPool1d(2)),
    "overlapping-windows": lambda: Apply(nn.Identity(), head=lambda x: strided(x, (4, 4, 3), (9, 2, 1)).flatten(1) * 2),
    "transposed-read-with-offset": lambda: Apply(
        nn.Identity(), head=lambda x: strided(x, (5, 3), (1, 9), 2).flatten(1).tanh()
    ),
    # The input is a transposed view: its storage is in x's order, not its own.
    "of-a-transposed-view": lambda: Apply(
        nn.Identity(), head=lambda x: x.clone().transpose(1, 2).as_strided((x.shape[0], 6, 6), (36, 6, 1)).flatten(1)
    ),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", AS_STRIDED.values(), ids=AS_STRIDED.keys())
def test_as_strided(make, dtype):
    torch.manual_seed(0)
    assert_converts(make(), (4, 9), dtype)


class UpperTriangleFeatures(nn.Module):
    """Channel covariances' upper triangle, a common EEG feature, indexed with `torch.triu_indices`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = torch.triu_indices(x.shape[1], x.shape[1], offset=0)
        return (x @ x.transpose(1, 2))[:, rows, cols]


@pytest.mark.parametrize("dtype", DTYPES)
def test_triangle_indices_in_forward(dtype):
    assert_converts(UpperTriangleFeatures(), (4, 9), dtype)


class LinearPrediction(nn.Module):
    """Linear-prediction features (diffsptk's LPC): `torch.linalg.solve` on each sample's autocorrelation system."""

    def __init__(self, left: bool):
        super().__init__()
        self.left = left

    def forward(self, x):
        frames = x.unfold(-1, 4, 2)  # (N, C, F, 4)
        gram = frames.transpose(-1, -2) @ frames + torch.eye(4)  # (N, C, 4, 4), well conditioned
        rhs = frames[..., :2].transpose(-1, -2) @ frames if not self.left else frames.transpose(-1, -2)[..., :2]
        return torch.linalg.solve(gram, rhs, left=self.left).flatten(1)


@pytest.mark.parametrize("left", [True, False], ids=["left", "right"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_solves_in_forward(dtype, left):
    assert_converts(LinearPrediction(left), (2, 12), dtype)


class OneHotSelector(nn.Module):
    """A concrete-autoencoder-style band selector: `F.one_hot` of learned logits picks 4 of 16 bands."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(4, 16))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        chosen = nn.functional.one_hot(self.logits.argmax(-1), 16).to(x.dtype)
        return self.head(torch.tanh(x.flatten(1) @ chosen.t()))


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_one_hot_and_its_range_assertion(dtype):
    torch.manual_seed(0)
    assert_converts(OneHotSelector(), (1, 16), dtype)


def test_a_range_assertion_known_while_tracing_is_checked():
    from jaxjac.converters.registry import lookup

    assert_async = lookup("aten._assert_async.msg")
    assert assert_async(np.bool_(True), "in range") is None
    with pytest.raises(ValueError, match="assertion in the model failed: index out of range"):
        assert_async(np.bool_(False), "index out of range")
    assert jax.jit(lambda c: assert_async(c, "unchecked") or c)(False) == np.False_  # traced: not checked


def test_model_in_train_mode_converts_as_eval():
    net = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.Dropout(0.9), nn.Flatten(), nn.Linear(18, 2))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
    net.train()
    x = torch.randn(3, 2, 8)
    with pytest.warns(UserWarning, match="train mode"):
        model = jaxjac.convert(net, x, check=False)
    assert all(m.training for m in net.modules()), "convert must restore the model's train mode"
    expected = net.eval()(x).detach().numpy()
    assert_close(np.asarray(model(x.numpy())), expected, "float32", "train-mode model outputs")


class Bank(nn.Module):
    """Several branches on one input, their flattened outputs side by side: `(N, sum of sizes)`.

    One test of a bank checks every branch's values and Jacobian, at the cost
    of one conversion instead of one per option.
    """

    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x).flatten(1) for branch in self.branches], 1)


def _interpolate(**options) -> nn.Module:
    return Apply(nn.Identity(), head=lambda y: nn.functional.interpolate(y, **options))


@pytest.mark.parametrize("dtype", DTYPES)
def test_upsample_nearest(dtype):
    bank = Bank(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Upsample(scale_factor=1.5, mode="nearest"),
        nn.Upsample(size=13, mode="nearest"),
        nn.Upsample(size=5, mode="nearest"),
        nn.Upsample(size=11, mode="nearest-exact"),
        _interpolate(scale_factor=2.6, mode="nearest"),
    )
    assert_converts(nn.Sequential(nn.Conv1d(2, 2, 1), bank), (2, 8), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_upsample_linear(dtype):
    bank = Bank(
        nn.Upsample(scale_factor=2, mode="linear", align_corners=True),
        nn.Upsample(size=13, mode="linear", align_corners=True),
        nn.Upsample(scale_factor=2.5, mode="linear", align_corners=False),
        nn.Upsample(size=11, mode="linear", align_corners=False),
        nn.Upsample(size=5, mode="linear", align_corners=False),
        _interpolate(scale_factor=1.7, mode="linear", recompute_scale_factor=True),
    )
    assert_converts(nn.Sequential(nn.Conv1d(2, 2, 1), bank), (2, 8), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_upsample_2d(dtype):
    as_image = Apply(nn.Identity(), head=lambda y: y.unsqueeze(-1).expand(-1, -1, -1, 3) * torch.arange(1.0, 4.0))
    bank = Bank(
        nn.Sequential(as_image, nn.Upsample(scale_factor=(1.5, 2), mode="bilinear")),
        nn.Sequential(as_image, nn.Upsample(size=(11, 5), mode="bilinear", align_corners=True)),
        nn.Sequential(as_image, nn.Upsample(size=(13, 4), mode="nearest")),
    )
    assert_converts(nn.Sequential(nn.Conv1d(2, 2, 1), bank), (2, 8), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, float("inf"), 0.0])
def test_cdist(dtype, p):
    # Row 0 of both sets is the same point: a zero distance, whose gradient torch defines as 0.
    def head(y):
        points = y.transpose(1, 2)
        return torch.cdist(points, torch.cat([points[:, :1], points[:, 2:5] * 0.5], 1), p=p)

    assert_converts(Apply(nn.Conv1d(2, 3, 1), head=head), (2, 8), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("length", "mode"),
    [
        (32, "use_mm_for_euclid_dist_if_necessary"),  # over 25 rows: matrix products
        (8, "use_mm_for_euclid_dist"),
        (32, "donot_use_mm_for_euclid_dist"),
    ],
)
def test_cdist_by_matrix_products_as_torch_chooses(dtype, length, mode):
    # A zero row in both sets: a distance that is exactly 0, whose gradient torch defines as 0, not NaN.
    # (Other coincident points would not do: the product form leaves them rounding noise, in torch too.)
    def head(y):
        points = y.transpose(1, 2)
        zero = points[:, :1] * 0
        return torch.cdist(
            torch.cat([points, zero], 1), torch.cat([points[:, 1:4] * 0.5 + 0.1, zero], 1), compute_mode=mode
        )

    assert_converts(Apply(nn.Conv1d(2, 3, 1), head=head), (2, length), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
def test_pdist(dtype, p):
    # Rows 0 and 3 are the same point: a zero distance, whose gradient torch defines as 0.
    def head(y):
        points = y[0].T
        return torch.nn.functional.pdist(torch.cat([points[:3], points[:1], points[4:]]), p=p)[None]

    assert_converts(Apply(nn.Conv1d(2, 3, 1), head=head), (2, 8), dtype, n=1)


class OfTwoHalves(nn.Module):
    """`layer(first half, second half)` of the last axis: a two-input layer on one input."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return self.layer(x[..., :half], x[..., half:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_bilinear(dtype):
    bank = Bank(
        OfTwoHalves(nn.Bilinear(4, 4, 3)),  # (N, 4, 4) and (N, 4, 4): over each channel's halves
        nn.Sequential(nn.Flatten(), OfTwoHalves(nn.Bilinear(16, 16, 2, bias=False))),
    )
    assert_converts(nn.Sequential(nn.Conv1d(2, 4, 1), bank), (2, 8), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_at_positions_the_network_computes(dtype, mode, padding, align_corners):
    # A learned warp of a (3 x 8) image: positions reach beyond [-1, 1], where padding decides.
    def head(y):
        image = y[:, :1].reshape(-1, 1, 3, 8)
        grid = torch.stack([1.4 * torch.tanh(y[:, 1]), torch.tanh(y[:, 2])], -1).reshape(-1, 2, 12, 2)
        return torch.nn.functional.grid_sample(image, grid, mode, padding, align_corners)

    assert_converts(Apply(nn.Conv1d(2, 3, 1), head=head), (2, 24), dtype)


def _addbmm_per_sample(y: torch.Tensor) -> torch.Tensor:
    # addbmm sums over its first axis: the sample's channels here, so that samples stay apart.
    return torch.stack([torch.addbmm(s[:, :2, None].sum(0), s[:, :2, None], s[:, None, 2:5], beta=0.5) for s in y])


@pytest.mark.parametrize("dtype", DTYPES)
def test_addbmm(dtype):
    assert_converts(Apply(nn.Conv1d(2, 3, 1), head=_addbmm_per_sample), (2, 8), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_norm_parametrization(dtype):
    bank = Bank(*(nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 3, 3), dim=dim) for dim in (0, 1, None)))
    assert_converts(nn.Sequential(bank, nn.Tanh()), (2, 8), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_norm_legacy_hook(dtype):
    # The hook version holds `weight` as a non-leaf tensor, which cannot be
    # deep-copied, so build it in the target dtype and convert it directly.
    torch_dtype = TORCH_DTYPES[dtype]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the hook version
        net = nn.utils.weight_norm(nn.Conv1d(2, 3, 3).to(torch_dtype)).eval()
    x = torch.as_tensor(np.random.default_rng(0).standard_normal((2, 2, 8))).to(torch_dtype)
    expected_out, expected_jac = torch_reference(net, x)
    with precision(dtype):
        model = jaxjac.convert(net, x, dtype=dtype, check=False)
        assert_close(np.asarray(model(x.numpy())), expected_out, dtype, "outputs")
        assert_close(jaxjac.jacobian(model, x.numpy()), expected_jac, dtype, "Jacobians")


def _last_step(y: tuple) -> torch.Tensor:
    return y[0][:, -1]


def _sequence(y: tuple) -> torch.Tensor:
    return y[0]


def _final_hidden(y: tuple) -> torch.Tensor:
    # h_n of an LSTM is y[1][0], of a GRU y[1]; (layers * directions, N, H) -> (N, ...).
    h = y[1][0] if isinstance(y[1], tuple) else y[1]
    return h.transpose(0, 1)


def _rnn(cell: type[nn.Module], head: Callable, **options) -> nn.Module:
    return Apply(cell(3, 4, batch_first=True, **options), head=head)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN:UserWarning")
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm(dtype):
    bank = Bank(
        _rnn(nn.LSTM, _sequence, num_layers=1),
        _rnn(nn.LSTM, _last_step, num_layers=2, bidirectional=True),
        _rnn(nn.LSTM, _final_hidden, num_layers=1, proj_size=2),
    )
    assert_converts(bank, (5, 3), dtype, n=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gru(dtype):
    bank = Bank(
        _rnn(nn.GRU, _sequence, num_layers=1, bidirectional=True),
        _rnn(nn.GRU, _last_step, num_layers=2, bias=False),
        _rnn(nn.GRU, _final_hidden, num_layers=1),
    )
    assert_converts(bank, (5, 3), dtype, n=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn(dtype):
    bank = Bank(
        _rnn(nn.RNN, _sequence, num_layers=2, bidirectional=True),
        _rnn(nn.RNN, _final_hidden, nonlinearity="relu", bias=False),
        Apply(nn.LSTM(3, 4), head=lambda y: y[0].transpose(0, 1), prep=lambda x: x.transpose(0, 1)),  # time first
    )
    assert_converts(bank, (5, 3), dtype, n=2)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrences_are_scanned_not_unrolled(cell):
    # torch's decomposition unrolls every step: the graph (and its compilation) grew with the length.
    sizes = []
    for length in (4, 64):
        model = jaxjac.convert(_rnn(cell, _last_step).eval(), torch.zeros(1, length, 3), check=False)
        sizes.append(len(model.graph.nodes))
    assert sizes[0] == sizes[1]


class SelfAttention(nn.Module):
    """`nn.MultiheadAttention(x, x, x)` with call options, returning `head` of its (output, weights)."""

    def __init__(self, head: Callable, call_options: dict | None = None, **layer_options):
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True, **layer_options)
        self.call_options, self.head = call_options or {}, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attention(x, x, x, **self.call_options))


@pytest.mark.parametrize("dtype", DTYPES)
def test_multihead_self_attention(dtype):
    bank = Bank(
        SelfAttention(lambda y: y[0]),
        SelfAttention(lambda y: y[0], {"need_weights": False}),
        SelfAttention(lambda y: y[1]),
        SelfAttention(lambda y: y[1], {"average_attn_weights": False}),
        SelfAttention(lambda y: y[0], bias=False, add_bias_kv=True),
    )
    assert_converts(bank, (6, 4), dtype, n=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transformer_encoder_layer(dtype):
    bank = Bank(
        *(
            nn.TransformerEncoderLayer(
                4, 2, dim_feedforward=8, dropout=0.1, activation=activation, batch_first=True, norm_first=norm_first
            )
            for activation in ("relu", "gelu")
            for norm_first in (False, True)
        )
    )
    assert_converts(bank, (6, 4), dtype, n=2)


class CausalEncoder(nn.Module):
    """A TransformerEncoder over time steps with a causal mask buffer, without `is_causal`."""

    def __init__(self, mask_dtype: torch.dtype):
        super().__init__()
        layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        causal = nn.Transformer.generate_square_subsequent_mask(6)
        self.register_buffer("mask", causal if mask_dtype.is_floating_point else causal.isinf())

    def forward(self, x):
        return self.encoder(x, mask=self.mask).flatten(1)  # every step's output: the mask shows


@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool])
@pytest.mark.parametrize("dtype", DTYPES)
def test_transformer_encoder_with_a_causal_mask(dtype, mask_dtype):
    # torch asks whether the mask is causal by comparing values, which torch.export cannot trace.
    torch.manual_seed(0)
    model = assert_converts(CausalEncoder(mask_dtype), (6, 4), dtype, n=2)
    with precision(dtype):
        jac = jaxjac.jacobian(model, np.ones((1, 6, 4), dtype))[0].reshape(6, 4, 6, 4)
    assert np.all(jac[0, :, 1:] == 0) and np.any(jac[-1, :, :-1] != 0)  # step 0 sees only itself


def test_float64_conversion_needs_x64_is_not_silently_float32():
    # A guard that the float64 cases above really ran in 64 bits.
    with jax.enable_x64(True):
        model = assert_converts(nn.Linear(4, 2), (4,), "float64", n=2)
        assert np.asarray(model(np.zeros((1, 4)))).dtype == np.float64
