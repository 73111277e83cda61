"""The fast decomposition gives the very program torch's own `run_decompositions` gives.

`jaxjac._decompositions.decompose` hands torch only the CIA ops whose
treatment needs its bookkeeping; these tests compare its program, node for
node, with the one torch computes with the full bookkeeping, on the model zoo
and on ops that decompose differently with and without autograd, are kept
whole, or are kept by torch's default table.
"""

from __future__ import annotations

import pytest
import torch
from architectures import ARCHITECTURES
from helpers import Fn
from torch import nn

from jaxjac import _decompositions
from jaxjac._export import _traced_and_decomposed

OP_NETS = {
    # matmul folds a batch into mm for a weight that requires grad, and calls bmm below autograd.
    "linear-over-time": (lambda: _LinearOverTime(nn.Linear(4, 5)), (4, 6)),
    "batched-matmul": (lambda: Fn(lambda x: x.transpose(1, 2) @ x), (4, 6)),
    "lstm": (lambda: _LastStates(nn.LSTM(6, 5, batch_first=True)), (4, 6)),
    "cdist-hardswish-std": (
        lambda: Fn(lambda x: torch.cdist(x, x) + nn.functional.hardswish(x).std(dim=-1, keepdim=True)),
        (4, 6),
    ),
    "upsample-bilinear": (
        lambda: Fn(lambda x: nn.functional.interpolate(x[None], scale_factor=2, mode="bilinear")),
        (4, 6),
    ),
    "layer-norm-gelu-dropout": (lambda: nn.Sequential(nn.LayerNorm(6), nn.GELU(), nn.Dropout(0.2)), (4, 6)),
    "no-grad-block": (lambda: Fn(_mean_without_gradient), (4, 6)),
}


class _LinearOverTime(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.transpose(1, 2))


class _LastStates(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def _mean_without_gradient(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        m = x.mean(-1, keepdim=True)
    return (x - m).tanh()


def _traced(net: nn.Module, sample_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    """The program as jaxjac traces it, before decomposition."""
    program, _, failure = _traced_and_decomposed(net.eval(), torch.randn(1, *sample_shape))
    assert failure is None, failure
    return program


def _assert_same_program(fast: torch.export.ExportedProgram, slow: torch.export.ExportedProgram) -> None:
    assert fast.graph_module.code == slow.graph_module.code
    assert str(fast.graph_signature) == str(slow.graph_signature)
    assert list(fast.state_dict) == list(slow.state_dict)
    assert list(fast.constants) == list(slow.constants)


@pytest.mark.parametrize("name", [*ARCHITECTURES, *OP_NETS])
def test_fast_decomposition_gives_torch_s_program(name):
    make, sample_shape = {**ARCHITECTURES, **OP_NETS}[name]
    program = _traced(make(), sample_shape)
    _assert_same_program(_decompositions.decompose(program), _decompositions.decompose_as_torch_does(program))


def test_the_fast_path_is_taken_and_leaves_torch_as_it_was():
    from torch.export import exported_program

    collect = exported_program._collect_all_valid_cia_ops
    assert _decompositions._fast_path() is not None, "torch's internals changed: every conversion takes the slow path"
    _decompositions.decompose(_traced(nn.Linear(6, 2), (6,)))
    assert exported_program._collect_all_valid_cia_ops is collect
