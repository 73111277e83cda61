"""Test configuration: deterministic torch, few threads so two cores are enough."""

import re
import sys

import pytest
import torch
from checkpoint_nets import trained_net, write_arch_module, write_checkpoints

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_compile_cache_dir():
    # A command run in-process points JAX's compilation cache (and with it jaxjac's
    # program cache) at its test's folder; later tests must not share that folder.
    import jax

    saved = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", saved)


DTYPES = ("float32", "float64")


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    """The trained checkpoint net, shared by a test module."""
    return trained_net()


@pytest.fixture(scope="module")
def ckpts(net, tmp_path_factory) -> dict:
    """The net saved in every checkpoint format, by file name."""
    return write_checkpoints(net, tmp_path_factory.mktemp("ckpts"))


@pytest.fixture
def arch(tmp_path, monkeypatch, request):
    """An `--arch` spec importable from the current directory, like a user's own `nets.py`."""
    monkeypatch.chdir(tmp_path)
    name = "user_nets_" + re.sub(r"\W", "_", request.node.name)
    yield write_arch_module(tmp_path, name)
    sys.modules.pop(name, None)


@pytest.fixture
def cache(tmp_path) -> list[str]:
    """`--compile-cache` into the test's own folder."""
    return ["--compile-cache", str(tmp_path / "xla")]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> str:
    """A small saved model (`test_run.make_artifact`), one per test module."""
    from test_run import make_artifact

    return make_artifact(tmp_path_factory.mktemp("model"))
