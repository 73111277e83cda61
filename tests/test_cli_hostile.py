"""Hostile and mistaken command lines: inputs are never destroyed, damage is caught, and every refusal is one line.

Each case runs the real command (`jaxjac.cli.main`) on real files and checks
the exit code, the single `jaxjac: error:` line and that no input changed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli_jacobian import one_error_line
from test_run import make_data

import jaxjac
from jaxjac.cli import main


def _digest(path) -> str:
    if path.is_dir():
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("victim", ["DATA", "MODEL", "LABELS", "DATA-hardlink"])
def test_jacobian_never_writes_over_its_inputs(artifact, tmp_path, capsys, cache, victim):
    x = tmp_path / "X.npy"
    make_data(x, 6)
    np.save(tmp_path / "y.npy", np.arange(6) % 3)
    model = tmp_path / "net.npy"  # any name: an artifact is known by its contents
    shutil.copy(artifact, model)
    out = {"DATA": x, "MODEL": model, "LABELS": tmp_path / "y.npy", "DATA-hardlink": tmp_path / "link.npy"}[victim]
    if victim == "DATA-hardlink":
        out.hardlink_to(x)
    before = {p: _digest(p) for p in (x, model, tmp_path / "y.npy")}
    argv = ["jacobian", str(model), str(x), "-o", str(out), "--force", *cache]
    if victim == "LABELS":
        argv += ["--labels", str(tmp_path / "y.npy")]
    assert main(argv) == 2
    assert re.search(r"-o .* would overwrite the input (DATA|MODEL|--labels) ", one_error_line(capsys.readouterr().err))
    assert {p: _digest(p) for p in before} == before


@pytest.mark.parametrize(
    ("data_name", "processes", "role"),
    [
        ("J.npy.partial", 1, "its unfinished rows"),
        ("J.npy.progress.json", 1, "its progress file"),
        ("J.00001-of-00002.npy", 2, "process 1's shard"),
        ("J.npy.index.json", 2, "the index of its shards"),
        ("J.zarr.partial", 1, "its unfinished rows"),
    ],
)
def test_force_never_deletes_an_input_named_like_a_side_file(
    artifact, tmp_path, capsys, cache, monkeypatch, data_name, processes, role
):
    """`--force` clears an old run's side files; an input that bears such a name is refused, not deleted."""
    import jax

    data = tmp_path / data_name
    make_data(tmp_path / "X.npy", 6)
    (tmp_path / "X.npy").rename(data)  # np.save would append .npy
    before = _digest(data)
    monkeypatch.setattr(jax, "process_count", lambda: processes)  # as if this were one process of several
    monkeypatch.setattr("jaxjac._distributed.all_processes", lambda ok: [ok])
    out = tmp_path / ("J.zarr" if "zarr" in data_name else "J.npy")
    assert main(["jacobian", artifact, str(data), "-o", str(out), "--force", *cache]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"would overwrite the input DATA {data}: the run writes {role} at {data}" in line
    assert _digest(data) == before


def test_convert_and_importance_never_write_over_their_inputs(artifact, tmp_path, capsys):
    x = tmp_path / "X.npy"
    make_data(x, 6)
    before = {x: _digest(x)}
    assert main(["importance", artifact, str(x), "-o", str(x), "--force", "--quiet"]) == 2
    assert "would overwrite the input DATA" in one_error_line(capsys.readouterr().err)
    assert main(["importance", artifact, str(x), "-o", artifact, "--force", "--quiet"]) == 2
    assert "would overwrite the input MODEL" in one_error_line(capsys.readouterr().err)
    checkpoint = tmp_path / "net.pt"
    checkpoint.write_bytes(b"\x00" * 64)
    before[checkpoint] = _digest(checkpoint)
    assert main(["convert", str(checkpoint), "-o", str(checkpoint), "--force"]) == 2
    assert "would overwrite the input CHECKPOINT" in one_error_line(capsys.readouterr().err)
    assert {p: _digest(p) for p in before} == before


def test_importance_report_and_figure_must_be_different_files(artifact, tmp_path, capsys):
    x = tmp_path / "X.npy"
    make_data(x, 6)
    report = tmp_path / "imp.svg"
    report.write_text("an earlier report")
    argv = ["importance", artifact, str(x), "-o", str(report), "--plot", str(tmp_path / "imp.png"), "--force"]
    assert main([*argv, "--quiet"]) == 2
    assert re.search(
        r"-o .*imp\.svg is also where --plot .*imp\.png writes a figure", one_error_line(capsys.readouterr().err)
    )
    assert report.read_text() == "an earlier report"


def test_convert_never_writes_over_the_arch_source(ckpts, arch, tmp_path, capsys):
    source = tmp_path / (arch.partition(":")[0] + ".py")
    before = _digest(source)
    argv = ["convert", str(ckpts["state_dict.pt"]), "--input-shape", "1,32", "--arch", arch, "-o", str(source)]
    assert main([*argv, "--force", "--probes", "2"]) == 2
    assert f"-o {source} would overwrite the input --arch {source}" in one_error_line(capsys.readouterr().err)
    assert _digest(source) == before


def test_force_does_not_delete_a_folder_that_is_not_an_output(artifact, tmp_path, capsys, cache):
    make_data(tmp_path / "X.npy", 6)
    folder = tmp_path / "J.zarr"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(folder), "--force", *cache]
    assert main(argv) == 2
    assert "is an existing folder that is not a zarr array" in one_error_line(capsys.readouterr().err)
    assert main([a for a in argv if a != "--force"]) == 2  # not "pass --force", which would not help
    assert "not a zarr array; jaxjac will not delete it, even with --force" in one_error_line(capsys.readouterr().err)
    assert (folder / "thesis.tex").read_text() == "years of work"
    # An earlier zarr output is replaced.
    (folder / "thesis.tex").unlink()
    folder.rmdir()
    assert main(argv[:-3] + ["--quiet", *cache]) == 0
    assert main([*argv, "--quiet"]) == 0
    assert (folder / "zarr.json").exists()


