"""The .jaxjac artifact: an exact round trip, atomic writes, clear errors, and no torch needed to load."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from checkpoint_nets import SAMPLE_SHAPE, trained_net
from flax import nnx
from safetensors.numpy import save_file

import jaxjac
from jaxjac._artifact import FORMAT_VERSION

# converters/pool.py casts MaxPool indices to int64 without x64 and JAX warns; not this module's concern.


@pytest.fixture(scope="module")
def model():
    x = np.random.default_rng(0).standard_normal((1, *SAMPLE_SHAPE)).astype(np.float32)
    return jaxjac.convert(trained_net(), x, check=False, metadata={"source": {"file": "net.pt", "sha256": "ab" * 32}})


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((4, *SAMPLE_SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact") / "net.jaxjac"
    jaxjac.save(model, path)
    return path


def test_round_trip_is_exact(model, saved, x):
    loaded = jaxjac.load(saved)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    np.testing.assert_array_equal(jaxjac.jacobian(loaded, x), jaxjac.jacobian(model, x))
    assert (loaded.sample_shape, loaded.output_shape, loaded.dtype) == (
        model.sample_shape,
        model.output_shape,
        model.dtype,
    )
    assert loaded.metadata == model.metadata
    assert loaded.metadata["source"]["file"] == "net.pt"


def test_round_trip_keeps_nnx_structure(model, saved):
    loaded = jaxjac.load(saved)
    assert nnx.graphdef(loaded) == nnx.graphdef(model)
    assert jax.tree.structure(nnx.state(loaded)) == jax.tree.structure(nnx.state(model))
    assert isinstance(loaded.features[0].weight, nnx.Param)
    assert isinstance(loaded.features[1].running_mean, jaxjac.Buffer)
    assert loaded.tensor_names == model.tensor_names
    for name, value in model.tensors().items():
        np.testing.assert_array_equal(np.asarray(loaded.tensors()[name]), np.asarray(value), err_msg=name)
        assert loaded.tensors()[name].dtype == value.dtype, name


def test_file_is_plain_safetensors_with_metadata(saved, model):
    (header_len,) = struct.unpack("<Q", saved.read_bytes()[:8])
    header = json.loads(saved.read_bytes()[8 : 8 + header_len])
    meta = header["__metadata__"]
    # Without complex tensors a file is format version 1, which every jaxjac reads.
    assert (meta["format"], meta["format_version"]) == ("jaxjac", "1")
    assert json.loads(meta["spec"]) == {"sample_shape": [1, 32], "output_shape": [3], "dtype": "float32"}
    assert "features.0.weight" in json.loads(meta["parameters"])
    assert "features.1.running_mean" not in json.loads(meta["parameters"])
    assert set(header) - {"__metadata__"} == set(model.tensor_names)
    assert b"pickle" not in saved.read_bytes() and b"\x80\x04\x95" not in saved.read_bytes()


def test_saves_fine_tuned_values(model, tmp_path, x):
    tuned = nnx.clone(model)
    tuned.head.bias[...] = tuned.head.bias[...] + 1.0
    jaxjac.save(tuned, tmp_path / "tuned.jaxjac")
    np.testing.assert_allclose(
        np.asarray(jaxjac.load(tmp_path / "tuned.jaxjac")(x)), np.asarray(model(x)) + 1.0, rtol=1e-6
    )


def test_refuses_to_overwrite_and_leaves_file_untouched(model, saved, tmp_path):
    path = tmp_path / "net.jaxjac"
    path.write_bytes(b"precious")
    with pytest.raises(jaxjac.JaxjacError, match=r"net\.jaxjac already exists; pass overwrite=True"):
        jaxjac.save(model, path)
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["net.jaxjac"]  # no temporary file left behind
    jaxjac.save(model, path, overwrite=True)
    assert jaxjac.load(path).metadata == jaxjac.load(saved).metadata
    assert os.listdir(tmp_path) == ["net.jaxjac"]


def test_failed_write_leaves_no_file(model, tmp_path, monkeypatch):
    def crash(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="No space left"):
        jaxjac.save(model, tmp_path / "net.jaxjac")
    assert os.listdir(tmp_path) == []


def test_save_into_missing_directory(model, tmp_path):
    with pytest.raises(jaxjac.JaxjacError, match=r"cannot write .*a\.jaxjac: directory .*missing does not exist"):
        jaxjac.save(model, tmp_path / "missing" / "a.jaxjac")


def test_load_missing_file(tmp_path):
    with pytest.raises(jaxjac.JaxjacError, match=r"nope\.jaxjac: expected a jaxjac artifact file; found no such file"):
        jaxjac.load(tmp_path / "nope.jaxjac")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"abc", r"is not a jaxjac artifact: expected a safetensors file; found 3 bytes"),
        (b"\xff" * 64, r"is not a jaxjac artifact: expected a safetensors file; found no safetensors header"),
        (struct.pack("<Q", 4) + b"nope", r"expected a safetensors file; found no safetensors header"),
    ],
)
def test_load_garbage(tmp_path, content, message):
    (tmp_path / "bad.jaxjac").write_bytes(content)
    with pytest.raises(jaxjac.JaxjacError, match=message):
        jaxjac.load(tmp_path / "bad.jaxjac")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_a_torch_checkpoint_given_as_an_artifact_is_told_to_convert_it(tmp_path, legacy):
    import torch

    torch.save({"w": torch.zeros(3)}, tmp_path / "net.pt", _use_new_zipfile_serialization=not legacy)
    with pytest.raises(
        jaxjac.JaxjacError,
        match=r"net\.pt is not a jaxjac artifact: .* looks like a torch checkpoint: convert it first with "
        r"`jaxjac convert \S+net\.pt`",
    ):
        jaxjac.load(tmp_path / "net.pt")


def test_load_other_safetensors(tmp_path):
    save_file({"w": np.zeros(3, np.float32)}, tmp_path / "w.safetensors")
    with pytest.raises(
        jaxjac.JaxjacError, match=r"w\.safetensors is a safetensors file but not a jaxjac artifact.*found None"
    ):
        jaxjac.load(tmp_path / "w.safetensors")


@pytest.mark.parametrize("keep", [5, 100, -1])
def test_load_truncated(saved, tmp_path, keep):
    data = saved.read_bytes()
    (tmp_path / "cut.jaxjac").write_bytes(data[:keep])
    with pytest.raises(
        jaxjac.JaxjacError,
        match=r"cut\.jaxjac (is truncated: its header needs \d+ bytes, the file holds \d+|is not a jaxjac artifact.*found 5 bytes)",
    ):
        jaxjac.load(tmp_path / "cut.jaxjac")


def test_load_newer_format(model, tmp_path):
    from jaxjac._artifact import _header_metadata

    meta = {**_header_metadata(model), "format_version": str(FORMAT_VERSION + 1)}
    save_file({k: np.asarray(v) for k, v in model.tensors().items()}, tmp_path / "new.jaxjac", metadata=meta)
    with pytest.raises(
        jaxjac.JaxjacError, match=rf"newer jaxjac \(artifact format version {FORMAT_VERSION + 1}\).*upgrade"
    ):
        jaxjac.load(tmp_path / "new.jaxjac")


def _forge(model, path, *, graph=None, spec=None, tensors=None, checksum=True) -> None:
    """Write `model` with parts replaced, checksummed as `save` would: an edit made to look whole."""
    from jaxjac._artifact import _DIGEST, _content_digest, _header_metadata

    meta = _header_metadata(model)
    g, sp = json.loads(meta["graph"]), json.loads(meta["spec"])
    meta.update(graph=json.dumps(graph(g) if graph else g), spec=json.dumps(spec(sp) if spec else sp))
    arrays = {k: np.asarray(v) for k, v in model.tensors().items()}
    arrays = tensors(arrays) if tensors else arrays
    if checksum:
        meta[_DIGEST] = _content_digest(meta, arrays)
    save_file(arrays, path, metadata=meta)


def _replace_node(graph, index, **fields):
    graph["nodes"][index].update(fields)
    return graph


def _first_conv_weight_cut(arrays):
    name = next(k for k, v in arrays.items() if v.ndim == 3)
    return {**arrays, name: arrays[name][:-1].copy()}  # one output channel fewer than its bias has


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"checksum": False}, r"has no checksum \(`content_sha256` in its metadata\).*convert the model again"),
        (
            {"graph": lambda g: _replace_node(g, 0, op="aten.not_an_op.default")},
            r"uses ATen op `aten\.not_an_op\.default`, which this jaxjac cannot run: it was written by a newer",
        ),
        (
            {"graph": lambda g: _replace_node(g, 1, args=[{"$node": "nowhere"}])},
            r"its graph does not run on its own tensors \(KeyError: 'nowhere'\); it was edited",
        ),
        (
            {"graph": lambda g: {**g, "tensors": [*g["tensors"], "ghost"]}},
            r"names tensor `ghost`, which the file lacks",
        ),
        ({"spec": lambda sp: {**sp, "output_shape": [7]}}, r"its graph gives outputs of shape \(3,\), but its spec"),
        (
            {"tensors": _first_conv_weight_cut},
            r"its graph does not run on its own tensors \(at ATen op `aten\.\w+\.default`: \w+Error: ",
        ),
    ],
    ids=[
        "no-checksum",
        "unknown-op",
        "dangling-reference",
        "missing-tensor",
        "wrong-output-shape",
        "wrong-weight-shape",
    ],
)
def test_a_forged_artifact_is_refused_in_one_line(model, tmp_path, edit, message):
    _forge(model, tmp_path / "forged.jaxjac", **edit)
    with pytest.raises(jaxjac.JaxjacError, match=message) as caught:
        jaxjac.load(tmp_path / "forged.jaxjac")
    assert "\n" not in str(caught.value) and "report it" not in str(caught.value)


def test_float64_round_trip_needs_x64(tmp_path, x):
    with jax.enable_x64(True):
        model = jaxjac.convert(trained_net().double(), x.astype(np.float64), dtype="float64", check=False)
        jaxjac.save(model, tmp_path / "f64.jaxjac")
        loaded = jaxjac.load(tmp_path / "f64.jaxjac")
        assert loaded.dtype == np.float64
        np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    with pytest.raises(jaxjac.JaxjacError, match=r"f64\.jaxjac holds a float64 model; enable 64-bit JAX"):
        jaxjac.load(tmp_path / "f64.jaxjac")


def test_load_works_without_torch(model, saved, x, tmp_path):
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import jaxjac
        model = jaxjac.load({str(saved)!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "out.npy")!r}, np.asarray(model(x)))
        np.save({str(tmp_path / "jac.npy")!r}, jaxjac.jacobian(model, x))
        assert not any(name == "torch" or name.startswith("torch.") for name in sys.modules if sys.modules[name])
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # Run outside the checkout: `python -c` puts the working directory first on
    # sys.path, where the source `jaxjac/` lacks the installed `jaxjac.converters`.
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.asarray(model(x)))
    np.testing.assert_array_equal(np.load(tmp_path / "jac.npy"), jaxjac.jacobian(model, x))
