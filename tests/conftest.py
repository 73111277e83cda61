"""Test configuration: deterministic torch, few threads so two cores are enough."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


DTYPES = ("float32", "float64")