def test_paths_that_are_files_where_folders_belong_are_named(artifact, tmp_path, capsys, cache):
    make_data(tmp_path / "X.npy", 4)
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    base = ["jacobian", artifact, str(tmp_path / "X.npy")]
    assert main([*base, "-o", str(notes / "J.npy")]) == 2
    assert re.search(
        r"cannot write output .*notes\.txt/J\.npy: .*notes\.txt is a file, not a folder$",
        one_error_line(capsys.readouterr().err),
    )
    assert main([*base, "-o", str(tmp_path / "J.npy"), "--compile-cache", str(notes)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.search(
        r"--compile-cache .*notes\.txt: is a file; expected a folder to keep compiled programs in, or 'off'", line
    )
    assert notes.read_text() == "precious"


@pytest.mark.parametrize("out", [".", "", "/", "J", "J.txt", ".npy"])
def test_output_names_must_be_npy_or_zarr_files(artifact, tmp_path, capsys, cache, out):
    make_data(tmp_path / "X.npy", 4)
    assert main(["jacobian", artifact, str(tmp_path / "X.npy"), "-o", out, "--force", *cache]) == 2
    one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("flip-weight-bit", r"is damaged: its contents do not match the checksum"),
        ("edit-graph", r"is damaged: its contents do not match the checksum"),
        ("append-bytes", r"is damaged: its tensors cannot be read"),
        ("bad-offsets", r"is damaged|is truncated"),
    ],
)
def test_a_damaged_artifact_is_refused(artifact, tmp_path, capsys, cache, damage, message):
    data = bytearray(Path(artifact).read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    if damage == "flip-weight-bit":
        data[8 + header_len + 100] ^= 0x10
    elif damage == "edit-graph":
        text = data[8 : 8 + header_len].decode()
        edited = text.replace('\\"stride\\": [1]', '\\"stride\\": [2]', 1)
        if edited == text:  # any edit that keeps the JSON valid will do
            edited = text.replace("sample_shape", "sample_shapE", 1)
        assert edited != text and len(edited) == len(text)
        data[8 : 8 + header_len] = edited.encode()
    elif damage == "append-bytes":
        data += b"\x00" * 8
    elif damage == "bad-offsets":
        name = next(k for k in header if k != "__metadata__")
        text = data[8 : 8 + header_len].decode()
        offsets = json.dumps(header[name]["data_offsets"]).replace(" ", "")
        assert offsets in text
        start, end = header[name]["data_offsets"]
        data[8 : 8 + header_len] = text.replace(offsets, json.dumps([end, start]).replace(" ", ""), 1).encode()
    broken = tmp_path / "broken.jaxjac"
    broken.write_bytes(bytes(data))
    make_data(tmp_path / "X.npy", 4)
    assert main(["jacobian", str(broken), str(tmp_path / "X.npy"), "-o", str(tmp_path / "J.npy"), *cache]) == 2
    assert re.search(message, one_error_line(capsys.readouterr().err))
    assert not (tmp_path / "J.npy").exists() and not (tmp_path / "J.npy.partial").exists()
    with pytest.raises(jaxjac.JaxjacError, match=message):
        jaxjac.load(broken)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("completed_rows", -5, "an integer"),
        ("completed_rows", "many", "an integer"),
        ("batch_size", 0, "an integer"),
        ("batch_size", None, "an integer"),
        ("fingerprint", None, "a JSON object"),
        ("fingerprint", [1, 2], "a JSON object"),
    ],
)
def test_a_tampered_progress_file_is_refused(tmp_path, field, value, expected):
    from jaxjac._resume import read_progress, write_progress

    path = tmp_path / "J.npy.progress.json"
    write_progress(path, fingerprint={}, completed_rows=8, batch_size=8)
    state = json.loads(path.read_text())
    state[field] = value
    path.write_text(json.dumps(state))
    with pytest.raises(jaxjac.JaxjacError, match=rf"expected `{field}` to be {expected}"):
        read_progress(path)


