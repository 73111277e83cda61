"""`jaxjac convert`: every checkpoint kind end to end, and one-line errors with exit codes."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from checkpoint_nets import SAMPLE_SHAPE
from helpers import Float64Buffer, swap_lowering, torch_reference

import jaxjac
from jaxjac.cli import main

FAST = ["--probes", "2"]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("jaxjac: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def assert_matches_torch(path, net) -> None:
    model = jaxjac.load(path)
    x = np.random.default_rng(3).standard_normal((3, *SAMPLE_SHAPE)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("scripted.pt", ["--input-shape", "1,32"]),
        ("traced.pt", ["--input-shape", "(1, 32)"]),
        ("dynamic.pt2", []),
        ("state_dict.pt", ["--input-shape", "[1, 32]", "--arch", "{arch}"]),
        ("nested_model_state_dict.pt", ["--input-shape", "1,32", "--arch", "{arch}"]),
        ("data_parallel.pt", ["--input-shape", "1,32", "--arch", "{arch}", "--arch-kwargs", '{"n_classes": 3}']),
        ("pickled.pt", ["--input-shape", "1,32", "--allow-pickle"]),
        ("lightning.safetensors", ["--input-shape", "1,32", "--arch", "{arch}"]),
    ],
)
def test_converts_every_format(ckpts, net, arch, tmp_path, capsys, name, extra):
    out = tmp_path / "out.jaxjac"
    args = [a.replace("{arch}", arch) for a in extra]
    assert main(["convert", str(ckpts[name]), "-o", str(out), *FAST, *args]) == 0
    stdout = capsys.readouterr().out
    assert re.search(r"conversion check passed on 2 probes \(float32\)", stdout), stdout
    assert f"wrote {out}" in stdout
    assert_matches_torch(out, net)
    source = jaxjac.load(out).metadata["source"]
    assert source["file"] == name and len(source["sha256"]) == 64
    assert jaxjac.load(out).metadata["check"]["passed"] is True


def test_default_output_and_notes(ckpts, arch, tmp_path, capsys):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(ckpts["data_parallel.pt"].read_bytes())
    assert main(["convert", str(ckpt), "--input-shape", "1,32", "--arch", arch, *FAST]) == 0
    assert (tmp_path / "weights.jaxjac").is_file()
    assert "jaxjac: note: stripped the 'module.' prefix" in capsys.readouterr().err


def test_input_shape_from_check_data(ckpts, arch, tmp_path, capsys):
    np.save(tmp_path / "X.npy", np.random.default_rng(0).standard_normal((3, *SAMPLE_SHAPE)))
    code = main(["convert", str(ckpts["scripted.pt"]), "-o", "a.jaxjac", "--check-data", "X.npy"])
    assert code == 0
    assert "passed on 3 probes" in capsys.readouterr().out


def test_check_data_without_the_channel_axis_is_matched(ckpts, arch, tmp_path, capsys):
    # (P, L) probes for a model of (1, L) samples, as `jaxjac jacobian` accepts them.
    np.save(tmp_path / "X.npy", np.random.default_rng(0).standard_normal((3, SAMPLE_SHAPE[1])))
    argv = ["convert", str(ckpts["scripted.pt"]), "-o", "a.jaxjac", "--check-data", "X.npy", "--input-shape", "1,32"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "passed on 3 probes" in out
    assert "--check-data X.npy: 3 samples of shape (32,) reshaped to (1, 32)" in err


def test_float64(ckpts, arch, capsys):
    assert main(["convert", str(ckpts["dynamic.pt2"]), "-o", "f64.jaxjac", "--dtype", "float64", *FAST]) == 0
    assert "(float64)" in capsys.readouterr().out
    import jax

    with jax.enable_x64(True):
        assert jaxjac.load("f64.jaxjac").dtype == np.float64


def test_a_float32_model_with_a_float64_buffer_is_computed_with_64_bit_jax(tmp_path, capsys):
    net, x = Float64Buffer().eval(), np.random.default_rng(0).standard_normal((5, 1, 8)).astype(np.float32)
    torch.export.save(torch.export.export(net, (torch.as_tensor(x[:1]),)), tmp_path / "net.pt2")
    np.save(tmp_path / "X.npy", x)
    assert main(["convert", str(tmp_path / "net.pt2"), "-o", str(tmp_path / "net.jaxjac"), *FAST]) == 0
    assert "check passed" in capsys.readouterr().out
    # In a child process: the command line turns on 64-bit JAX for the model, for good.
    argv = ["jacobian", "net.jaxjac", "X.npy", "-o", "J.npy", "--quiet", "--compile-cache", "off"]
    code = f"import sys\nfrom jaxjac.cli import main\nsys.exit(main({argv!r}))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _, expected = torch_reference(net, torch.as_tensor(x))
    np.testing.assert_allclose(np.load(tmp_path / "J.npy").reshape(expected.shape), expected, rtol=1e-6)


class GRUClassifier(torch.nn.Module):
    """Exported, its graph fixes the GRU's zero initial state as float32."""

    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(1, 4, batch_first=True)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        out, _ = self.gru(x.transpose(1, 2))
        return self.head(out[:, -1])


