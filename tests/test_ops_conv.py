"""Convolution lowerings against torch autograd: every Conv1d/ConvTranspose1d option, F.conv1d and F.pad."""

from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import TORCH_DTYPES, assert_close, assert_converts, cast, precision, swap_lowering, torch_reference
from jax import lax

import jaxjac
from jaxjac._check import format_report
from jaxjac.converters import conv
from jaxjac.converters.conv import conv_tile, patches_conv1d, tiled_conv1d, use_patches

DTYPES = ("float32", "float64")
CHANNELS, LENGTH = 3, 17
SAMPLE = (CHANNELS, LENGTH)


class Functional(nn.Module):
    """Runs `fn(x, weight, bias)` in forward, so functional ops with parameters are exported."""

    def __init__(self, fn: Callable[..., torch.Tensor], weight_shape: tuple[int, ...] = (), bias: int = 0):
        super().__init__()
        self.fn = fn
        self.weight = nn.Parameter(torch.randn(weight_shape)) if weight_shape else None
        self.bias = nn.Parameter(torch.randn(bias)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.weight, self.bias)


CONV1D = {
    "stride2-pad1": dict(out_channels=4, kernel_size=3, stride=2, padding=1),
    "stride3-pad4-k5": dict(out_channels=2, kernel_size=5, stride=3, padding=4),
    "dilation2-pad3-stride2": dict(out_channels=4, kernel_size=4, dilation=2, padding=3, stride=2),
    "same-odd": dict(out_channels=4, kernel_size=5, padding="same"),
    "same-even": dict(out_channels=4, kernel_size=4, padding="same"),
    "same-even-dilation3": dict(out_channels=4, kernel_size=4, padding="same", dilation=3),
    "valid": dict(out_channels=4, kernel_size=6, padding="valid"),
    "reflect-stride2-dilation2": dict(
        out_channels=4, kernel_size=3, padding=3, padding_mode="reflect", stride=2, dilation=2
    ),
    "replicate": dict(out_channels=4, kernel_size=3, padding=3, padding_mode="replicate"),
    "circular-dilation2-stride2": dict(
        out_channels=4, kernel_size=3, padding=4, padding_mode="circular", dilation=2, stride=2
    ),
    "same-even-reflect": dict(out_channels=4, kernel_size=4, padding="same", padding_mode="reflect"),
    "same-replicate-dilation2": dict(
        out_channels=4, kernel_size=3, padding="same", padding_mode="replicate", dilation=2
    ),
    "same-even-circular": dict(out_channels=4, kernel_size=6, padding="same", padding_mode="circular"),
    "groups3": dict(out_channels=6, kernel_size=3, groups=3, padding=1),
    "depthwise": dict(out_channels=3, kernel_size=3, groups=3),
    "depthwise-multiplier2": dict(out_channels=6, kernel_size=5, groups=3, padding="same"),
    "no-bias": dict(out_channels=4, kernel_size=3, bias=False),
    "everything": dict(
        out_channels=6, kernel_size=4, stride=2, padding=3, dilation=2, groups=3, bias=False, padding_mode="replicate"
    ),
}

CONV_TRANSPOSE1D = {
    "stride2-pad1-outpad1": dict(out_channels=4, kernel_size=3, stride=2, padding=1, output_padding=1),
    "stride3-outpad2-k4": dict(out_channels=2, kernel_size=4, stride=3, output_padding=2),
    "dilation3-outpad2": dict(out_channels=4, kernel_size=2, dilation=3, stride=2, output_padding=2),
    "pad-beyond-kernel": dict(out_channels=4, kernel_size=3, stride=3, padding=3),
    "groups3": dict(out_channels=6, kernel_size=3, groups=3, stride=2),
    "depthwise": dict(out_channels=3, kernel_size=4, groups=3, stride=2, padding=1),
    "no-bias": dict(out_channels=4, kernel_size=3, stride=2, bias=False),
    "everything": dict(
        out_channels=6, kernel_size=3, stride=2, padding=2, output_padding=1, groups=3, dilation=2, bias=False
    ),
}