def test_rows_that_compute_to_nan_from_finite_inputs_are_reported(tmp_path, capsys, cache):
    import torch

    class Log(torch.nn.Module):
        def forward(self, x):
            return torch.log(x).sum(-1)

    x = np.abs(np.random.default_rng(0).standard_normal((6, 1, 5))).astype(np.float32) + 0.5
    x[[1, 4], 0, 2] = 0.0  # log(0) = -inf: a finite input with an infinite output
    model = jaxjac.convert(Log().eval(), x[:2])
    jaxjac.save(model, tmp_path / "log.jaxjac")
    np.save(tmp_path / "X.npy", x)
    argv = ["jacobian", str(tmp_path / "log.jaxjac"), str(tmp_path / "X.npy"), "-o", str(tmp_path / "J.npy")]
    assert main([*argv, "--json", *cache]) == 0
    captured = capsys.readouterr()
    assert "2 rows with finite inputs have NaN/Inf results (rows 1, 4)" in captured.err
    summary = json.loads(captured.out)
    assert (summary["nonfinite_output_rows"], summary["nonfinite_output_first"]) == (2, [1, 4])


def test_labels_and_an_explicit_target_are_refused_together(artifact, tmp_path, capsys, cache):
    make_data(tmp_path / "X.npy", 6)
    np.save(tmp_path / "y.npy", np.arange(6) % 3)
    argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(tmp_path / "S.npy")]
    assert main([*argv, "--labels", str(tmp_path / "y.npy"), "--target", "0", *cache]) == 2
    assert "--labels and --target 0 both choose the class" in one_error_line(capsys.readouterr().err)


def test_a_batch_larger_than_the_data_is_cut(artifact, tmp_path, capsys, cache):
    make_data(tmp_path / "X.npy", 5)
    argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(tmp_path / "J.npy"), "--json"]
    assert main([*argv, "--batch-size", "100000000", *cache]) == 0
    captured = capsys.readouterr()
    assert "batch size 100000000 cut to 5: DATA has 5 rows" in captured.err
    assert json.loads(captured.out)["batch_size"] == 5


def test_data_without_samples_gives_an_empty_output_and_says_so(artifact, tmp_path, capsys, cache):
    np.save(tmp_path / "X.npy", np.zeros((0, *jaxjac.load(artifact).sample_shape), np.float32))
    argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(tmp_path / "J.npy"), *cache]
    assert main(argv) == 0
    assert re.search(
        r"note: DATA \S+X\.npy holds no samples: the output is empty, of shape \(0, 3, 1, 32\)", capsys.readouterr().err
    )
    assert np.load(tmp_path / "J.npy").shape == (0, 3, 1, 32)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: p.write_bytes(b""),
            r"--labels .*: expected integer labels \(N,\) in a \.npy file; found an empty file",
        ),
        (
            lambda p: p.write_text("0,1,2\n"),
            r"--labels .*: expected .* in a \.npy file; found a file that is not \.npy",
        ),
        (
            lambda p: np.save(p, np.array(["a", "b"])),
            r"--labels .*: expected integer labels \(N,\); found an array of dtype",
        ),
    ],
)
def test_unreadable_labels_are_one_line(artifact, tmp_path, capsys, cache, make, message):
    make_data(tmp_path / "X.npy", 2)
    make(tmp_path / "y.npy")
    argv = ["jacobian", artifact, str(tmp_path / "X.npy"), "-o", str(tmp_path / "S.npy")]
    assert main([*argv, "--labels", str(tmp_path / "y.npy"), *cache]) == 2
    assert re.search(message, one_error_line(capsys.readouterr().err))


