"""Several devices and several processes give the same bits as one device in one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_same_rows
from test_run import make_data

import jaxjac
from jaxjac._distributed import process_rows, read_sharded, shard_path

RUN = "from jaxjac.cli import main; raise SystemExit(main())"


def env(tmp_path, **extra) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path / "cache"), **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_process_rows_split_contiguously():
    assert [process_rows(37, p, 2) for p in range(2)] == [(0, 19), (19, 37)]
    assert [process_rows(2, p, 3) for p in range(3)] == [(0, 1), (1, 2), (2, 2)]
    assert shard_path("out/J.npy", 1, 4).name == "J.00001-of-00004.npy"


def test_four_host_devices_match_one_device(artifact, tmp_path):
    x = make_data(tmp_path / "X.npy", 37)
    out = tmp_path / "J.npy"
    argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(out), "--batch-size", "14", "--json"]
    four = env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    expected = jaxjac.jacobian(jaxjac.load(artifact), x, batch_size=16)
    for run in ("first", "rerun"):  # the rerun loads the 4-device program from the program cache
        proc = subprocess.run(
            [sys.executable, "-c", RUN, *argv, "--force"],
            env=four,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert info["devices"] == 4 and info["batch_size"] == 16  # rounded up to a multiple of the devices
        assert "rounded up to 16" in proc.stderr
        assert info["program_cached"] == (run == "rerun")
        assert_same_rows(np.load(out), expected)  # 4 rows per device against 16 on one


def test_two_processes_write_shards_equal_to_one_process(artifact, tmp_path):
    x = make_data(tmp_path / "X.npy", 37)
    out = tmp_path / "J.npy"
    port = free_port()
    procs = []
    for pid in range(2):
        argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(out), "--batch-size", "8", "--json"]
        argv += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(pid)]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RUN, *argv],
                env=env(tmp_path),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [p.communicate(timeout=180) for p in procs]
    for p, (_, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr
    infos = [json.loads(stdout) for stdout, _ in results]
    assert [i["rows"] for i in infos] == [19, 18] and all(i["devices"] == 2 for i in infos)
    # Each process compiles its own part of the job: no whole-program cache entries.
    assert not any(i["program_cached"] for i in infos)
    assert not list((tmp_path / "cache").rglob("jaxjac-programs/*.bin"))
    assert infos[0]["index"] == str(tmp_path / "J.npy.index.json")
    assert not out.exists()
    assert (tmp_path / "J.00000-of-00002.npy").exists() and (tmp_path / "J.00001-of-00002.npy").exists()
    expected = jaxjac.jacobian(jaxjac.load(artifact), x, batch_size=4)
    assert_same_rows(read_sharded(tmp_path / "J.npy.index.json"), expected)


def _sharded(tmp_path, rows=(3, 2)):
    """Two shards of a (5, 2) output, as a 2-process run writes them, and their index."""
    from jaxjac._distributed import write_index

    full = np.arange(10.0, dtype=np.float32).reshape(5, 2)
    out = tmp_path / "J.npy"
    start = 0
    for process, n in enumerate(rows):
        np.save(shard_path(out, process, 2), full[start : start + n])
        start += n
    return write_index(out, n=5, processes=2, shape=(5, 2), dtype="float32"), full


def test_read_sharded_is_public_and_reassembles_the_rows(tmp_path):
    index, full = _sharded(tmp_path)
    np.testing.assert_array_equal(jaxjac.read_sharded(index), full)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda meta: "not json", r"cannot read the shard index \(JSONDecodeError"),
        (lambda meta: {**meta, "format": "other"}, r"is not a jaxjac shard index"),
        (lambda meta: {**meta, "shards": [{"path": "J.npy"}]}, r"cannot read the shard index \(KeyError"),
        (
            lambda meta: {
                **meta,
                "shards": [{**meta["shards"][0], "path": "../J.00000-of-00002.npy"}, meta["shards"][1]],
            },
            r"shard '\.\./J\.00000-of-00002\.npy' \(rows 0:3\) breaks the index: shards must be files beside it",
        ),
        (lambda meta: {**meta, "shards": meta["shards"][1:]}, r"the next one should start at row 0"),
        (lambda meta: {**meta, "shape": [6, 2]}, r"the shards cover 5 rows; the index's shape \(6, 2\) says \(6,\)"),
    ],
    ids=["not-json", "other-format", "no-rows", "path-outside", "gap", "short"],
)
def test_a_damaged_shard_index_is_one_line(tmp_path, edit, message):
    index, _ = _sharded(tmp_path)
    edited = edit(json.loads(index.read_text()))
    index.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(jaxjac.JaxjacError, match=message):
        jaxjac.read_sharded(index)


def test_a_shard_holding_other_rows_than_its_index_says_is_refused(tmp_path):
    index, full = _sharded(tmp_path)
    np.save(tmp_path / "J.00001-of-00002.npy", full[:1])
    with pytest.raises(jaxjac.JaxjacError, match=r"J\.00001-of-00002\.npy holds 1 rows; \S+ gives it 2"):
        jaxjac.read_sharded(index)