FUNCTIONAL = {
    "conv1d-stride-dilation-groups": lambda: Functional(
        lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=2, dilation=2, groups=3), (6, 1, 3), bias=6
    ),
    "conv1d-same-even": lambda: Functional(lambda x, w, b: F.conv1d(x, w, b, padding="same"), (4, 3, 4), bias=4),
    "conv-transpose1d": lambda: Functional(
        lambda x, w, b: F.conv_transpose1d(x, w, b, stride=2, padding=1, output_padding=1, groups=3, dilation=2),
        (3, 2, 3),
        bias=6,
    ),
    "pad-constant": lambda: Functional(lambda x, w, b: F.pad(x, (2, 3), mode="constant", value=1.5) * 2),
    "pad-constant-crop": lambda: Functional(lambda x, w, b: F.pad(x, (-2, 3)) * 2),
    "pad-reflect": lambda: Functional(lambda x, w, b: F.pad(x, (1, 4), mode="reflect") * 2),
    "pad-replicate": lambda: Functional(lambda x, w, b: F.pad(x, (3, 1), mode="replicate") * 2),
    "pad-circular": lambda: Functional(lambda x, w, b: F.pad(x, (1, 3), mode="circular") * 2),
    "pad-reflect-conv-stack": lambda: nn.Sequential(
        nn.ReflectionPad1d((2, 1)),
        nn.Conv1d(3, 4, 4),
        nn.ReplicationPad1d(1),
        nn.Tanh(),
        nn.CircularPad1d((1, 2)),
        nn.Conv1d(4, 2, 3, stride=2),
    ),
}


def _cases(table: dict, make: Callable) -> list:
    """`(make_net, dtype)` params named `option-dtype`, every option in both dtypes."""
    return [
        pytest.param(make(options), dtype, id=f"{name}-{dtype}") for name, options in table.items() for dtype in DTYPES
    ]


# torch warns that it copies the input to pad an even 'same' kernel; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")


@pytest.mark.parametrize(("make", "dtype"), _cases(CONV1D, lambda o: lambda: nn.Conv1d(CHANNELS, **o)))
def test_conv1d(make: Callable[[], nn.Module], dtype: str) -> None:
    assert_converts(make(), SAMPLE, dtype, n=2)


@pytest.mark.parametrize(
    ("make", "dtype"), _cases(CONV_TRANSPOSE1D, lambda o: lambda: nn.ConvTranspose1d(CHANNELS, **o))
)
def test_conv_transpose1d(make: Callable[[], nn.Module], dtype: str) -> None:
    assert_converts(make(), SAMPLE, dtype, n=2)


@pytest.mark.parametrize(("make", "dtype"), _cases(FUNCTIONAL, lambda f: f))
def test_functional(make: Callable[[], nn.Module], dtype: str) -> None:
    assert_converts(make(), SAMPLE, dtype, n=2)


