"""Forward-pass idioms of hand-written models convert and match torch autograd.

Each case is a small module whose `forward` uses one idiom (residual adds,
functional calls, buffers, slicing, advanced indexing, constants made in
forward, ...); each is checked on outputs and per-sample Jacobians in float32
and float64.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_converts

DTYPES = ("float32", "float64")


class Fn(nn.Module):
    """`forward(x) = fn(self, x)`, with `modules` and `params` as attributes of `self`."""

    def __init__(self, fn: Callable, buffers: dict | None = None, params: dict | None = None, **modules: nn.Module):
        super().__init__()
        self.fn = fn
        for name, module in modules.items():
            setattr(self, name, module)
        for name, value in (buffers or {}).items():
            self.register_buffer(name, value)
        for name, value in (params or {}).items():
            setattr(self, name, nn.Parameter(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


def conv(cin: int = 2, cout: int = 2, k: int = 3, **options) -> nn.Conv1d:
    return nn.Conv1d(cin, cout, k, padding=k // 2, **options)


def _cases() -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
    torch.manual_seed(0)
    return {
        "residual-add": (lambda: Fn(lambda s, x: x + s.c2(torch.relu(s.c1(x))), c1=conv(), c2=conv()), (2, 16)),
        "cat-branches": (
            lambda: Fn(lambda s, x: torch.cat([s.a(x), s.b(x), x], dim=1), a=conv(2, 3), b=conv(2, 1, 5)),
            (2, 16),
        ),
        "view-flatten-head": (
            lambda: Fn(lambda s, x: s.fc(s.c(x).view(x.shape[0], -1)), c=conv(), fc=nn.Linear(32, 3)),
            (2, 16),
        ),
        "flatten-permute-transpose": (
            lambda: Fn(
                lambda s, x: s.fc(s.c(x).permute(0, 2, 1)).transpose(1, 2).flatten(1), c=conv(), fc=nn.Linear(2, 4)
            ),
            (2, 8),
        ),
        "functional-conv-weight-parameter": (
            lambda: Fn(
                lambda s, x: F.conv1d(x, s.w, s.b, padding=1, stride=2),
                params={"w": torch.randn(3, 2, 3), "b": torch.randn(3)},
            ),
            (2, 16),
        ),
        "functional-max-pool": (lambda: Fn(lambda s, x: F.max_pool1d(s.c(x), 2, stride=2), c=conv()), (2, 16)),
        "functional-pad-modes": (
            lambda: Fn(
                lambda s, x: torch.cat(
                    [
                        F.pad(x, (2, 3)),
                        F.pad(x, (2, 3), mode="reflect"),
                        F.pad(x, (2, 3), mode="replicate"),
                        F.pad(x, (2, 3), mode="circular"),
                        F.pad(x, (1, -2), value=0.5),
                    ],
                    dim=-1,
                )
            ),
            (2, 16),
        ),
        "band-normalisation-buffers": (
            lambda: Fn(
                lambda s, x: s.c((x - s.mean) / s.std),
                buffers={"mean": torch.linspace(-1, 1, 16), "std": torch.linspace(0.5, 2, 16)},
                c=conv(),
            ),
            (2, 16),
        ),
        "slice-both-ends": (lambda: Fn(lambda s, x: s.c(x)[:, :, 10:-5], c=conv()), (2, 20)),
        "slice-step": (
            lambda: Fn(lambda s, x: x[..., ::2] * x[..., 1::2] + x[:, -1:, 3::3].sum(-1, keepdim=True)),
            (2, 18),
        ),
        "scalar-arithmetic": (lambda: Fn(lambda s, x: (x * 2 + 1) * (1 - x) + x / 3 - 2 ** (x / 4)), (2, 8)),
        "clamp": (
            lambda: Fn(lambda s, x: torch.clamp(3 * x, -0.5, 0.7) + x.clamp(min=0.1) + x.clamp(max=-0.2)),
            (2, 16),
        ),
        "unsqueeze-inside": (lambda: Fn(lambda s, x: s.c(x.unsqueeze(1)).squeeze(1), c=conv(1, 1)), (16,)),
        "tensor-constant-in-forward": (
            lambda: Fn(lambda s, x: x * torch.tensor([1.5, -2.0]).view(1, 2, 1) + torch.tensor(0.25)),
            (2, 8),
        ),
        "mean-and-max-last-axis": (lambda: Fn(lambda s, x: x.mean(dim=-1) + x.max(dim=-1).values), (3, 8)),
        "gather": (
            lambda: Fn(lambda s, x: x.gather(-1, torch.tensor([[[0, 5, 5, 2], [7, 1, 0, 0]]]))),
            (2, 8),
        ),
        "gather-argmax": (lambda: Fn(lambda s, x: x.gather(-1, x.argmax(-1, keepdim=True))), (2, 8)),
        "index-select": (
            lambda: Fn(
                lambda s, x: (
                    x.index_select(-1, torch.tensor([0, 3, 3, 7])) + x.index_select(1, torch.tensor([1]))[..., :4]
                )
            ),
            (2, 8),
        ),
        "advanced-indexing": (
            lambda: Fn(
                lambda s, x: (
                    x[:, torch.tensor([1, 0, 1]), torch.tensor([[2], [5]])]
                    + x[:, None, :, torch.tensor([0, -1])].sum(-2, keepdim=True).mT
                )
            ),
            (2, 8),
        ),
        "expand-repeat-interleave": (
            lambda: Fn(
                lambda s, x: (
                    x[:, :1].expand(-1, 3, -1) * x.repeat_interleave(2, dim=-1)[..., ::2].repeat(1, 2, 1)[:, 1:]
                )
            ),
            (2, 8),
        ),
        "split-chunk-unbind": (
            lambda: Fn(
                lambda s, x: x.split([3, 5], -1)[1].sum(-1) + x.chunk(3, -1)[2].mean(-1) + sum(x.unbind(1))[:, :1]
            ),
            (2, 8),
        ),
        "unfold-roll-flip": (
            lambda: Fn(lambda s, x: x.unfold(-1, 3, 2).sum(-1) + x.roll(2, -1)[..., :3] * x.flip(-1)[..., :3]),
            (2, 8),
        ),
        "arange-full-zeros-in-forward": (
            lambda: Fn(
                lambda s, x: (
                    torch.cat(
                        [x * torch.arange(8, dtype=torch.float32), x + torch.full((8,), 3), torch.zeros(1, 2, 3)], -1
                    )
                    + torch.arange(0.0, 2.5, 0.125)[:19]
                    + torch.full((19,), 0.1)
                )
            ),
            (2, 8),
        ),
        "masked-fill-where-tril": (
            lambda: Fn(
                lambda s, x: (
                    torch.where(x > 0, x, x.masked_fill(x < -1, 0.0) * 2)
                    + torch.tril(x[:, :, :2] @ x[:, :, :2].mT)[..., :1]
                )
            ),
            (2, 8),
        ),
        "matmul-einsum-softmax": (
            lambda: Fn(lambda s, x: torch.einsum("bcl,bdl->bcd", x, x).softmax(-1) @ x + torch.bmm(x, x.mT)[..., :1]),
            (2, 8),
        ),
        "scaled-dot-product-attention": (
            lambda: Fn(
                lambda s, x: (
                    F.scaled_dot_product_attention(x, x, x)
                    + F.scaled_dot_product_attention(x, 2 * x, x, is_causal=True)
                )
            ),
            (5, 4),
        ),
    }


CASES = _cases()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_idiom_converts(case, dtype):
    make, sample_shape = case
    assert_converts(make(), sample_shape, dtype, n=2)