def test_float64_of_a_program_with_a_float32_step_is_explained(tmp_path, capsys):
    torch.manual_seed(0)
    with warnings.catch_warnings():  # torch's own, about the GRU's flat weights
        warnings.simplefilter("ignore", UserWarning)
        program = torch.export.export(GRUClassifier().eval(), (torch.randn(1, *SAMPLE_SHAPE),))
    torch.export.save(program, tmp_path / "gru.pt2")
    out = tmp_path / "gru.jaxjac"
    assert main(["convert", str(tmp_path / "gru.pt2"), "-o", str(out), "--dtype", "float64", *FAST]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.search(r"torch could not run the model on the check's float64 probe inputs: .*dtype", line)
    assert not out.exists()


def test_refuses_to_overwrite_without_force(ckpts, arch, tmp_path, capsys):
    out = tmp_path / "out.jaxjac"
    out.write_bytes(b"old artifact")
    assert main(["convert", str(ckpts["dynamic.pt2"]), "-o", str(out), *FAST]) == 2
    assert re.search(
        r"out\.jaxjac already exists; pass --force to overwrite it", one_error_line(capsys.readouterr().err)
    )
    assert out.read_bytes() == b"old artifact"
    assert main(["convert", str(ckpts["dynamic.pt2"]), "-o", str(out), "--force", *FAST]) == 0
    assert jaxjac.load(out).sample_shape == SAMPLE_SHAPE


def test_no_check_converts_without_torch_and_records_it(ckpts, tmp_path, capsys, monkeypatch, request):
    swap_lowering(monkeypatch, request, "aten.relu.default", lambda x: x)  # what the check would catch
    assert main(["convert", str(ckpts["dynamic.pt2"]), "-o", str(tmp_path / "out.jaxjac"), "--no-check"]) == 0
    captured = capsys.readouterr()
    assert "not checked against torch (--no-check)" in captured.err and "conversion check" not in captured.out
    assert jaxjac.load(tmp_path / "out.jaxjac").metadata["check"] == {"passed": None, "skipped": True}


def test_failed_check_writes_nothing(ckpts, arch, tmp_path, capsys, monkeypatch, request):
    swap_lowering(monkeypatch, request, "aten.relu.default", lambda x: x)  # a lowering bug
    code = main(["convert", str(ckpts["dynamic.pt2"]), "-o", "out.jaxjac", *FAST])
    captured = capsys.readouterr()
    assert code == 1
    assert "conversion check FAILED on 2 probes" in captured.out
    assert re.search(
        r"disagrees with torch beyond rtol=0.0001.*outputs: max relative error.*this is a lowering bug",
        one_error_line(captured.err),
    )
    assert not (tmp_path / "out.jaxjac").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope.pt"], r"nope\.pt: expected a torch checkpoint file; found no such file"),
        (["garbage.pt"], r"garbage\.pt: expected a torch checkpoint .*found a file starting with b'not a mo'"),
        (["{pickled}"], r"holds pickled Python objects .*executes arbitrary code.*--allow-pickle"),
        (["{state_dict}", "--input-shape", "1,32"], r"holds a state_dict .*pass --arch package\.module:Class"),
        (
            ["{lightning}", "--input-shape", "1,32"],
            r"lightning\.safetensors holds a state_dict \(\d+ tensors, e\.g\. `model\.\S+`\) but not the architecture",
        ),
        (
            ["{artifact}", "-o", "again.jaxjac"],
            r"artifact\.jaxjac is already a jaxjac artifact: pass it to `jaxjac jacobian`",
        ),
        (
            ["{state_dict}", "--input-shape", "1,32", "--arch", "nets.Net"],
            r"--arch must look like package\.module:Class",
        ),
        (
            ["{state_dict}", "--input-shape", "1,32", "--arch", "not_a_module_abc:Net"],
            r"cannot import 'not_a_module_abc'",
        ),
        (["{scripted}"], r"TorchScript archive, which does not record its input shape; pass .*--input-shape"),
        (["{state_dict}", "--arch", "{arch}"], r"state-dict\) does not record its input shape"),
        (["{fixed}"], r"fixed batch size of 2"),
        (["{dynamic}", "--input-shape", "1,64"], r"--input-shape 1,64 does not fit"),
        (
            ["{state_dict}", "--arch", "{arch}", "--input-shape", "1,64"],
            r"forward fails in torch itself on an input of shape \(1, 1, 64\): mat1 and mat2 .* at user_nets_\w+\.py:"
            r"\d+ \(return self\.head.*Is that the shape of one sample",
        ),
        (
            ["{dynamic}", "--check-data", "nope.npy"],
            r"--check-data nope\.npy: cannot read it \(No such file or directory\)",
        ),
        (
            ["{dynamic}", "-o", "garbage.pt/m.jaxjac"],
            r"cannot write garbage\.pt/m\.jaxjac: .*garbage\.pt is a file, not a folder",
        ),
        *(
            (
                [ckpt, "--input-shape", "1,99999999999", "--allow-pickle"],
                r"--input-shape 1,99999999999: one sample of that shape is 372\.5 GiB in float32, too large to "
                r"convert on this machine \(\d+ GiB of memory\); give the shape of one sample, e\.g\. 1,224",
            )
            for ckpt in ("{scripted}", "{traced}", "{pickled}")
        ),
        (
            ["{dynamic}", "--output-index", "5"],
            r"output_index 5 \(`--output-index` on the command line\) is out of range: the model's forward returns 1 "
            r"value, numbered from 0",
        ),
        (
            ["{dynamic}", "--output-index", "logits"],
            r"output 'logits' \(`--output-index` on the command line\) names none of the model's outputs \(0: out\)",
        ),
        (
            ["{dynamic}", "--probes", "1000000000000"],
            r"out of memory making --probes 1000000000000 random samples of shape \(1, 32\) for the check; a few",
        ),
    ],
)
def test_one_line_errors(ckpts, arch, tmp_path, capsys, args, message):
    (tmp_path / "garbage.pt").write_bytes(b"not a model at all")
    paths = {k.split(".")[0]: str(v) for k, v in ckpts.items()}
    if "{artifact}" in args:  # an artifact made first, in a folder of its own
        (tmp_path / "made").mkdir()
        paths["artifact"] = str(tmp_path / "made" / "artifact.jaxjac")
        assert main(["convert", paths["dynamic"], "-o", paths["artifact"], *FAST]) == 0
        capsys.readouterr()
    argv = ["convert", *FAST, *[a.format(arch=arch, **paths) for a in args]]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.search(message, line), line
    assert not list(tmp_path.glob("*.jaxjac"))
    assert (tmp_path / "garbage.pt").read_bytes() == b"not a model at all"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input-shape", "1x224"], r"argument --input-shape: expected the shape of one sample .* got '1x224'"),
        (["--input-shape", "0,224"], r"argument --input-shape: expected .*positive integers"),
        (
            ["--arch-kwargs", "{n_classes: 3}"],
            r"argument --arch-kwargs: expected a JSON object .*Expecting property name",
        ),
        (["--arch-kwargs", "[3]"], r"argument --arch-kwargs: expected a JSON object"),
        (["--dtype", "float16"], r"argument --dtype: invalid choice"),
    ],
)
def test_argument_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "x.pt", *args])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(jaxjac.JaxjacError, match="no such file"):
        main(["--debug", "convert", str(tmp_path / "nope.pt")])
    with pytest.raises(jaxjac.JaxjacError, match="no such file"):
        main(["convert", str(tmp_path / "nope.pt"), "--debug"])


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in (
        "examples:",
        "jaxjac convert model.pt2",
        "--arch mynets:ECGNet",
        "TorchScript",
        "--allow-pickle",
        "EXECUTES CODE",
    ):
        assert needle in text, needle
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "convert" in capsys.readouterr().out