# 2D and 3D convolutions (EEG models convolve over (electrodes, time)). torch
# records `padding="valid"` as one value for every axis: `padding=[0]`.
CONV_ND = {
    "conv2d-valid": (lambda: nn.Conv2d(CHANNELS, 4, (1, 5), padding="valid"), (CHANNELS, 3, 12)),
    "conv2d-valid-depthwise": (
        lambda: nn.Conv2d(CHANNELS, 6, (2, 1), groups=CHANNELS, padding="valid"),
        (CHANNELS, 3, 12),
    ),
    "conv2d-same-stride-dilation": (
        lambda: nn.Conv2d(CHANNELS, 4, (3, 4), padding="same", dilation=(1, 2)),
        (CHANNELS, 5, 12),
    ),
    "conv2d-int-options": (lambda: nn.Conv2d(CHANNELS, 4, 3, stride=2, padding=1, dilation=2), (CHANNELS, 7, 12)),
    "conv3d-valid": (lambda: nn.Conv3d(CHANNELS, 2, (1, 2, 3), padding="valid"), (CHANNELS, 2, 3, 8)),
    "conv-transpose2d": (lambda: nn.ConvTranspose2d(CHANNELS, 2, (1, 3), stride=2, output_padding=1), (CHANNELS, 2, 6)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("make", "sample"), CONV_ND.values(), ids=CONV_ND.keys())
def test_conv_2d_and_3d(make: Callable[[], nn.Module], sample: tuple[int, ...], dtype: str) -> None:
    assert_converts(make(), sample, dtype, n=2)


# -- the CPU forms of thin 1D convolutions (converters/conv.py) -----------------
#
# `(in_channels, length, Conv1d options)`: every case takes the tiled path on
# CPU (`conv_tile` gives a tile), with tiles of several sizes, windows
# spanning several input tiles, strides, dilations, outputs that end mid-tile
# and inputs whose tail no window reads.
TILED = {
    "one-channel-k7": (1, 40, dict(out_channels=8, kernel_size=7, padding=3)),
    "one-channel-k7-stride2": (1, 41, dict(out_channels=16, kernel_size=7, stride=2, padding=3)),
    "one-channel-one-out-k5": (1, 64, dict(out_channels=1, kernel_size=5, padding=2)),
    "long-k39-same": (8, 60, dict(out_channels=8, kernel_size=39, padding="same", bias=False)),
    "k19-same": (8, 45, dict(out_channels=8, kernel_size=19, padding="same")),
    "k9-stride3-dilation2": (4, 50, dict(out_channels=4, kernel_size=9, stride=3, dilation=2, padding=5)),
    "k4-even-same": (3, 23, dict(out_channels=5, kernel_size=4, padding="same")),
    "k6-stride2-unread-tail": (2, 27, dict(out_channels=8, kernel_size=6, stride=2)),
    "out32-k7": (2, 30, dict(out_channels=32, kernel_size=7, padding=3)),
    "k5-reflect": (3, 33, dict(out_channels=4, kernel_size=5, padding=2, padding_mode="reflect")),
}


# `(in_channels, length, Conv1d options)`: every case has more output channels
# than the tiled form takes, and 1-4 input channels, and so runs as one
# product over its patches on CPU.
PATCHES = {
    "one-channel-k7-out64": (1, 40, dict(out_channels=64, kernel_size=7, padding=3)),
    "one-channel-k15-stride2": (1, 45, dict(out_channels=48, kernel_size=15, stride=2, padding=7)),
    "two-channel-k5-dilation2": (2, 30, dict(out_channels=40, kernel_size=5, dilation=2, padding=4, bias=False)),
    "four-channel-k8-even-same": (4, 23, dict(out_channels=36, kernel_size=8, padding="same")),
    "k3-stride3-unread-tail": (3, 29, dict(out_channels=33, kernel_size=3, stride=3)),
    "k5-reflect": (1, 33, dict(out_channels=40, kernel_size=5, padding=2, padding_mode="reflect")),
}

# form: (the conv.py rule that chooses it, cases for which it must answer yes).
CPU_FORMS = {"tiled": ("conv_tile", TILED), "patches": ("use_patches", PATCHES)}


@pytest.mark.parametrize(
    ("form", "make", "sample", "dtype"),
    [
        pytest.param(form, lambda c=c, o=o: nn.Conv1d(c, **o), (c, n), dtype, id=f"{form}-{name}-{dtype}")
        for form, (_, cases) in CPU_FORMS.items()
        for name, (c, n, o) in cases.items()
        for dtype in DTYPES
    ],
)
def test_conv1d_cpu_forms(form: str, make: Callable[[], nn.Module], sample: tuple[int, int], dtype: str) -> None:
    name = CPU_FORMS[form][0]
    rule, answers = getattr(conv, name), []

    def recording(*shape: int) -> int | bool | None:
        answers.append(rule(*shape))
        return answers[-1]

    with mock.patch.object(conv, name, recording):
        assert_converts(make(), sample, dtype, n=2)
    if dtype == "float64":  # every float64 1D convolution is a product over patches on CPU; the rules are not asked
        return
    assert answers and all(a not in (None, False) for a in answers), f"should take the {form} form; {name}: {answers}"


# `(C_in, C_out, k, L, stride, dilation, (left, right) padding)`; negative right padding crops.
PATCHES_SHAPES = [
    (1, 64, 7, 50, 1, 1, (3, 3)),
    (1, 40, 15, 61, 2, 1, (7, 7)),
    (4, 36, 8, 23, 1, 1, (3, 4)),
    (2, 34, 5, 30, 3, 2, (0, 0)),
    (3, 40, 3, 12, 1, 1, (1, -2)),
]


FORM_RTOL = {"float32": 1e-5, "float64": 1e-12}


def assert_equals_xla_conv(shape: tuple, dtype: str, forms: Callable[..., dict[str, Callable]]) -> None:
    """Each of `forms(w, stride, padding, dilation)`, forward and input gradient, against XLA's convolution to rounding.

    `shape` is `(C_in, C_out, k, L, stride, dilation, (left, right) padding)`.
    """
    c_in, c_out, kernel, length, stride, dilation, padding = shape
    rng = np.random.default_rng(0)
    with precision(dtype):
        x = jnp.asarray(rng.standard_normal((3, length, c_in)), dtype)
        w = jnp.asarray(rng.standard_normal((c_out, c_in, kernel)), dtype)

        def xla(x):
            return lax.conv_general_dilated(
                x, w, (stride,), [padding], rhs_dilation=(dilation,), dimension_numbers=("NHC", "OIH", "NHC")
            )

        expected, vjp = jax.vjp(xla, x)
        cotangent = jnp.asarray(rng.standard_normal(expected.shape), dtype)
        (expected_grad,) = vjp(cotangent)
        for name, form in forms(w, stride, padding, dilation).items():
            actual, vjp = jax.vjp(jax.jit(form), x)
            (grad,) = vjp(cotangent)
            assert actual.dtype == expected.dtype
            for a, e, what in ((actual, expected, "values"), (grad, expected_grad, "input gradient")):
                assert a.shape == e.shape, f"{name}: {what} shape {a.shape} != {e.shape}"
                err = float(np.max(np.abs(np.asarray(a) - np.asarray(e))) / np.max(np.abs(np.asarray(e))))
                assert err <= FORM_RTOL[dtype], f"{name}: {what} relative error {err:.3g} ({dtype})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PATCHES_SHAPES, ids=lambda s: "x".join(map(str, s[:6])) + f"-pad{s[6][0]}_{s[6][1]}")
def test_patches_conv1d_equals_xla_conv(shape: tuple, dtype: str) -> None:
    assert_equals_xla_conv(
        shape,
        dtype,
        lambda w, stride, padding, dilation: {
            "patches": lambda x: patches_conv1d(x, w, stride=stride, padding=padding, dilation=dilation)
        },
    )


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((1, 7), True),  # Conv1d(1, 64, 7): wide-cnn's first layer
        ((1, 15), True),
        ((4, 8), True),
        ((2, 16), True),
        ((1, 33), False),  # a longer contraction is not thin
        ((8, 3), False),  # more input channels
        ((1, 1), False),  # pointwise layers stay XLA's
        ((32, 1), False),
    ],
)
def test_use_patches_rule(shape: tuple[int, int], expected: bool) -> None:
    assert use_patches(*shape) == expected


