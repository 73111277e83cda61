"""A forward that branches on its input's values converts the example's branches, guarded by NaN rows elsewhere."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
import torch
from helpers import torch_reference
from torch import nn

import jaxjac
from jaxjac.cli import main

BRANCHES = r"branches on the input's values \(at test_branches_on_data\.py:\d+, .*\)"


class Branchy(nn.Module):
    """Branches as real models do: a NaN guard (pypots), an assertion, a test of a statistic."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3)
        self.head = nn.Linear(4 * 6, 3)

    def forward(self, x):  # (N, 1, 8) -> (N, 3)
        if torch.isnan(x).any():
            x = torch.nan_to_num(x)
        assert (x > -10).all(), "input out of range"
        h = torch.tanh(self.conv(x))
        h = h * 2 if h.mean() > 0 else h.flip(-1) - 1  # a branch that changes both values and gradients
        for _ in range(2):  # one site, met twice: each meeting is guarded as it went
            if (h.amax() < 10).all():  # true for all: |h| <= 3.5
                h = h + 0.5
        return self.head(h.flatten(1))


def _samples() -> tuple[np.ndarray, np.ndarray]:
    """Samples whose `h.mean()` is positive, and samples whose is not, `(4, 1, 8)` each, float64."""
    torch.manual_seed(0)
    net = Branchy().double().eval()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 1, 8)) + rng.uniform(-8, 8, (64, 1, 1))  # levels that take either branch
    with torch.no_grad():
        means = torch.tanh(net.conv(torch.as_tensor(x))).mean(dim=(1, 2)).numpy()
    order = np.argsort(means)  # the farthest from 0 on each side, so that no rounding flips them
    assert means[order[-4]] > 0.05 and means[order[3]] < -0.05
    return x[order[-4:]], x[order[:4]]


@pytest.mark.parametrize("traced", ["positive", "negative"])
def test_samples_on_the_traced_branches_match_torch_and_the_others_are_nan(traced):
    torch.manual_seed(0)
    net = Branchy().double().eval()
    positive, negative = _samples()
    same, other = (positive, negative) if traced == "positive" else (negative, positive)
    with jax.enable_x64(True):
        with pytest.warns(UserWarning, match=BRANCHES):
            model = jaxjac.convert(net, same, dtype="float64")
        assert model.metadata["check"]["passed"] is True
        x = np.concatenate([same, other])
        outputs, jacobians = np.asarray(model(x)), jaxjac.jacobian(model, x)
    expected_out, expected_jac = torch_reference(net, torch.as_tensor(same))
    np.testing.assert_allclose(outputs[:4], expected_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jacobians[:4], expected_jac.reshape(jacobians[:4].shape), rtol=1e-12, atol=1e-12)
    assert np.isnan(outputs[4:]).all() and np.isnan(jacobians[4:]).all()


def test_an_assertion_on_the_data_is_a_guard_too():
    torch.manual_seed(0)
    net = Branchy().eval()
    positive, _ = _samples()
    with pytest.warns(UserWarning, match=BRANCHES):
        model = jaxjac.convert(net, positive.astype(np.float32))
    far = positive.astype(np.float32).copy()
    far[0, 0, 3] = -20.0  # torch's forward raises "input out of range" on it
    with pytest.raises(AssertionError, match="out of range"):
        net(torch.as_tensor(far[:1]))
    jacobians = jaxjac.jacobian(model, far)
    assert np.isnan(jacobians[0]).all() and np.isfinite(jacobians[1:]).all()


def test_guards_survive_saving_and_run_without_torch_s_help(tmp_path):
    torch.manual_seed(0)
    net = Branchy().eval()
    positive, negative = _samples()
    with pytest.warns(UserWarning, match=BRANCHES):
        model = jaxjac.convert(net, positive.astype(np.float32))
    jaxjac.save(model, tmp_path / "m.jaxjac")
    loaded = jaxjac.load(tmp_path / "m.jaxjac")
    out = np.asarray(loaded(np.concatenate([positive, negative]).astype(np.float32)))
    assert np.isfinite(out[:4]).all() and np.isnan(out[4:]).all()


def test_probes_that_take_other_branches_fail_the_check_with_the_fix():
    torch.manual_seed(0)
    net = Branchy().eval()
    positive, negative = _samples()
    probes = np.concatenate([positive, negative]).astype(np.float32)
    with pytest.warns(UserWarning, match=BRANCHES):
        with pytest.raises(
            jaxjac.ConversionCheckError,
            match=r"4 of 8 probe inputs take other branches .*\(at test_branches_on_data\.py:\d+.*--check-data",
        ) as raised:
            jaxjac.convert(net, positive.astype(np.float32), check_data=probes)
    assert raised.value.report["probes_off_the_traced_branches"] == 4


