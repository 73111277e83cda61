"""Reading every checkpoint kind into a torch module that computes what the original did."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
import torch
from checkpoint_nets import NET_SOURCE, SAMPLE_SHAPE, trained_net
from flax import nnx
from helpers import torch_reference

import jaxjac
from jaxjac._load import detect_format, load_checkpoint


def assert_same_outputs(loaded: torch.nn.Module, net: torch.nn.Module) -> None:
    x = torch.randn(1, *SAMPLE_SHAPE)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), net(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("scripted.pt", "torchscript"),
        ("traced.pt", "torchscript"),
        ("dynamic.pt2", "exported-program"),
        ("fixed.pt2", "exported-program"),
        ("state_dict.pt", "torch-pickle"),
        ("pickled.pt", "torch-pickle"),
    ],
)
def test_detects_format_by_content(ckpts, tmp_path, name, kind):
    renamed = tmp_path / "checkpoint.bin"  # the extension must not matter
    renamed.write_bytes(ckpts[name].read_bytes())
    assert detect_format(renamed) == kind


@pytest.mark.parametrize("name", ["scripted.pt", "traced.pt"])
def test_torchscript_keeps_parameters_as_parameters(ckpts, net, name):
    checkpoint = load_checkpoint(ckpts[name], sample_shape=SAMPLE_SHAPE)
    assert checkpoint.format == "torchscript"
    assert sorted(n for n, _ in checkpoint.net.named_parameters()) == sorted(n for n, _ in net.named_parameters())
    assert_same_outputs(checkpoint.net, net)


class WithUnusedHead(torch.nn.Module):
    """A net with an auxiliary head that forward never uses, as training code leaves them."""

    def __init__(self):
        super().__init__()
        self.body = trained_net()
        self.aux = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.body(x)


def torchscript(net: torch.nn.Module, kind: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users still have such modules
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(net) if kind == "script" else torch.jit.trace(net, torch.randn(2, *SAMPLE_SHAPE))


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_torchscript_with_parameters_forward_never_uses(tmp_path, kind):
    net = WithUnusedHead().eval()
    scripted = torchscript(net, kind)
    scripted.save(str(tmp_path / "aux.pt"))
    checkpoint = load_checkpoint(tmp_path / "aux.pt", sample_shape=SAMPLE_SHAPE)
    assert sorted(n for n, _ in checkpoint.net.named_parameters()) == sorted(
        n for n, _ in net.named_parameters() if not n.startswith("aux.")
    )
    assert_same_outputs(checkpoint.net, net)


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_convert_takes_a_torchscript_module_as_the_command_line_takes_its_archive(net, kind):
    x = torch.randn(4, *SAMPLE_SHAPE)
    model = jaxjac.convert(torchscript(net, kind), x)
    assert model.metadata["check"]["passed"]
    assert all(isinstance(model.variable(name), nnx.Param) for name, _ in net.named_parameters())
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(model(x.numpy())), net(x).numpy(), rtol=1e-5, atol=1e-6)


def test_torchscript_needs_input_shape(ckpts):
    with pytest.raises(jaxjac.JaxjacError, match=r"scripted\.pt is a TorchScript archive.*--input-shape 1,224"):
        load_checkpoint(ckpts["scripted.pt"])


def test_exported_program_records_sample_shape(ckpts, net):
    checkpoint = load_checkpoint(ckpts["dynamic.pt2"])
    assert (checkpoint.format, checkpoint.sample_shape) == ("exported-program", SAMPLE_SHAPE)
    assert_same_outputs(checkpoint.net, net)


def test_exported_program_with_fixed_batch_is_explained(ckpts):
    with pytest.raises(
        jaxjac.JaxjacError, match=r"fixed\.pt2 was exported with a fixed batch size of 2.*Dim\('batch'\)"
    ):
        load_checkpoint(ckpts["fixed.pt2"])


def test_exported_program_rejects_other_input_shape(ckpts):
    with pytest.raises(jaxjac.JaxjacError, match=r"--input-shape 1,64 does not fit .*dynamic\.pt2.*\(1, 32\)"):
        load_checkpoint(ckpts["dynamic.pt2"], sample_shape=(1, 64))


@pytest.mark.parametrize(
    ("name", "note"),
    [
        ("state_dict.pt", None),
        ("nested_state_dict.pt", r"checkpoint\['state_dict'\] \(ignoring epoch\)"),
        ("nested_model_state_dict.pt", r"checkpoint\['model_state_dict'\] \(ignoring optimizer_state_dict, epoch\)"),
        ("nested_model.pt", r"checkpoint\['model'\]"),
        ("data_parallel.pt", r"stripped the 'module\.' prefix"),
    ],
)
def test_state_dict_with_arch(ckpts, net, arch, name, note):
    checkpoint = load_checkpoint(ckpts[name], arch=arch)
    assert checkpoint.format == "state-dict"
    if note is None:
        assert checkpoint.notes == []
    else:
        assert any(re.search(note, n) for n in checkpoint.notes), checkpoint.notes
    assert_same_outputs(checkpoint.net, net)


def test_state_dict_without_arch_asks_for_it(ckpts):
    with pytest.raises(jaxjac.JaxjacError, match=r"state_dict\.pt holds a state_dict \(\d+ tensors.*pass --arch"):
        load_checkpoint(ckpts["state_dict.pt"])


def test_arch_kwargs_are_passed(tmp_path, arch):
    torch.save(trained_net(n_classes=5).state_dict(), tmp_path / "five.pt")
    with pytest.raises(jaxjac.JaxjacError, match=r"five\.pt does not fit --arch .*size mismatch for head\.weight"):
        load_checkpoint(tmp_path / "five.pt", arch=arch)
    checkpoint = load_checkpoint(tmp_path / "five.pt", arch=arch, arch_kwargs={"n_classes": 5})
    assert checkpoint.net(torch.zeros(1, *SAMPLE_SHAPE)).shape == (1, 5)


def test_missing_and_unexpected_keys_in_one_line(tmp_path, net, arch):
    sd = dict(net.state_dict())
    del sd["head.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "odd.pt")
    with pytest.raises(jaxjac.JaxjacError, match=r"1 missing key \(head\.bias\); 1 unexpected key \(extra\.weight\)$"):
        load_checkpoint(tmp_path / "odd.pt", arch=arch)


@pytest.mark.parametrize(
    ("prefix", "extra"),
    [
        ("model.", {"loss_fn.weight": torch.ones(3)}),  # a PyTorch Lightning module's attribute
        ("_orig_mod.", {}),  # torch.compile
        ("ema.", {"model.head.weight": torch.zeros(3, 8)}),  # an EMA copy beside the live weights
    ],
)
def test_state_dict_under_a_key_prefix(tmp_path, net, arch, prefix, extra):
    state = {prefix + key: value for key, value in net.state_dict().items()} | extra
    torch.save({"state_dict": state, "hyper_parameters": {"lr": 0.1}}, tmp_path / "wrapped.ckpt")
    checkpoint = load_checkpoint(tmp_path / "wrapped.ckpt", arch=arch)
    ignored = f"; ignoring {len(extra)} entries outside it" if extra else ""
    assert any(n == f"using the state_dict entries under the key prefix {prefix!r}{ignored}" for n in checkpoint.notes)
    assert_same_outputs(checkpoint.net, net)


def adam_state(net: torch.nn.Module) -> dict:
    """A real optimizer's state_dict after one step: per-parameter dicts of tensors, under integer keys."""
    copy = trained_net()
    optimizer = torch.optim.Adam(copy.parameters())
    copy(torch.randn(2, *SAMPLE_SHAPE)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def other_weights(net: torch.nn.Module) -> dict:
    return {
        key: torch.randn_like(value) if value.is_floating_point() else value for key, value in net.state_dict().items()
    }


@pytest.mark.parametrize(
    ("layout", "where"),
    [
        (
            lambda sd, net: {"net": sd, "optimizer": adam_state(net), "epoch": 3},
            r"checkpoint\['net'\] \(ignoring optimizer, epoch\)",
        ),
        (
            lambda sd, net: {"best_acc": torch.tensor(0.9), "weights": sd},
            r"checkpoint\['weights'\] \(ignoring best_acc\)",
        ),
        (
            lambda sd, net: {"run": {"ema_model": {f"model.{k}": v for k, v in sd.items()}}, "step": 10},
            r"checkpoint\['run'\]\['ema_model'\] \(ignoring step\)",
        ),
        # Of several that fit, the one under a common name; one that does not fit is passed over.
        (lambda sd, net: {"ema": other_weights(net), "model": sd}, r"checkpoint\['model'\] \(ignoring ema\)"),
        (lambda sd, net: {"aux": {"head.weight": torch.zeros(2, 2)}, "trained": sd}, r"checkpoint\['trained'\]"),
    ],
    ids=["beside-optimizer", "beside-a-tensor", "two-deep-with-prefix", "common-name-first", "the-one-that-fits"],
)
def test_state_dict_nested_under_any_key_is_found_by_the_architecture_it_fits(tmp_path, net, arch, layout, where):
    torch.save(layout(net.state_dict(), net), tmp_path / "run.pt")
    checkpoint = load_checkpoint(tmp_path / "run.pt", arch=arch)
    assert any(re.search("using the state_dict under " + where, n) for n in checkpoint.notes), checkpoint.notes
    assert_same_outputs(checkpoint.net, net)


def test_several_nested_state_dicts_that_fit_are_named_with_the_fix(tmp_path, net, arch):
    torch.save({"student": net.state_dict(), "teacher": other_weights(net)}, tmp_path / "distill.pt")
    with pytest.raises(
        jaxjac.JaxjacError,
        match=r"distill\.pt: 2 state_dicts in it fit the architecture \(checkpoint\['student'\], "
        r"checkpoint\['teacher'\]\).*torch\.save\(ckpt\['student'\], 'weights\.pt'\)",
    ):
        load_checkpoint(tmp_path / "distill.pt", arch=arch)


def test_a_checkpoint_without_tensors_says_what_it_holds(tmp_path, arch):
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, tmp_path / "empty.pt")
    with pytest.raises(
        jaxjac.JaxjacError, match=r"empty\.pt: expected a state_dict.*found a dict with keys \['epoch', 'config'\]"
    ):
        load_checkpoint(tmp_path / "empty.pt", arch=arch)


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("{module}:Net", {"n_classes": -1}, r"building it with --arch-kwargs \{'n_classes': -1\} raised RuntimeError"),
        ("nets.Net", None, r"--arch must look like package\.module:Class; got 'nets\.Net'"),
        ("no_such_module_xyz:Net", None, r"cannot import 'no_such_module_xyz' from .*run jaxjac from the directory"),
        ("{module}:Nett", None, r"has no attribute 'Nett'"),
        ("{module}:torch", None, r"expected a class or factory function; found a module"),
        ("{module}:Net", {"n_clases": 3}, r"--arch-kwargs \{'n_clases': 3\} do not fit .*unexpected keyword"),
    ],
)
def test_bad_arch(ckpts, arch, spec, kwargs, message):
    spec = spec.format(module=arch.split(":")[0])
    with pytest.raises(jaxjac.JaxjacError, match=message):
        load_checkpoint(ckpts["state_dict.pt"], arch=spec, arch_kwargs=kwargs)