def test_patches_conv_reaches_the_compiled_program() -> None:
    """On CPU a thin convolution compiles to a matrix product, with no convolution or conditional left."""
    model = jaxjac.convert(nn.Conv1d(1, 64, 7, padding=3).eval(), torch.zeros(1, 1, 32), check=False)
    hlo = jax.jit(model.__call__).lower(jnp.zeros((2, 1, 32))).compile().as_text()
    assert " convolution(" not in hlo
    assert "conditional" not in hlo


# `(C_in, C_out, k, L, stride, dilation, (left, right) padding)`; negative right padding crops.
TILED_SHAPES = [
    (1, 8, 7, 50, 1, 1, (3, 3)),
    (8, 8, 39, 64, 1, 1, (19, 19)),
    (3, 4, 5, 17, 3, 1, (4, 4)),
    (3, 4, 4, 17, 2, 2, (3, 3)),
    (2, 5, 3, 10, 2, 1, (0, 0)),
    (3, 4, 3, 8, 1, 3, (2, 5)),
    (2, 3, 3, 12, 1, 1, (1, -2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", TILED_SHAPES, ids=lambda s: "x".join(map(str, s[:6])) + f"-pad{s[6][0]}_{s[6][1]}")
def test_tiled_conv1d_equals_xla_conv(shape: tuple, dtype: str) -> None:
    """Every tile size."""
    assert_equals_xla_conv(
        shape,
        dtype,
        lambda w, stride, padding, dilation: {
            f"tile {tile}": lambda x, tile=tile: tiled_conv1d(
                x, w, stride=stride, padding=padding, dilation=dilation, tile=tile
            )
            for tile in (1, 2, 3, 4, 8, 64)
        },
    )


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((1, 8, 7, 230, 1, 1), 8),  # seed-cnn's first layer
        ((8, 16, 5, 116, 1, 1), 4),
        ((1, 16, 7, 230, 2, 1), 4),  # resnet1d's stem
        ((8, 8, 9, 232, 1, 1), 4),  # InceptionTime's branches
        ((8, 8, 39, 262, 1, 1), 4),
        ((1, 8, 63, 286, 1, 1), 32),
        ((8, 8, 5, 228, 2, 1), 2),
        ((16, 16, 3, 58, 1, 1), None),  # more input channels: XLA's own
        ((1, 64, 7, 230, 1, 1), None),  # more output channels
        ((32, 8, 1, 224, 1, 1), None),  # windows that do not overlap
        ((8, 8, 2, 224, 2, 1), None),
        ((1, 8, 3, 224, 1, 1), 4),
        ((8, 16, 3, 226, 2, 1), None),  # even 2-position tiles would do 2.7 times the work
    ],
)
def test_conv_tile_rule(shape: tuple[int, ...], expected: int | None) -> None:
    assert conv_tile(*shape) == expected


@pytest.mark.parametrize(("in_channels", "tiled"), [(8, True), (16, False)])
def test_tiled_conv_reaches_the_compiled_program(in_channels: int, tiled: bool) -> None:
    """On CPU the rule's choice reaches the compiled program, with no conditional left in it."""
    net = nn.Conv1d(in_channels, 8, 9, padding=4).eval()
    model = jaxjac.convert(net, torch.zeros(1, in_channels, 32), check=False)
    hlo = jax.jit(model.__call__).lower(jnp.zeros((2, in_channels, 32))).compile().as_text()
    # Untiled, XLA convolves the 32 positions (plus padding); tiled, 8 + 2 tiles of 4.
    convolutions = [line for line in hlo.splitlines() if " convolution(" in line]
    assert len(convolutions) == 1
    assert ("window={size=3}" in convolutions[0]) == tiled
    assert "conditional" not in hlo


@pytest.mark.parametrize(
    "net",
    [
        nn.Conv1d(8, 8, 9, padding=4, groups=8),  # depthwise
        nn.Conv1d(8, 16, 5, stride=2, dilation=2, groups=8),  # with a channel multiplier
        nn.Conv2d(8, 8, (3, 5), groups=8),
    ],
    ids=["depthwise", "multiplier", "2d"],
)
def test_depthwise_convolutions_are_shifted_products_on_cpu(net: nn.Module) -> None:
    """Their Jacobian compiles without XLA's grouped convolution, which is 10-250x slower on CPU."""
    assert_no_grouped_convolution(net, net.in_channels, "float32")


def assert_no_grouped_convolution(net: nn.Module, in_channels: int, dtype: str, expected: bool = True) -> None:
    """Whether the Jacobian of `net` (pooled to a 3-logit head) compiles without XLA's grouped convolution."""
    sample = (in_channels, 32) if isinstance(net, nn.Conv1d) else (in_channels, 6, 16)
    pool = nn.AdaptiveAvgPool1d(1) if isinstance(net, nn.Conv1d) else nn.AdaptiveAvgPool2d(1)
    head = nn.Sequential(net, pool, nn.Flatten(), nn.Linear(net.out_channels, 3))
    head = cast(head, dtype).eval()
    with precision(dtype):
        model = jaxjac.convert(head, torch.zeros(1, *sample, dtype=TORCH_DTYPES[dtype]), dtype=dtype)
        hlo = jax.jit(jaxjac.jacobian_fn(model)).lower(jnp.zeros((2, *sample), dtype)).compile().as_text()
    assert ("feature_group_count" not in hlo) == expected
    assert "conditional" not in hlo


# `(in_channels, length, Conv1d options)`: convolutions with groups that are not
# depthwise taps, and the form `grouped_form` gives them in (float32, float64).
GROUPED = {
    "two-per-group": (8, 30, dict(out_channels=8, kernel_size=3, groups=4, padding=1), ("block-diagonal", "split")),
    "multiplier-same-no-bias": (
        6,
        25,
        dict(out_channels=12, kernel_size=5, groups=3, padding="same", bias=False),
        ("block-diagonal", "split"),
    ),
    "stride2-dilation2": (
        12,
        33,
        dict(out_channels=6, kernel_size=4, stride=2, dilation=2, groups=3, padding=3),
        ("block-diagonal", "split"),
    ),
    "thick-groups": (18, 20, dict(out_channels=6, kernel_size=3, groups=2), ("split", "split")),
    "thick-groups-4": (40, 12, dict(out_channels=8, kernel_size=3, groups=4, padding=1), ("split", "split")),
    # 12 groups would compile slowly split.
    "thick-groups-12": (144, 12, dict(out_channels=48, kernel_size=3, groups=12), (None, None)),
    "depthwise-long-kernel": (4, 80, dict(out_channels=4, kernel_size=65, groups=4, padding=32), ("split", "split")),
    "depthwise-long-kernel-8": (8, 80, dict(out_channels=8, kernel_size=65, groups=8, padding=32), (None, None)),
    "many-groups": (132, 12, dict(out_channels=66, kernel_size=3, groups=66), (None, None)),
    "many-thin-groups": (
        34,
        12,
        dict(out_channels=34, kernel_size=3, groups=17, padding=1),
        ("block-diagonal", None),
    ),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("c", "n", "options", "forms"), GROUPED.values(), ids=GROUPED.keys())
def test_grouped_conv1d(c: int, n: int, options: dict, forms: tuple, dtype: str) -> None:
    form = forms[DTYPES.index(dtype)]
    assert conv.grouped_form(c // options["groups"], options["groups"], jnp.dtype(dtype)) == form
    assert_converts(nn.Conv1d(c, **options), (c, n), dtype, n=2)


@pytest.mark.parametrize(
    ("c", "options", "dtype", "form"),
    [
        pytest.param(c, options, dtype, form, id=f"{name}-{dtype}")
        for name, (c, _, options, forms) in GROUPED.items()
        for dtype, form in zip(DTYPES, forms, strict=True)
        # XLA itself expands some float64 grouped convolutions: only its float32 ones are sure to stay.
        if form is not None or dtype == "float32"
    ],
)
def test_grouped_forms_reach_the_compiled_program(c: int, options: dict, dtype: str, form: str | None) -> None:
    """On CPU a convolution with a form compiles with no grouped convolution left; the others keep XLA's."""
    assert_no_grouped_convolution(nn.Conv1d(c, **options), c, dtype, expected=form is not None)


def test_block_diagonal_kernel_is_exact() -> None:
    weight = jnp.asarray(np.random.default_rng(0).standard_normal((6, 2, 3)), jnp.float32)
    dense = np.asarray(conv.block_diagonal_kernel(weight, 3))
    expected = np.zeros((6, 6, 3), np.float32)
    for g in range(3):
        expected[2 * g : 2 * g + 2, 2 * g : 2 * g + 2] = np.asarray(weight[2 * g : 2 * g + 2])
    np.testing.assert_array_equal(dense, expected)


@pytest.mark.parametrize(
    ("in_channels", "kernel", "patches"), [(1, 5, True), (8, 5, True), (64, 5, True), (8, 16, True), (8, 17, False)]
)
def test_float64_convolutions_are_products_over_patches_on_cpu(in_channels: int, kernel: int, patches: bool) -> None:
    """XLA's float64 CPU convolution is 3-27x slower than the product; its Jacobian has no convolution left.

    Longer kernels keep XLA's convolution: their patches compile slowly.
    """
    net = nn.Sequential(nn.Conv1d(in_channels, 16, kernel, padding=2), nn.AdaptiveAvgPool1d(1), nn.Flatten())
    sample = torch.zeros(1, in_channels, 32, dtype=torch.float64)
    with jax.enable_x64(True):
        model = jaxjac.convert(net.double().eval(), sample, dtype="float64")
        hlo = jax.jit(jaxjac.jacobian_fn(model)).lower(jnp.zeros((2, in_channels, 32))).compile().as_text()
    assert (" convolution(" not in hlo) == patches
    assert "conditional" not in hlo


class HalfPrecisionRegions(nn.Module):
    """A forward that computes parts in bfloat16 (`torch.autocast`) or float16 (`.half()`), as mixed-precision inference does.

    With `exact`, the same function without the half floats: the reference for its Jacobian.
    """

    def __init__(self, cast: str, exact: bool = False) -> None:
        super().__init__()
        self.cast, self.exact = cast, exact
        self.conv = nn.Conv1d(2, 8, 5, padding=2)  # a tiled convolution on CPU
        self.wide = nn.Conv1d(8, 8, 3, groups=2)  # a grouped one
        self.head = nn.Linear(8 * 14, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cast == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not self.exact):
                h = self.wide(torch.relu(self.conv(x)))
                h = h + (h @ h.transpose(1, 2)).softmax(-1) @ h  # batched products, a softmax
                y = self.head(h.flatten(1))
            return y.to(x.dtype)
        half = x.dtype if self.exact else torch.float16
        h = torch.relu(F.conv1d(x.to(half), self.conv.weight.to(half), self.conv.bias.to(half), padding=2))
        h = F.conv1d(h, self.wide.weight.to(half), self.wide.bias.to(half), groups=2)
        return self.head(F.gelu(h).to(x.dtype).flatten(1))


@pytest.mark.parametrize("cast", ["autocast", "half"])
def test_half_float_regions_compute_like_torch(cast: str) -> None:
    # XLA summed a bfloat16 convolution's products in bfloat16, unlike torch in most entries, and a softmax.
    net = HalfPrecisionRegions(cast).eval()
    x = torch.randn(4, 2, 16, generator=torch.Generator().manual_seed(0))
    model = jaxjac.convert(net, x)  # the check passes
    with torch.no_grad():
        assert_close(np.asarray(model(x.numpy())), net(x).numpy(), "float32", "outputs")
    # Backward passes round to the half float where torch's use saved half-float outputs: the
    # Jacobians differ from torch's by that rounding, and are as close as torch's to the exact one.
    exact = HalfPrecisionRegions(cast, exact=True).double().eval()
    exact.load_state_dict(net.state_dict())
    truth = torch_reference(exact, x.double())[1]
    theirs = torch_reference(net, x)[1]
    ours = np.asarray(jaxjac.jacobian(model, x.numpy()))
    error = lambda jacobian: np.abs(jacobian - truth).max() / np.abs(truth).max()  # noqa: E731
    assert 1e-4 < error(theirs) and error(ours) < 2 * error(theirs), (error(ours), error(theirs))


@pytest.mark.parametrize(
    ("cast", "half", "rtol"), [("half", "float16", 8 * 2**-11), ("autocast", "bfloat16", 8 * 2**-8)]
)
def test_the_check_allows_half_float_rounding_and_still_catches_a_lowering_bug(
    cast: str, half: str, rtol: float, monkeypatch, request
) -> None:
    net = HalfPrecisionRegions(cast).eval()
    x = torch.randn(4, 2, 16, generator=torch.Generator().manual_seed(0))
    check = jaxjac.convert(net, x).metadata["check"]
    assert check["computes_in"] == [half] and check["rtol"] == pytest.approx(rtol)
    assert f"for a forward computing in {half})" in format_report(check)
    assert "computes_in" not in jaxjac.convert(HalfPrecisionRegions(cast, exact=True).eval(), x).metadata["check"]
    swap_lowering(monkeypatch, request, "aten.relu.default", lambda h: h)
    with pytest.raises(jaxjac.ConversionCheckError, match=f"beyond rtol={rtol:g}"):
        jaxjac.convert(net, x)