ARCH_SOURCE = """
import torch


class SignedNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        if x.sum() > 0:
            x = x.exp()
        return self.head(x.flatten(1))
"""


@pytest.mark.filterwarnings("default:forward branches on the input's values:UserWarning")  # the CLI prints it
def test_the_cli_traces_the_branches_of_the_check_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "signed_nets.py").write_text(ARCH_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    from signed_nets import SignedNet

    torch.save(SignedNet().state_dict(), tmp_path / "sd.pt")
    np.save(tmp_path / "X.npy", np.abs(np.random.default_rng(0).standard_normal((5, 1, 8))) + 0.1)
    args = ["convert", "sd.pt", "--arch", "signed_nets:SignedNet", "--input-shape", "1,8"]
    assert main([*args, "--check-data", "X.npy", "-o", "real.jaxjac"]) == 0
    captured = capsys.readouterr()
    assert "passed on 5 probes" in captured.out
    assert re.search(
        r"jaxjac: warning: forward branches on the input's values \(at signed_nets\.py:\d+\)", captured.err
    )
    x = np.load(tmp_path / "X.npy").astype(np.float32)
    model = jaxjac.load(tmp_path / "real.jaxjac")
    assert np.isfinite(np.asarray(model(x))).all() and np.isnan(np.asarray(model(-x))).all()
    np.save(tmp_path / "mixed.npy", np.concatenate([x, -x[:2]]))
    assert main(["jacobian", "real.jaxjac", "mixed.npy", "-o", "J.npy"]) == 0
    assert re.search(
        r"note: the model's forward branches on its input's values \(at signed_nets\.py:\d+\)", capsys.readouterr().err
    )
    rows = np.load(tmp_path / "J.npy")
    assert np.isfinite(rows[:5]).all() and np.isnan(rows[5:]).all()
    # Traced on zeros (sum 0: the branch not taken) and checked on probes around zero, about half of
    # which take it: refused, and nothing written.
    assert main([*args, "-o", "zeros.jaxjac"]) == 1
    assert re.search(r"jaxjac: error: \d+ of \d+ probe inputs take other branches", capsys.readouterr().err)
    assert not (tmp_path / "zeros.jaxjac").exists()


class ScaledByItsPeak(nn.Module):
    """Numbers read with `.tolist()` and `.item()`: a branch on one, and arithmetic with others (per-sample shifts)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 3)
        self.head = nn.Linear(3 * 6, 2)

    def forward(self, x):  # (1, 1, 8) -> (1, 2): one sample at a time, as `.item()` reads one number
        low, high = torch.stack([x.amin(), x.amax()]).tolist()
        if high > 1.0:  # counts in 0..255 rather than reflectance in 0..1
            x = x / 255.0
        x = x - 0.5 * low
        x = x / (x.abs().amax().item() + 1.0)  # a number, so torch's gradient does not flow through it
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def test_a_branch_on_a_number_read_with_item_or_tolist_is_guarded_and_numbers_follow_each_sample():
    torch.manual_seed(0)
    net = ScaledByItsPeak().double().eval()
    rng = np.random.default_rng(2)
    reflectance = rng.uniform(0.0, 0.9, (3, 1, 8))
    counts = rng.uniform(2.0, 255.0, (2, 1, 8))
    with jax.enable_x64(True):
        with pytest.warns(UserWarning, match=r"branches on the input's values \(at test_branches_on_data\.py:\d+\)"):
            model = jaxjac.convert(net, reflectance[:1], check_data=reflectance, dtype="float64")
        jacobians = jaxjac.jacobian(model, np.concatenate([reflectance, counts]))
    for i, sample in enumerate(reflectance):  # one torch call per sample: `.item()` reads one number
        expected = torch.autograd.functional.jacobian(net, torch.as_tensor(sample[None]))[0, :, 0].numpy()
        np.testing.assert_allclose(jacobians[i], expected, rtol=1e-12, atol=1e-14)
    assert np.isnan(jacobians[3:]).all()


def test_item_in_torch_s_own_code_stays_a_number():
    from jaxjac._branches import BranchRecorder

    with BranchRecorder():
        assert f"{torch.tensor(1.25):.1f}" == "1.2"  # Tensor.__format__ calls item(): a tensor there would recurse
        assert isinstance(torch.tensor(3.0).item(), torch.Tensor)  # from here, forward's place, it is traced