def test_arch_code_that_fails(tmp_path, ckpts, monkeypatch):
    (tmp_path / "failing_arch.py").write_text("import torch\nraise RuntimeError('needs a GPU')\n")
    (tmp_path / "picky_arch.py").write_text("def build(width=8):\n    raise ValueError('width must be 16')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(jaxjac.JaxjacError, match=r"importing 'failing_arch' failed with RuntimeError: needs a GPU"):
        load_checkpoint(ckpts["state_dict.pt"], arch="failing_arch:Net")
    with pytest.raises(
        jaxjac.JaxjacError,
        match=r"--arch picky_arch:build: building it with --arch-kwargs \{\} raised ValueError: width",
    ):
        load_checkpoint(ckpts["state_dict.pt"], arch="picky_arch:build")


def test_pickled_module_is_refused_by_default(ckpts):
    with pytest.raises(
        jaxjac.JaxjacError,
        match=r"pickled\.pt holds pickled Python objects \(e\.g\. checkpoint_nets\.Net\); unpickling it executes "
        r"arbitrary code.*--allow-pickle",
    ):
        load_checkpoint(ckpts["pickled.pt"])


def test_pickled_module_with_allow_pickle(ckpts, net):
    checkpoint = load_checkpoint(ckpts["pickled.pt"], allow_pickle=True)
    assert checkpoint.format == "pickled-module"
    assert_same_outputs(checkpoint.net, net)


def test_pickled_module_saved_from_a_script_finds_its_classes_in_the_arch_module(tmp_path, monkeypatch):
    # `python train.py` pickles its classes as __main__.Net, which no other program can import.
    script = NET_SOURCE + "\n\nif __name__ == '__main__':\n    torch.save(Net(), 'net.pt')\n"
    (tmp_path / "train.py").write_text(script)
    subprocess.run([sys.executable, "train.py"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        jaxjac.JaxjacError,
        match=r"net\.pt: the pickled module's class Net was defined in a script run as __main__ .*--arch train:Net",
    ):
        load_checkpoint(tmp_path / "net.pt", allow_pickle=True)
    try:
        checkpoint = load_checkpoint(tmp_path / "net.pt", allow_pickle=True, arch="train:Net")
        assert type(checkpoint.net).__module__ == "train"
        assert any("pickled under __main__ (Net) in module train" in note for note in checkpoint.notes)
        assert jaxjac.convert(checkpoint.net, torch.randn(2, *SAMPLE_SHAPE)).metadata["check"]["passed"]
    finally:
        sys.modules.pop("train", None)


def test_missing_file(tmp_path):
    with pytest.raises(jaxjac.JaxjacError, match=r"nope\.pt: expected a torch checkpoint file; found no such file"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, I am not a model", r"expected a torch checkpoint .*found a file starting with b'hello, I'"),
        (b"", r"found a file starting with b''"),
        (b"PK\x03\x04garbage", r"found a damaged zip archive"),
    ],
)
def test_garbage_file(tmp_path, content, message):
    (tmp_path / "junk.pt").write_bytes(content)
    with pytest.raises(jaxjac.JaxjacError, match=message):
        load_checkpoint(tmp_path / "junk.pt")


def test_truncated_checkpoint(ckpts, tmp_path):
    data = ckpts["state_dict.pt"].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(jaxjac.JaxjacError, match=r"cut\.pt: expected a torch checkpoint; found a damaged zip"):
        load_checkpoint(tmp_path / "cut.pt")


class SizeArithmetic(torch.nn.Module):
    """Shapes computed from sizes, as attention heads and patching do: a trace records `c // 2` as tensor ops."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 8, 3)
        self.attention = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        h = self.conv(x)
        b, c, n = h.shape
        h = h.reshape(b, 2, c // 2, n).transpose(1, 2).reshape(b, c, n).transpose(1, 2)
        return self.head(self.attention(h, h, h)[0].mean(1))


def test_torchscript_arithmetic_on_sizes_is_computed_for_the_traced_shape():
    # Traced only: torch's TorchScript converter cannot take a scripted MultiheadAttention's branches.
    torch.manual_seed(0)
    net = SizeArithmetic().double().eval()
    x = torch.randn(4, *SAMPLE_SHAPE, dtype=torch.float64)
    with warnings.catch_warnings():  # TorchScript's deprecation, and its tracer's notes on Python values
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, x, check_trace=False)
    with jax.enable_x64(True):
        model = jaxjac.convert(traced, x, dtype="float64")
        jacobians = jaxjac.jacobian(model, x.numpy())
    _, expected = torch_reference(net, x)
    np.testing.assert_allclose(jacobians, expected, rtol=1e-9, atol=1e-12)
