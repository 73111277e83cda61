"""The compiled-program cache: a rerun loads the program instead of tracing, with identical rows.

Anything that shapes the program gets its own entry, and an entry that is
damaged or writable by others is ignored, never trusted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_run import N_CLASSES, SAMPLE_SHAPE, make_data

import jaxjac
from jaxjac import _program_cache
from jaxjac.cli import main


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    # A model no other test compiles: an executable that JAX read back from its own
    # cache is (rightly) never kept, and other tests' runs fill JAX's cache.
    net = torch.nn.Sequential(
        torch.nn.Conv1d(1, 5, 7, padding=3),
        torch.nn.Softplus(),
        torch.nn.AvgPool1d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(5 * SAMPLE_SHAPE[1] // 2, N_CLASSES),
    ).eval()
    path = tmp_path_factory.mktemp("model") / "net.jaxjac"
    jaxjac.save(jaxjac.convert(net, torch.randn(2, *SAMPLE_SHAPE), n_probes=2), path)
    return str(path)


def run(artifact, tmp_path, capsys, *extra: str) -> dict:
    """One `jaxjac jacobian --json` run into J.npy with the cache in tmp_path/xla; its summary."""
    argv = [artifact, str(tmp_path / "X.npy"), "-o", str(tmp_path / "J.npy"), "--force", "--json"]
    argv += ["--batch-size", "8", "--compile-cache", str(tmp_path / "xla"), *extra]
    assert main(["jacobian", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def entries(tmp_path) -> list:
    return sorted((tmp_path / "xla" / _program_cache.SUBDIR).glob("*.bin"))


def test_a_rerun_loads_the_program_and_writes_identical_rows(artifact, tmp_path, capsys):
    x = make_data(tmp_path / "X.npy", 21)
    expected = jaxjac.jacobian(jaxjac.load(artifact), x, batch_size=8)
    first = run(artifact, tmp_path, capsys)
    assert not first["program_cached"] and len(entries(tmp_path)) == 1
    np.testing.assert_array_equal(np.load(tmp_path / "J.npy"), expected)
    again = run(artifact, tmp_path, capsys)
    assert again["program_cached"]
    np.testing.assert_array_equal(np.load(tmp_path / "J.npy"), expected)


@pytest.mark.parametrize("changed", [["--target", "predicted"], ["--output", "probs"], ["--dtype", "float16"]])
def test_each_program_gets_its_own_entry(artifact, tmp_path, capsys, changed):
    x = make_data(tmp_path / "X.npy", 10)
    run(artifact, tmp_path, capsys)
    other = run(artifact, tmp_path, capsys, *changed)
    assert not other["program_cached"] and len(entries(tmp_path)) == 2
    assert run(artifact, tmp_path, capsys, *changed)["program_cached"]
    options = {"--target": "target", "--output": "output"}
    kwargs = {options[changed[0]]: changed[1]} if changed[0] in options else {}
    expected = jaxjac.jacobian(jaxjac.load(artifact), x, batch_size=8, **kwargs)
    np.testing.assert_array_equal(np.load(tmp_path / "J.npy"), expected.astype(np.load(tmp_path / "J.npy").dtype))


def test_a_damaged_entry_is_ignored_and_only_a_fresh_compilation_is_kept(artifact, tmp_path):
    # Separate processes, as a user runs the command: JAX's own cache folder is fixed
    # per process, and its in-memory caches would hide what a new run sees.
    x = make_data(tmp_path / "X.npy", 9)
    expected = jaxjac.jacobian(jaxjac.load(artifact), x, batch_size=8)

    def run_command() -> bool:
        argv = [sys.executable, "-m", "jaxjac", "jacobian", artifact, str(tmp_path / "X.npy")]
        argv += ["-o", str(tmp_path / "J.npy"), "--force", "--json", "--batch-size", "8"]
        argv += ["--compile-cache", str(tmp_path / "xla")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        np.testing.assert_array_equal(np.load(tmp_path / "J.npy"), expected)
        return json.loads(done.stdout)["program_cached"]

    assert not run_command()
    (entry,) = entries(tmp_path)
    entry.write_bytes(b"\x80\x04 not a compiled program")
    assert not run_command()
    # That run's program came from JAX's own cache, and such an executable does not
    # survive a second serialisation: it was not kept (the check caught it).
    assert entries(tmp_path) == []
    for jax_entry in (tmp_path / "xla").glob("jit_*"):
        jax_entry.unlink()
    assert not run_command()  # compiled afresh: kept
    assert run_command()


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="file ownership is a POSIX notion")
@pytest.mark.parametrize("what", ["entry", "folder"])
def test_an_entry_others_may_write_is_not_trusted(artifact, tmp_path, capsys, what):
    make_data(tmp_path / "X.npy", 9)
    run(artifact, tmp_path, capsys)
    (entry,) = entries(tmp_path)
    os.chmod(entry if what == "entry" else entry.parent, 0o777 if what == "folder" else 0o666)
    assert not run(artifact, tmp_path, capsys)["program_cached"]


def test_no_cache_with_compile_cache_off(artifact, tmp_path, capsys):
    make_data(tmp_path / "X.npy", 9)
    assert not run(artifact, tmp_path, capsys, "--compile-cache", "off")["program_cached"]
    assert not run(artifact, tmp_path, capsys, "--compile-cache", "off")["program_cached"]
    assert not (tmp_path / "xla").exists()


def test_the_key_covers_the_program_the_source_and_the_flags(monkeypatch):
    import jax

    devices = jax.devices()
    base = _program_cache.program_key({"batch_size": 8}, devices)
    assert _program_cache.program_key({"batch_size": 8}, devices) == base
    assert _program_cache.program_key({"batch_size": 16}, devices) != base
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    assert _program_cache.program_key({"batch_size": 8}, devices) != base
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(_program_cache, "_source_digest", lambda: "an edited lowering rule")
    assert _program_cache.program_key({"batch_size": 8}, devices) != base