@pytest.fixture
def pipe(tmp_path):
    """A FIFO; should a command open it to read, a writer comes after 5 s, so that a regression fails, not hangs."""
    import os
    import threading
    import time

    path = tmp_path / "pipe"
    os.mkfifo(path)
    done = threading.Event()

    def unblock_a_reader():
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            time.sleep(5)
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # fails while no one reads
            except OSError:
                pass

    threading.Thread(target=unblock_a_reader, daemon=True).start()
    yield path
    done.set()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["jacobian", "{model}", "{special}", "-o", "J.npy"], r"DATA {special}: expected a data file .*; found {kind}"),
        (["jacobian", "{special}", "{x}", "-o", "J.npy"], r"{special}: expected a jaxjac artifact file; found {kind}"),
        (
            ["jacobian", "{model}", "{x}", "-o", "J.npy", "--labels", "{special}"],
            r"--labels {special}: expected integer labels \(N,\) in a \.npy file; found {kind}",
        ),
        (
            ["importance", "{model}", "{x}", "--class-names", "{special}"],
            r"--class-names {special}: expected a text file of names, one per line; found {kind}",
        ),
        (
            ["importance", "{model}", "{x}", "--wavelengths", "{special}"],
            r"--wavelengths {special}: expected numbers, one per feature; found {kind}",
        ),
        (
            ["importance", "{model}", "{x}", "--baseline", "{special}"],
            r"--baseline {special}: expected one sample's values in a \.npy file; found {kind}",
        ),
        (
            ["convert", "{special}", "--input-shape", "1,16"],
            r"{special}: expected a torch checkpoint file; found {kind}",
        ),
    ],
    ids=["DATA", "MODEL", "labels", "class-names", "wavelengths", "baseline", "CHECKPOINT"],
)
@pytest.mark.parametrize("special", ["pipe", "device", "folder"])
def test_a_pipe_a_device_or_a_folder_where_a_file_belongs_is_named(
    artifact, tmp_path, capsys, cache, pipe, argv, message, special
):
    """Reading a FIFO waits forever and /dev/zero never ends: neither is opened, and the message says what it is."""
    make_data(x := tmp_path / "X.npy", 4)
    path = {"pipe": pipe, "device": Path("/dev/zero"), "folder": tmp_path}[special]
    kind = {"pipe": "a pipe", "device": "a device", "folder": "a folder"}[special]
    if special == "folder" and argv[argv.index("{special}") - 1] in ("{model}", "jacobian") and "DATA" in message:
        message = r"DATA {special} is a folder but not a zarr store"
    words = [w.format(model=artifact, x=x, special=path) for w in argv]
    extra = {"jacobian": [*cache, "--quiet"], "importance": ["--quiet"], "convert": []}[words[0]]
    assert main([*words, *extra]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.search(message.format(special=re.escape(str(path)), kind=kind), line), line


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["jacobian", "net.jaxjac", "X.npy", "-o", "J.npy", "--batch-size", "abc"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err
    assert re.match(r"jaxjac jacobian: error: argument --batch-size: .*'abc' \(see `jaxjac jacobian --help`\)", err)


def test_ctrl_c_while_the_command_line_loads_is_one_line(tmp_path):
    """The command line imports no JAX until a command runs, and a Ctrl-C while JAX loads prints one line."""
    code = (
        "import sys\n"
        "import jaxjac.cli\n"
        "assert 'jax' not in sys.modules, 'importing the command line imported JAX'\n"
        "import builtins\n"
        "real_import = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'jax' or name.startswith('jax.'):\n"
        "        raise KeyboardInterrupt  # as if Ctrl-C arrived while JAX loads\n"
        "    return real_import(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupted\n"
        "raise SystemExit(jaxjac.cli.main(['jacobian', 'net.jaxjac', 'X.npy', '-o', 'J.npy']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "jaxjac: error: interrupted\n"


def test_a_zarr_input_with_chunks_missing_is_noted(artifact, tmp_path, capsys, cache):
    import shutil as sh

    import zarr

    x = make_data(tmp_path / "X.npy", 40)
    z = zarr.create_array(str(tmp_path / "X.zarr"), shape=x.shape, chunks=(10, *x.shape[1:]), dtype=x.dtype)
    z[:] = x
    sh.rmtree(tmp_path / "X.zarr" / "c" / "2")  # as an unfinished copy would leave it
    argv = ["jacobian", artifact, str(tmp_path / "X.zarr"), "-o", str(tmp_path / "J.npy"), *cache]
    assert main(argv) == 0
    assert "1 of its 4 chunks are not stored and read as the fill value 0.0" in capsys.readouterr().err
