"""`jaxjac.convert`: eval semantics, errors that explain, and a check that catches wrong lowerings."""

from __future__ import annotations

import copy
import re
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import Float64Buffer, assert_converts, swap_lowering, torch_reference
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

import jaxjac
import jaxjac._check
import jaxjac._convert
import jaxjac._export
import jaxjac._masked_regions
from jaxjac import converters
from jaxjac._check import float64_verdict, format_report
from jaxjac.cli import main
from jaxjac.converters import registry


class Bessel(nn.Module):
    def forward(self, x):
        return torch.special.bessel_j0(x)


class WithUnsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)
        self.odd = Bessel()

    def forward(self, x):
        return self.odd(self.conv(x)).flatten(1)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y, y.relu()


def small_net(length=8):
    net = nn.Sequential(
        nn.Conv1d(1, 3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5), nn.ReLU(), nn.Flatten(), nn.Linear(3 * (length - 2), 2)
    )
    return net.eval()


def test_unsupported_op_names_op_module_and_where_to_report():
    with pytest.raises(jaxjac.UnsupportedOpError, match=r"aten\.special_bessel_j0\.default.*module `odd`.*report"):
        jaxjac.convert(WithUnsupported().eval(), torch.randn(2, 1, 8))


def _failing_relu(monkeypatch) -> None:
    """Stand in for a rule that does not cover its arguments: aten.relu's raises a TypeError."""

    def relu(x):
        raise TypeError("Wrong number of explicit pads\nsecond line")

    monkeypatch.setitem(registry._LOWERINGS, "aten.relu.default", relu)


def test_a_rule_that_fails_on_its_arguments_names_op_and_module(monkeypatch):
    _failing_relu(monkeypatch)
    with pytest.raises(
        jaxjac.LoweringError, match=r"aten\.relu\.default.*module `3` \(.*ReLU\).*TypeError: Wrong"
    ) as info:
        jaxjac.convert(small_net(), torch.randn(2, 1, 8))
    assert "second line" not in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)


def test_a_rule_that_fails_on_its_arguments_is_one_cli_line(monkeypatch, tmp_path, capsys):
    torch.save(small_net(), tmp_path / "net.pt")
    _failing_relu(monkeypatch)
    code = main(
        [
            "convert",
            str(tmp_path / "net.pt"),
            "--input-shape",
            "1,8",
            "--allow-pickle",
            "-o",
            str(tmp_path / "net.jaxjac"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert re.fullmatch(r"jaxjac: error: ATen op `aten\.relu\.default` from module `3` .*report.*\n", err)
    assert not (tmp_path / "net.jaxjac").exists()


class RandomSlopes(nn.Module):
    def forward(self, x):
        return F.rrelu(x, 0.1, 0.3, training=True).sum(-1)


def test_a_problem_a_rule_finds_in_the_model_is_the_users_to_fix():
    # Not reported as a gap in jaxjac's rule: the model itself asks for random slopes.
    with pytest.raises(
        jaxjac.JaxjacError, match=r"^module `<root>` \(.*RandomSlopes\): RReLU in training mode"
    ) as info:
        jaxjac.convert(RandomSlopes().eval(), torch.randn(2, 1, 8))
    assert not isinstance(info.value, jaxjac.LoweringError)


def test_train_mode_is_converted_as_eval_with_a_warning():
    net = small_net().train()
    x = torch.randn(4, 1, 8)
    with pytest.warns(UserWarning, match="train mode.*eval mode") as warned:
        model = jaxjac.convert(net, x)
    assert sum("train mode" in str(w.message) for w in warned) == 1, "one warning, not one per step"
    assert net.training, "convert must restore the caller's train mode"
    net.eval()
    np.testing.assert_allclose(np.asarray(model(x.numpy())), net(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert model.metadata["check"]["passed"]


def test_output_index_chooses_among_several_outputs():
    net, x = TwoOutputs().eval(), torch.randn(3, 1, 8)
    with pytest.raises(jaxjac.JaxjacError, match=r"returns 2 values \(0: out\[0\], 1: out\[1\]\); pass output_index"):
        jaxjac.convert(net, x)
    model = jaxjac.convert(net, x, output_index=1)
    np.testing.assert_allclose(np.asarray(model(x.numpy())), net(x)[1].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_float64_needs_x64():
    if jax.config.jax_enable_x64:
        pytest.fail("tests expect x64 off by default")
    with pytest.raises(jaxjac.JaxjacError, match="float64.*jax_enable_x64"):
        jaxjac.convert(small_net(), torch.randn(2, 1, 8), dtype="float64")


def test_check_catches_a_wrong_lowering(monkeypatch, request):
    # ReLU's lowering swapped for the identity: a bug that shows in nearly every row.
    swap_lowering(monkeypatch, request, "aten.relu.default", lambda x: x)
    with pytest.raises(jaxjac.ConversionCheckError, match=r"outputs: max relative error .*jacobians") as info:
        jaxjac.convert(small_net(length=11), torch.randn(2, 1, 11))
    assert info.value.report["passed"] is False
    assert info.value.report["outputs_max_rel_error"] > 1e-3


@pytest.mark.parametrize("wrong_row", [0, 1], ids=["a-checked-row", "a-row-left-out"])
def test_many_outputs_are_checked_on_some_rows_and_a_combination_of_all(monkeypatch, request, wrong_row):
    # K = 200 > MAX_CHECKED_ROWS: torch makes 65 reverse passes per probe, not 200. A wrong
    # derivative of one output (its value right) is caught whether or not its row is one of those.
    def tanh_with_one_wrong_derivative(x):
        wrong = jnp.zeros(x.shape).at[..., 0, wrong_row].set(0.5)  # output `wrong_row` only
        return jnp.tanh(x) + wrong * (x - jax.lax.stop_gradient(x))

    def whole_jacobians(*args, **kwargs):  # K rows per probe: tens of GB for a float64 model with 1024 outputs
        raise AssertionError("the check computed every row of the Jacobians")

    monkeypatch.setattr(jaxjac._check, "jacobian", whole_jacobians)
    net = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten()).eval()
    x = torch.randn(3, 1, 100)
    report = jaxjac.convert(net, x).metadata["check"]
    assert report["passed"] and report["jacobian_rows_checked"] == "64 of 200 rows and a random combination of all"
    swap_lowering(monkeypatch, request, "aten.tanh.default", tanh_with_one_wrong_derivative)
    with pytest.raises(jaxjac.ConversionCheckError, match=r"^[^;]*: jacobians: max relative error") as info:
        jaxjac.convert(net, x)
    assert info.value.report["jacobians_max_rel_error"] > 1e-3


class KeepsItsLastActivation(nn.Module):
    """A forward that stores a computed tensor on the module (tsai's attention blocks do): no deep copy then."""

    def __init__(self, length: int):
        super().__init__()
        self.body = small_net(length)

    def forward(self, x):
        self.last = self.body(x)
        return self.last


@pytest.mark.parametrize("make", [small_net, KeepsItsLastActivation], ids=["plain", "keeps-a-computed-tensor"])
def test_float32_rounding_beyond_the_tolerance_is_told_from_a_bug(make):
    # A tolerance no float32 kernel meets stands in for a deep model's rounding:
    # against torch's float64, jaxjac's float32 is as close as torch's own.
    torch.manual_seed(0)
    probes = np.random.default_rng(0).standard_normal((8, 1, 13))
    net = make(length=13).eval()
    model = jaxjac.convert(net, torch.randn(2, 1, 13), check_data=probes, rtol=1e-12)
    assert all(t.dtype == torch.float32 for t in net.parameters())  # the float64 look leaves it as it was
    report = model.metadata["check"]
    assert report["passed"] and report["explained_in_float64"] == ["outputs", "jacobians"]
    verdict = report["jacobians_float64_reference"]
    assert verdict["probes_missed"] <= 2 and 0 < verdict["torch_float32_max_rel_error"] < 1e-5
    assert "but against torch in float64 within" in format_report(report)


def _float32_of(truth: np.ndarray, rng: np.random.Generator, rounding: float = 1e-7) -> np.ndarray:
    return truth * (1 + rounding * rng.standard_normal(truth.shape))


@pytest.mark.parametrize(
    ("case", "explained"),
    [
        ("rounding beyond rtol, like torch's own", True),
        ("a kink in one of 8 probes of jaxjac's", True),
        ("a kink in one of 8 probes of torch's", True),
        ("kinks in 2 of 8 probes", True),
        ("off in 3 of 8 probes", False),
        ("off in every probe", False),
        ("rounding 10x torch's", False),
        ("NaN in one probe", True),
        ("NaN in every probe", False),
        ("kinks in 3 of torch's probes and 5 of jaxjac's", True),
        ("kinks in 3 of torch's probes, off in every probe", False),
        ("kinks in 3 of torch's probes and 6 of jaxjac's", False),
        ("torch off in 5 of 8 probes, jaxjac in 3", False),
    ],
)
def test_float64_verdict_takes_rounding_and_kinks_but_not_a_bug(case, explained):
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((8, 3, 1, 20))
    ours, theirs = _float32_of(truth, rng), _float32_of(truth, rng)
    off = {"a kink in one of 8 probes of jaxjac's": 1, "kinks in 2 of 8 probes": 2, "off in 3 of 8 probes": 3}.get(case)
    if off:
        ours[:off, :, :, 5] += 0.3  # one unit's contribution to every output, gone
    if case == "a kink in one of 8 probes of torch's":
        theirs[4, :, :, 5] += 0.3
    kinks = re.match(r"kinks in (\d) of torch's probes", case)
    if kinks:  # a model dense in kinks: torch's own float32 misses probes too
        theirs[-int(kinks[1]) :, :, :, 7] += 0.3
        ours[: int(re.search(r"(\d) of jaxjac's", case)[1]) if "jaxjac" in case else 0, :, :, 5] += 0.3
    if case.endswith("off in every probe"):
        ours *= 1.01
    if case.startswith("torch off in 5"):  # torch's float32 off at most probes is no sign of kinks
        theirs[:5] *= 1.01
        ours[:3, :, :, 5] += 0.3
    if case == "rounding 10x torch's":
        ours = _float32_of(truth, rng, rounding=1e-6)
    if case.startswith("NaN"):
        ours[: 1 if "one" in case else 8, 0, 0, 0] = np.nan
    verdict = float64_verdict(ours, theirs, truth, rtol=1e-8, atol=0.0)
    assert verdict["explained"] is explained, verdict


def test_check_report_is_kept_in_metadata():
    model = jaxjac.convert(small_net(), torch.randn(2, 1, 8), check_data=np.random.randn(5, 1, 8))
    report = model.metadata["check"]
    assert report["n_probes"] == 5 and report["passed"]
    assert report["jacobians_max_rel_error"] < 1e-4
    assert model.metadata["versions"]["torch"] == torch.__version__


def test_a_float64_model_without_parameters_is_checked_in_float64():
    class FixedFilters(nn.Module):  # preprocessing and projection held in buffers only
        def __init__(self):
            super().__init__()
            self.register_buffer("kernel", torch.tensor([[[-2.0, -1.0, 0.0, 1.0, 2.0]]]) / 10)
            self.register_buffer("projection", torch.randn(3, 16))

        def forward(self, x):
            return torch.tanh(nn.functional.conv1d(x, self.kernel, padding=2)).flatten(1) @ self.projection.t()

    torch.manual_seed(0)
    with jax.enable_x64(True):
        model = jaxjac.convert(
            FixedFilters().double().eval(), torch.randn(4, 1, 16, dtype=torch.float64), dtype="float64"
        )
    report = model.metadata["check"]
    assert report["dtype"] == "float64" and report["jacobians_max_rel_error"] < 1e-12


def test_check_data_of_the_wrong_shape_is_refused():
    with pytest.raises(
        jaxjac.JaxjacError, match=r"check data holds samples of shape \(2, 8\); the model expects \(1, 8\)"
    ):
        jaxjac.convert(small_net(), torch.randn(2, 1, 8), check_data=np.zeros((3, 2, 8)))


def test_registry_lists_what_it_lowers():
    ops = converters.supported_ops()
    assert "aten.convolution.default" in ops and ops == sorted(ops)
    with pytest.raises(ValueError, match="already lowered"):
        converters.register("aten.relu.default")(lambda x: x)


class LogReflectance(nn.Module):
    """Absorbance `-log10(x)` of positive reflectances, then a linear head: defined for x > 0 only."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(-torch.log10(x).flatten(1))


def test_the_check_probes_inputs_like_the_example():
    reflectance = torch.rand(4, 1, 8) * 0.9 + 0.05
    model = jaxjac.convert(LogReflectance().eval(), reflectance)  # standard-normal probes would be NaN here
    report = model.metadata["check"]
    assert report["passed"] and report["n_probes"] == 8 and "probes_left_out" not in report
    probes = jaxjac._convert.default_probes(reflectance, 8)
    assert probes.shape == (8, 1, 8) and (probes > 0).all()
    np.testing.assert_array_equal(probes[:4], reflectance.numpy().astype(np.float64))


def test_probes_where_torch_is_not_finite_are_left_out_or_explained():
    mixed = np.abs(np.random.default_rng(0).standard_normal((6, 1, 8)))
    mixed[[1, 4], 0, 3] = -1.0  # log10 of a negative: NaN in torch too
    model = jaxjac.convert(LogReflectance().eval(), torch.rand(2, 1, 8) + 0.1, check_data=mixed)
    assert model.metadata["check"]["n_probes"] == 4 and model.metadata["check"]["probes_left_out"] == 2
    with pytest.raises(jaxjac.JaxjacError, match="not finite on any of the 8 probe inputs, so .* pass check_data"):
        jaxjac.convert(LogReflectance().eval(), torch.zeros(1, 1, 8))  # no spread: standard-normal probes


class MaskedCumsum(nn.Module):
    def __init__(self, whole: bool = False):
        super().__init__()
        self.whole = whole

    def forward(self, x):  # how many elements survive depends on the values
        if self.whole:  # a whole reduction of them is a masked one
            return x[x > 0].sum(0, keepdim=True)[None]
        return x[x > 0].cumsum(0)[-1:][None]


def test_a_value_dependent_shape_is_named_as_the_cause():
    with pytest.raises(jaxjac.UnsupportedOpError, match=r"makes a shape depend on the input's values .* torch.where"):
        jaxjac.convert(MaskedCumsum().eval(), torch.randn(2, 1, 8))
    assert_converts(MaskedCumsum(whole=True), (1, 8), "float64")


class NoisyPool(nn.Module):
    """Adds noise to its mean in eval mode too, as speechbrain's StatisticsPooling does."""

    def forward(self, x):
        mean = x.mean(-1)
        return mean + 1e-5 * torch.randn(mean.shape)


def jit_trace(net: nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    """`torch.jit.trace(net, x)`, without comparing a second run (a random forward differs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit, which still works
        return torch.jit.trace(net, x, check_trace=False)


@pytest.mark.parametrize("traced", [False, True], ids=["module", "torch.jit.trace"])
def test_a_random_forward_is_named_as_random_at_its_layer(traced):
    net = nn.Sequential(nn.Conv1d(1, 4, 3), NoisyPool(), nn.Linear(4, 3)).eval()
    x = torch.randn(2, 1, 16)
    where = r"the model's own forward"
    if traced:
        net = jit_trace(net, x[:1])
    else:
        where = r"module `1` \(test_convert_api\.NoisyPool\)"
    message = rf"`aten\.randn\.default` from {where} draws random numbers on every call, eval mode included"
    with pytest.raises(jaxjac.UnsupportedOpError, match=message) as raised:
        jaxjac.convert(net, x)
    assert "report" not in str(raised.value) and "torch.export._trace" not in str(raised.value)


class MonteCarloDropout(nn.Module):
    """Dropout left on in eval mode, as Monte Carlo dropout does."""

    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x):
        return self.op(x, 0.2, training=True)


@pytest.mark.parametrize(
    ("op", "aten"),
    [
        (nn.functional.dropout, "native_dropout"),
        (nn.functional.dropout1d, "bernoulli"),
        (nn.functional.alpha_dropout, "bernoulli"),
    ],
)
def test_dropout_on_in_eval_mode_is_named_as_random(op, aten):
    net = nn.Sequential(nn.Conv1d(1, 4, 3), MonteCarloDropout(op), nn.Flatten(), nn.Linear(24, 3)).eval()
    message = rf"`aten\.{aten}\.\w+` from module `1` \(test_convert_api\.MonteCarloDropout\) draws random numbers"
    with pytest.raises(jaxjac.UnsupportedOpError, match=message):
        jaxjac.convert(net, torch.randn(2, 1, 8))


def test_a_quantized_layer_is_named_with_the_fix():
    net = nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(24, 3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates torch.ao.quantization and qint8 tensors; models keep them
        quantized = torch.ao.quantization.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)
    with pytest.raises(
        jaxjac.JaxjacError, match=r"module `2` \(torch\.ao\.nn\.quantized\..*Linear\) is a quantized layer"
    ):
        jaxjac.convert(quantized, torch.randn(2, 1, 8))


def test_a_torchscript_layer_inside_an_eager_model_is_named_with_the_fix():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit
        body = torch.jit.script(nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten()))
    net = nn.Sequential(body, nn.Linear(24, 3)).eval()
    with pytest.raises(
        jaxjac.JaxjacError, match=r"module `0` is TorchScript .* inside an eager model.*torch\.jit\.script\(net\)"
    ):
        jaxjac.convert(net, torch.randn(2, 1, 8))


class DictOutputs(nn.Module):
    def __init__(self, keys=("logits",)):
        super().__init__()
        self.fc = nn.Linear(8, 3)
        self.keys = keys

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return {key: y if key == "logits" else y.softmax(-1) for key in self.keys}


def test_forward_returning_a_dict_converts_and_is_checked():
    x = torch.randn(4, 1, 8)
    model = jaxjac.convert(DictOutputs().eval(), x)
    assert model.metadata["check"]["passed"]
    two = DictOutputs(("logits", "probs")).eval()
    with pytest.raises(jaxjac.JaxjacError, match=r"returns 2 values \(0: out\['logits'\], 1: out\['probs'\]\)"):
        jaxjac.convert(two, x)
    probs = jaxjac.convert(two, x, output_index=1)
    assert probs.metadata["check"]["passed"]
    np.testing.assert_allclose(np.asarray(probs(x.numpy())).sum(-1), 1.0, rtol=1e-5)


class NestedOutputs(nn.Module):
    """Returns `{'a': {'pred': y}, 'b': {'pred': relu(y)}, 'logits': 2y}`, as pypots' models return dicts."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return {"a": {"pred": y}, "b": {"pred": y.relu()}, "logits": 2 * y}


@pytest.mark.parametrize(
    ("name", "pick"),
    [
        ("logits", lambda out: out["logits"]),
        ("out['b']['pred']", lambda out: out["b"]["pred"]),
        ("['a']['pred']", lambda out: out["a"]["pred"]),
    ],
)
def test_an_output_is_chosen_by_its_name(name, pick):
    net, x = NestedOutputs().eval(), torch.randn(3, 1, 8)
    model = jaxjac.convert(net, x, output_index=name)
    assert model.metadata["check"]["passed"]
    np.testing.assert_allclose(np.asarray(model(x.numpy())), pick(net(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("pred", r"output 'pred' .* names 2 of the model's outputs \(out\['a'\]\['pred'\], out\['b'\]\['pred'\]\)"),
        (
            "probs",
            r"output 'probs' .* names none of the model's outputs \(0: out\['a'\]\['pred'\], .*2: out\['logits'\]\)",
        ),
    ],
)
def test_an_output_name_that_fits_none_or_several_is_refused_with_the_names(name, error):
    with pytest.raises(jaxjac.JaxjacError, match=error):
        jaxjac.convert(NestedOutputs().eval(), torch.randn(3, 1, 8), output_index=name)


def test_something_that_is_not_a_module_is_refused():
    with pytest.raises(jaxjac.JaxjacError, match="expected a torch.nn.Module to convert, got str"):
        jaxjac.convert("net.pt", torch.randn(2, 1, 8))


class Precise(nn.Module):
    """A float32 model with a float64 step: a variance of signals far from zero."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        wide = x.double()
        spread = (wide - wide.mean(-1, keepdim=True)).pow(2).mean(-1)
        return self.head(torch.cat([spread.float(), x.mean(-1)], 1))


def test_a_float64_step_without_64_bit_jax_is_warned_about():
    x = torch.randn(2, 1, 8) + 500.0
    with pytest.warns(UserWarning, match=r"computes in float64 inside forward, but 64-bit JAX is off"):
        jaxjac.convert(Precise().eval(), x, check=False)


def test_explicit_casts_inside_forward_round_as_in_torch():
    # In a float64 model, `.float()` rounds to float32 as torch's does; with 64-bit JAX a
    # float32 model's `.double()` step is float64. Both match torch to float64 rounding.
    class Grid(nn.Module):
        def forward(self, x):
            grid = torch.linspace(0, 1, x.shape[-1]).float()  # float32 in torch, whatever the model's dtype
            return (x * grid).sum(-1) + (x.float() * 1.1)[..., 0]  # a float32 product is rounded the same way

    x = torch.randn(3, 1, 7, dtype=torch.float64)
    with jax.enable_x64(True):
        model = jaxjac.convert(Grid().eval(), x, dtype="float64", check=False)
        np.testing.assert_allclose(np.asarray(model(x.numpy())), Grid()(x).numpy(), rtol=1e-14, atol=0)
        x32, precise = (torch.randn(3, 1, 8) + 500.0).float(), Precise().eval()
        model = jaxjac.convert(precise, x32, check=False)
        np.testing.assert_allclose(np.asarray(model(x32.numpy())), precise(x32).detach().numpy(), rtol=1e-6)


def test_a_float64_buffer_of_a_float32_model_keeps_its_width(tmp_path):
    # braindecode's SensingDynamics: narrowing the buffer with the model changed what it
    # computes, and the check, run on the narrowed copy, passed.
    net, x = Float64Buffer().eval(), torch.randn(4, 1, 8)
    outputs, jacobians = torch_reference(net, x)
    with jax.enable_x64(True):
        model = jaxjac.convert(net, x)
        jaxjac.save(model, tmp_path / "m.jaxjac")
        loaded = jaxjac.load(tmp_path / "m.jaxjac")
    assert model.tensors()["c"].dtype == np.float64 and model.tensors()["conv.weight"].dtype == np.float32
    for converted in (model, loaded):
        with jax.enable_x64(True):
            np.testing.assert_allclose(np.asarray(converted(x.numpy())), outputs, rtol=1e-6)
            np.testing.assert_allclose(np.asarray(jaxjac.jacobian(converted, x.numpy())), jacobians, rtol=1e-6)
    with pytest.warns(UserWarning, match=r"m.jaxjac holds 'c' in float64.*64-bit JAX is off"):
        jaxjac.load(tmp_path / "m.jaxjac")
    assert net.c.dtype == torch.float64


def test_a_float64_buffer_without_64_bit_jax_is_warned_about_and_fails_the_check():
    net, x = Float64Buffer().eval(), torch.randn(4, 1, 8)
    with pytest.warns(UserWarning, match=r"the model holds 'c' in float64.*64-bit JAX is off"):
        with pytest.raises(jaxjac.ConversionCheckError, match=r"forward computes in float64 without 64-bit JAX"):
            jaxjac.convert(net, x)


class ZeroDimFloat64(nn.Module):
    """Float64 0-dim tensors meeting float32 ones: torch computes in float32, as 0-dim tensors do not promote."""

    def __init__(self, buffer: bool):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)
        self.register_buffer("s", torch.tensor([0.25, 3.0], dtype=torch.float64) if buffer else None)

    def forward(self, x):
        y = self.conv(x).flatten(1) * torch.tensor(0.5, dtype=torch.float64)
        return y if self.s is None else y * self.s[0] - self.s[1]


@pytest.mark.parametrize("buffer", [False, True], ids=["constant", "buffer-element"])
def test_a_0_dim_float64_tensor_does_not_widen_a_float32_one(buffer):
    net, x = ZeroDimFloat64(buffer).eval(), torch.randn(3, 1, 8)
    with jax.enable_x64(True):
        model = jaxjac.convert(net, x)
        out = np.asarray(model(x.numpy()))
    assert out.dtype == np.float32 and net(x).dtype == torch.float32
    np.testing.assert_allclose(out, net(x).detach().numpy(), rtol=1e-6)
    if not buffer:  # a float64 0-dim constant alone computes nothing in float64: no warning
        jaxjac.convert(net, x)


def test_a_float64_model_converted_to_float32_is_narrowed_whole():
    net = Float64Buffer().double().eval()
    model = jaxjac.convert(net, torch.randn(4, 1, 8, dtype=torch.float64), check=False)
    assert {a.dtype for a in model.tensors().values()} == {np.dtype(np.float32)}


def test_torch_names_that_clash_with_the_module_s_own_are_kept_with_an_underscore(tmp_path):
    class Spectrogram(nn.Module):
        def __init__(self):
            super().__init__()
            self.spec = nn.Conv1d(1, 2, 3)  # a common name for a spectrogram front end
            self.tensors = nn.Linear(12, 3)

        def forward(self, x):
            return self.tensors(self.spec(x).flatten(1))

    net = Spectrogram().eval()
    x = torch.randn(2, 1, 8)
    model = jaxjac.convert(net, x)
    np.testing.assert_array_equal(np.asarray(model.spec_.weight[...]), net.spec.weight.detach().numpy())
    assert set(model.tensors()) == set(dict(net.named_parameters()))
    jaxjac.save(model, tmp_path / "m.jaxjac")
    loaded = jaxjac.load(tmp_path / "m.jaxjac")
    np.testing.assert_array_equal(np.asarray(loaded(x.numpy())), np.asarray(model(x.numpy())))


def test_a_model_that_cannot_be_copied_is_cast_in_place_and_restored():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the hook version of weight_norm
        net = nn.Sequential(nn.utils.weight_norm(nn.Conv1d(1, 2, 3)), nn.Flatten(), nn.Linear(12, 3)).eval()
    x = torch.randn(2, 1, 8)
    before = {k: (v.dtype, v.clone()) for k, v in net.state_dict().items()}
    with jax.enable_x64(True):
        model = jaxjac.convert(net, x, dtype="float64")
    assert model.dtype == np.float64
    for key, value in net.state_dict().items():
        assert value.dtype == before[key][0] and torch.equal(value, before[key][1]), key


def test_export_errors_give_torch_s_cause_and_a_hint():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 2, 3)

        def forward(self, x):
            scale = float(x.abs().max().detach().numpy())  # a Python number from the data
            return (self.conv(x) / scale).flatten(1)

    with pytest.raises(jaxjac.JaxjacError, match=r"could not trace .*turns a tensor into Python values"):
        jaxjac.convert(DataDependent().eval(), torch.randn(2, 1, 8))


class RunsAPackedSequence(nn.Module):
    """speechbrain's RNN wrappers pack the input whenever they are given lengths."""

    def __init__(self, rnn: type[nn.RNNBase]):
        super().__init__()
        self.rnn = rnn(6, 4, batch_first=True, bidirectional=True)

    def forward(self, x):
        lengths = torch.full((x.shape[0],), x.shape[1])
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True)
        return nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True)[0].flatten(1)


@pytest.mark.parametrize("rnn", [nn.LSTM, nn.GRU])
def test_a_packed_sequence_is_named_as_the_cause_with_the_fix(rnn):
    with pytest.raises(jaxjac.JaxjacError, match=r"runs on a PackedSequence .*pass the RNN the padded tensor"):
        jaxjac.convert(RunsAPackedSequence(rnn).eval(), torch.randn(2, 5, 6))


class PredictsADistribution(nn.Module):
    """Builds its output distribution in forward, as transformers' TimeSeriesTransformer does; torch validates its arguments."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 6)

    def forward(self, x):
        h = self.linear(x[:, 0])
        positive = F.softplus(h[:, ::2]) + 2
        t = torch.distributions.StudentT(positive[:, 0], h[:, 1], positive[:, 1], validate_args=None)
        return torch.stack([t.mean, t.entropy(), torch.distributions.Normal(h[:, 3], positive[:, 2]).stddev], 1)


def test_a_distribution_built_in_forward_converts_its_argument_checks_left_to_torch():
    net, x = PredictsADistribution().double().eval(), torch.randn(3, 1, 16, dtype=torch.float64)
    with jax.enable_x64(True):
        model = jaxjac.convert(net, x, dtype="float64")
        expected = np.stack([torch.autograd.functional.jacobian(net, x[i : i + 1])[0, :, 0] for i in range(3)])
        # The entropy's derivative takes trigamma, where torch's float64 is 4e-10 off scipy's and JAX's.
        np.testing.assert_allclose(jaxjac.jacobian(model, x.numpy()), expected, rtol=1e-8, atol=1e-14)
    assert torch.distributions.Distribution._validate_args  # torch's default is back


class DimsFromATensor(nn.Module):
    """A global layer norm whose dims come from a tensor, as asteroid's gLN computes them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3)

    def forward(self, x):
        h = self.conv(x)
        dims = torch.arange(1, h.dim()).tolist()
        mean = h.mean(dim=dims, keepdim=True)
        return ((h - mean) / (h.var(dim=dims, keepdim=True) + 1e-5).sqrt()).mean(-1)


class CallsInTryExcept(nn.Module):
    """Retries each block without an argument it may not take, as speechbrain's Xvector does."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Conv1d(1, 4, 3), nn.Tanh()])

    def forward(self, x):
        for block in self.blocks:
            try:
                x = block(x, lengths=None)
            except TypeError:
                x = block(x)
        return x.mean(-1)


class UsesPythonMadeTensors(nn.Module):
    """Tensors from Python numbers, read back and computed with (speechbrain's SincConv builds its window so)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)

    def forward(self, x):
        # In the model's dtype: jaxjac makes a float32 linspace in a float64 model in float64.
        window = torch.linspace(0.0, 1.0, x.shape[-1], dtype=x.dtype)
        ramp = torch.arange(x.shape[-1] - 2).float()
        n = int(torch.tensor(x.shape[-1]).item())
        return (self.conv(x * window) * ramp).sum(-1) / n


class StepFromANumpyConstant(nn.Module):
    """Reads a step from a numpy constant through torch, as asteroid's DCUNet reads its strides."""

    def __init__(self):
        super().__init__()
        self.strides = np.array([2, 4])
        self.linear = nn.Linear(8, 3)

    def forward(self, x):
        step = int(torch.from_numpy(self.strides)[0])
        scale = torch.as_tensor(self.strides).prod().item()
        return self.linear(x[:, 0, ::step]) / scale


class ReadsBackFilledTensors(nn.Module):
    """Reads back tensors filled with one number: lengths as torchaudio's Conformer takes them, a mask as torch_ecg's CRF asserts on."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 3)

    def forward(self, x):
        lengths = torch.full((x.shape[0],), x.shape[-1]) - torch.ones(x.shape[0], dtype=torch.long)
        steps = int(torch.max(lengths).item())
        assert x.new_ones(x.shape[:2], dtype=torch.uint8)[0].all() and not torch.zeros_like(x).any()
        out = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype)  # filled in place from the input
        out[:, 0] = self.linear(x[:, 0])
        out[:, 1] = self.linear(torch.flip(x[:, 0], [-1]))
        identity = torch.eye(3, dtype=x.dtype) * torch.full_like(x, 2.0).new_full((1,), 0.5).item()
        return out.sum(1)[:, :steps] @ identity


@pytest.mark.parametrize(
    "net",
    [DimsFromATensor(), UsesPythonMadeTensors(), StepFromANumpyConstant(), ReadsBackFilledTensors()],
    ids=["dims-from-a-tensor", "python-made", "numpy-constant", "filled"],
)
def test_tensors_made_from_python_numbers_can_be_read_back_while_traced(net):
    torch.manual_seed(0)
    x = torch.randn(3, 1, 16)
    with jax.enable_x64(True):
        model = jaxjac.convert(net.double().eval(), x.double(), dtype="float64")
        expected = np.stack([torch.autograd.functional.jacobian(net, x[i : i + 1].double())[0, :, 0] for i in range(3)])
        np.testing.assert_allclose(jaxjac.jacobian(model, x.double().numpy()), expected, rtol=1e-12, atol=1e-15)


def test_untraceable_python_is_named_with_its_line_and_the_trace_that_converts_it():
    net, x = CallsInTryExcept().eval(), torch.randn(3, 1, 16)
    message = r"Unexpected key .*inside try/except; convert `torch\.jit\.trace\(net, x\)`"
    with pytest.raises(jaxjac.JaxjacError, match=message) as raised:
        jaxjac.convert(net, x)
    assert "draft_export" not in str(raised.value)  # torch's closing advice, which names no cause
    model = jaxjac.convert(jit_trace(net, x[:1]), x)  # the hint's way works, and its check passes
    expected = np.stack([torch.autograd.functional.jacobian(net, x[i : i + 1])[0, :, 0] for i in range(3)])
    np.testing.assert_allclose(jaxjac.jacobian(model, x), expected, rtol=1e-5, atol=1e-6)


class DimsFromTheData(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)

    def forward(self, x):
        h = self.conv(x)
        dims = (h[0, :, 0] > 0).long().tolist()
        return h.mean(dim=[1 + d for d in dims])


class CountsIntoAFilledTensor(nn.Module):
    """Writes a count of the data into a tensor filled with zeros: its values are no longer known."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)

    def forward(self, x):
        counts = torch.zeros(3, dtype=torch.long)
        view = counts[:2]
        view[0] = (x > 0).sum()  # through a view of the filled tensor
        return self.conv(x)[..., : int(counts.max())]


@pytest.mark.parametrize(
    ("net", "where"),
    [
        (
            lambda: BranchesOnData(),
            r"test_convert_api\.py:\d+ \(return h\.mean\(-1\) if float\(h\.sum\(\)\) > 0 else h\.amax\(-1\)\)",
        ),
        (lambda: DimsFromTheData(), r"test_convert_api\.py:\d+ \(return h\.mean\(dim=\[1 \+ d for d in dims\]\)\)"),
        (
            lambda: CountsIntoAFilledTensor(),
            r"test_convert_api\.py:\d+ \(return self\.conv\(x\)\[\.\.\., : int\(counts\.max\(\)\)\]\)",
        ),
    ],
    ids=["branch", "dims", "filled-then-written-from-data"],
)
def test_a_data_dependent_trace_names_the_line_that_reads_values(net, where):
    with pytest.raises(jaxjac.JaxjacError, match=rf"data-dependent .* at {where} \(forward reads") as e:
        jaxjac.convert(net().eval(), torch.randn(2, 1, 8), check=False)
    assert "draft_export" not in str(e.value)


class DefaultDtypeSteps(nn.Module):
    """Steps torch computes in its default dtype, float32, inside a float64 model."""

    def __init__(self, step: str):
        super().__init__()
        self.step = step

    def forward(self, x):  # (N, 8)
        if self.step == "full":
            return x * torch.log(torch.full(x.shape, 7.3))
        if self.step == "float32-constant":  # SEW-D's and DeBERTa's attention scale
            return x / torch.sqrt(torch.tensor(x.shape[-1], dtype=torch.float) * 3).to(x.dtype)
        if self.step == "int-times-float":
            return x * torch.exp((x > 0).long() * 0.37)
        return x * torch.sin((x > 0).long() / 3.1)  # int-over-float


@pytest.mark.parametrize("step", ["full", "float32-constant", "int-times-float", "int-over-float"])
def test_a_float64_model_rounds_default_dtype_steps_as_torch_does(step):
    net, x = DefaultDtypeSteps(step).eval(), torch.randn(3, 8, dtype=torch.float64)
    with jax.enable_x64(True):
        model = jaxjac.convert(net, x, dtype="float64")
        got_out, got_jac = np.asarray(model(x.numpy())), jaxjac.jacobian(model, x.numpy())
    expected = np.stack([torch.autograd.functional.jacobian(net, x[i : i + 1])[0, :, 0] for i in range(3)])
    np.testing.assert_allclose(got_out, net(x).numpy(), rtol=1e-15)  # float64 rounding of float32 would be 1e-8
    np.testing.assert_allclose(got_jac, expected, rtol=1e-15)


class PadsFromIntegerBuffers(nn.Module):
    """'Same' padding computed from int64 buffers and handed to F.pad as tensors (transformers' Encodec and Mimi)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 7, stride=2)
        self.register_buffer("stride", torch.tensor(2), persistent=False)
        self.register_buffer("kernel_size", torch.tensor(7), persistent=False)
        self.register_buffer("padding_total", torch.tensor(5), persistent=False)

    def forward(self, x):
        frames = torch.ceil((x.shape[-1] - self.kernel_size + self.padding_total) / self.stride + 1).long() - 1
        extra = frames * self.stride + self.kernel_size - self.padding_total - x.shape[-1]
        return self.conv(F.pad(x, (self.padding_total, extra), mode="reflect")).mean(-1)


def test_integer_buffers_are_constants_forward_can_read_back():
    net, x = PadsFromIntegerBuffers().double().eval(), torch.randn(3, 1, 50, dtype=torch.float64)
    with jax.enable_x64(True):
        model = jaxjac.convert(net, x, dtype="float64")
        got = jaxjac.jacobian(model, x.numpy())
    expected = np.stack([torch.autograd.functional.jacobian(net, x[i : i + 1])[0, :, 0] for i in range(3)])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    assert dict(net.named_buffers()).keys() == {"stride", "kernel_size", "padding_total"}  # buffers again


class CountsCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)
        self.register_buffer("calls", torch.tensor(0))

    def forward(self, x):
        self.calls += 1  # an integer buffer forward updates stays a buffer
        return self.conv(x).mean(-1)


def test_an_integer_buffer_forward_updates_still_converts():
    model = jaxjac.convert(CountsCalls().eval(), torch.randn(2, 1, 8))
    assert model.metadata["check"]["passed"]


class StreamsState(nn.Module):
    """Carries its last steps to the next call, as pytorch-tcn's `TCN.inference` does with `self.buffer`."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.conv = how, nn.Conv1d(2, 3, 3)
        self.register_buffer("carried", torch.randn(1, 2, 2))

    def forward(self, x):
        x = torch.cat([self.carried, x], -1)
        if self.how == "reassigns":
            self.carried = x[..., -2:]
        else:
            self.carried.copy_(x[..., -2:].detach())
        return self.conv(x).flatten(1)


@pytest.mark.parametrize("how", ["reassigns", "copies-into"])
def test_a_forward_that_changes_its_state_is_converted_and_checked_from_the_state_at_conversion(how):
    torch.manual_seed(0)
    net, x = StreamsState(how).double().eval(), torch.randn(1, 2, 8, dtype=torch.float64)
    carried, value = net.carried, net.carried.clone()
    first_call = copy.deepcopy(net)
    with jax.enable_x64(True), pytest.warns(UserWarning, match=r"forward changes the model's state .*`carried`"):
        model = jaxjac.convert(net, x, dtype="float64")
        assert model.metadata["check"]["passed"]
        got = jaxjac.jacobian(model, x.numpy())
    # The user's model is handed back as it came, with no autograd history for a later convert to trip on.
    assert net.carried is carried and torch.equal(net.carried, value) and net.carried.grad_fn is None
    expected = torch.autograd.functional.jacobian(first_call, x)[0, :, 0]
    np.testing.assert_allclose(got[0], expected, rtol=1e-12, atol=1e-14)


class CachesOnFirstCall(nn.Module):
    """Builds a position bias on its first call and keeps it, as x-transformers' ALiBi does."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.conv = how, nn.Conv1d(2, 3, 3, padding=1)
        self.register_buffer("slopes", torch.tensor([0.5]), persistent=False)
        self.register_buffer("bias", None, persistent=False)
        self.table, self.batch_size_last = None, -1

    def forward(self, x):
        if self.how == "keyed" and x.shape[0] != self.batch_size_last:  # darts' TFT keys its cache by batch size
            self.table = torch.arange(x.shape[-1]) * self.slopes
            self.batch_size_last = x.shape[0]
        if self.how == "buffer" and self.bias is None:
            self.register_buffer("bias", torch.arange(x.shape[-1]) * self.slopes, persistent=False)
        if self.how == "attribute" and self.table is None:
            self.table = torch.arange(x.shape[-1]) * self.slopes
        return self.conv(x) + (self.bias if self.how == "buffer" else self.table)


@pytest.mark.parametrize("how", ["buffer", "attribute", "keyed"])
def test_a_forward_that_caches_a_tensor_converts_and_leaves_no_trace_in_the_model(how):
    # torch.export traced the buffer's creation into a copy onto the input, and failed; the fake
    # tensor it left in the model broke the check and every later torch call.
    net = CachesOnFirstCall(how).eval()
    assert_converts(net, (2, 8), "float64")
    jaxjac.convert(net, torch.randn(2, 2, 8))
    assert net.bias is None and net.table is None and net.batch_size_last == -1
    net(torch.randn(1, 2, 8))  # torch still runs it


class Checkpointed(nn.Module):
    """Activation checkpointing left in forward from training, as memory-bound training scripts do."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.body = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 2, 3, padding=1), nn.Tanh())

    def forward(self, x):
        if self.how == "sequential":
            return checkpoint_sequential(self.body, 2, x, use_reentrant=True).flatten(1)
        return checkpoint(self.body, x, use_reentrant=self.how == "reentrant").flatten(1)


@pytest.mark.parametrize("how", ["reentrant", "non-reentrant", "sequential"])
def test_activation_checkpointing_converts_and_is_checked(how):
    # The reentrant form runs the body without gradients inside an autograd.Function: traced,
    # that gave a Jacobian of zeros, and torch's own check could not take gradients through it.
    torch.manual_seed(0)
    net, x = Checkpointed(how).eval(), torch.randn(3, 2, 8)
    model = jaxjac.convert(net, x)
    assert model.metadata["check"]["passed"]
    expected = torch_reference(net.body, x)[1].reshape(3, -1, 2, 8)
    np.testing.assert_allclose(jaxjac.jacobian(model, x.numpy()), expected, rtol=1e-5, atol=1e-6)


class RelativePositionBias(nn.Module):
    """A learned bias by time offset, its table indexed by offsets made in place, as x-transformers' is."""

    def __init__(self, length: int = 8):
        super().__init__()
        self.table = nn.Parameter(torch.randn(2 * length - 1))
        self.conv = nn.Conv1d(2, 2, 3, padding=1)

    def forward(self, x):
        n = x.shape[-1]
        offsets = torch.arange(n)[:, None] - torch.arange(n)[None, :]
        offsets += n - 1  # in place, on a tensor made from numbers
        return self.conv(x) @ self.table[offsets]


def test_a_tensor_made_from_numbers_and_edited_in_place_converts():
    assert_converts(RelativePositionBias(), (2, 8), "float64")


class _RefusesAranges(torch.overrides.TorchFunctionMode):
    """Stands in for the tracing aid that keeps the values of tensors made from numbers, failing as it did."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func is torch.arange:
            raise RuntimeError("Constant lifted_tensor_0 is mutated in the forward method. Pls register it as buffer")
        return func(*args, **(kwargs or {}))


def test_a_forward_the_tracing_aids_fail_on_is_traced_as_torch_traces_it(monkeypatch):
    # x-transformers' dynamic position bias edits in place an arange made by einx, which torch
    # refused under the aid (a mutated constant) and traces without it.
    monkeypatch.setattr(jaxjac._export, "_RealConstants", _RefusesAranges)
    assert_converts(RelativePositionBias(), (2, 8), "float64")


class ReadsTopPeriod(nn.Module):
    """A period read from the spectrum into Python (thuml's TimesNet does): one program cannot hold that."""

    def forward(self, x):
        top = torch.topk(torch.fft.rfft(x, dim=-1).abs().mean((0, 1)), 1)[1].numpy()
        return x.flatten(1)[:, : int(top[0]) + 1]


class SqueezesAll(nn.Module):
    """`x.squeeze()` keeps (N, bands) for N > 1 and drops the batch axis of one sample (DeepHyperX's MouEtAl)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):  # (N, 1, 8)
        bands_first = x.squeeze().permute(1, 0)  # (8, N)
        return self.fc(bands_first.t())


def test_a_trace_that_fails_names_the_line_from_the_traceback():
    with pytest.raises(jaxjac.JaxjacError, match=r"\.numpy\(\) .* at test_convert_api\.py:\d+ \(top = torch\.topk"):
        jaxjac.convert(ReadsTopPeriod().eval(), torch.randn(2, 1, 8), check=False)


def test_a_forward_that_fails_on_one_sample_says_so_and_how_to_fix_it(capfd):
    net, x = SqueezesAll().eval(), torch.randn(4, 1, 8)
    assert net(x).shape == (4, 2)  # fine on a batch of several
    with pytest.raises(
        jaxjac.JaxjacError,
        match=r"fails in torch itself on a batch of one sample, shape \(1, 1, 8\).* at test_convert_api\.py:\d+ "
        r"\(bands_first = x\.squeeze\(\)\.permute.*squeeze only the axes you mean",
    ):
        jaxjac.convert(net, x)
    assert "fake_tensor" not in capfd.readouterr().err  # torch's logged traceback of the same error is silenced


class GathersByValue(nn.Module):
    """Indices computed from the values: in range on the example, out of range in torch on wider probes."""

    def forward(self, x):  # (N, 1, 8)
        return torch.gather(x, -1, (x.abs() * 4).long()).flatten(1)


def test_torch_failing_on_the_probes_for_a_reason_other_than_dtype_is_told_the_way_out():
    with pytest.raises(
        jaxjac.JaxjacError, match=r"torch could not run the model.*pass inputs it takes .*--no-check"
    ) as e:
        jaxjac.convert(GathersByValue().eval(), torch.rand(2, 1, 8), check_data=np.full((3, 1, 8), 5.0))
    assert "dtype" not in str(e.value)


class ReparameterisesInPlace(nn.Module):
    """`std.add_(mu)` on exp's output, as MONAI's VarAutoEncoder does in eval mode: torch's autograd refuses it."""

    def __init__(self, in_place: bool = True):
        super().__init__()
        self.conv, self.in_place = nn.Conv1d(1, 2, 3), in_place

    def forward(self, x):
        h = self.conv(x).mean(-1)
        mu, std = h[:, :1], torch.exp(0.5 * h[:, 1:])
        return std.add_(mu) if self.in_place else std + mu


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_forward_whose_in_place_op_overwrites_what_its_gradient_needs_is_checked(dtype):
    # torch's autograd refuses `std.add_(mu)` after exp; the check runs it again saving
    # copies of what in-place ops overwrite, and compares with that.
    torch.manual_seed(0)
    net, x = ReparameterisesInPlace().eval(), torch.randn(3, 1, 16)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.functional.jacobian(net, x[:1])
    with jax.enable_x64(dtype == "float64"):
        net, x = net.to(getattr(torch, dtype)), x.to(getattr(torch, dtype))
        model = jaxjac.convert(net, x, dtype=dtype)
        assert model.metadata["check"]["passed"]
        out_of_place = ReparameterisesInPlace(in_place=False).eval().to(x.dtype)
        out_of_place.load_state_dict(net.state_dict())
        expected = np.stack([torch.autograd.functional.jacobian(out_of_place, x[i : i + 1])[0, :, 0] for i in range(3)])
        np.testing.assert_allclose(jaxjac.jacobian(model, x.numpy()), expected, rtol=1e-5, atol=1e-7)


class BranchesOnData(nn.Module):
    """A forward whose branch depends on the data (tsai's MiniRocketPlus and HydraPlus do the like)."""

    def __init__(self, loud: bool = False):
        super().__init__()
        self.conv, self.loud = nn.Conv1d(1, 2, 3), loud

    def forward(self, x):
        h = self.conv(x)
        if self.loud:
            print("forward says hello", file=sys.stderr)
            return h.mean(-1)
        # A branch on a Python float: no guard can hold it (one on `.item()` is traced and guarded).
        return h.mean(-1) if float(h.sum()) > 0 else h.amax(-1)


def test_a_failed_trace_prints_nothing_but_keeps_torch_s_partial_graph_for_debug(capsys):
    with pytest.raises(jaxjac.JaxjacError, match=r"could not trace .*data-dependent") as raised:
        jaxjac.convert(BranchesOnData().eval(), torch.randn(2, 1, 8), check=False)
    assert capsys.readouterr().err == ""  # torch printed its partial graph here before
    assert "def forward" in "".join(getattr(raised.value.__cause__, "__notes__", []))


def test_what_forward_prints_while_traced_still_reaches_stderr(capsys):
    jaxjac.convert(BranchesOnData(loud=True).eval(), torch.randn(2, 1, 8), check=False)
    assert "forward says hello" in capsys.readouterr().err


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_is_converted_to_compute_in_float32(half, tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 4, 5, padding=2), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 24, 3)).eval()
    x = torch.randn(4, 2, 24)
    halved = net.to(half)
    model = jaxjac.convert(halved, x.to(half))  # the check compares with the same weights in float32
    assert model.metadata["check"]["passed"] and model.dtype == np.float32
    assert next(halved.parameters()).dtype == half  # the user's model is left as it was
    reference = halved.float()
    expected = np.stack([torch.autograd.functional.jacobian(reference, x[i : i + 1])[0, :, 0] for i in range(4)])
    np.testing.assert_allclose(jaxjac.jacobian(model, x), expected, rtol=1e-5, atol=1e-6)
    jaxjac.save(model, tmp_path / "half.jaxjac")
    np.testing.assert_array_equal(jaxjac.jacobian(jaxjac.load(tmp_path / "half.jaxjac"), x), jaxjac.jacobian(model, x))


class Conv2dWithConstraint(nn.Conv2d):
    """braindecode's max-norm convolution (EEGNet, EEGNeX): it renormalises its weight in forward."""

    def __init__(self, *args, max_norm=1.0, **kwargs):
        self.max_norm = max_norm
        super().__init__(*args, **kwargs)

    def forward(self, x):
        self.weight.data = torch.renorm(self.weight.data, p=2, dim=0, maxnorm=self.max_norm)
        return super().forward(x)


class ConstrainedEEGNet(nn.Module):
    def __init__(self, scale_in_forward: float | None = None):
        super().__init__()
        self.spatial = Conv2dWithConstraint(1, 4, (22, 1), max_norm=1.0, bias=False)
        self.head = nn.Linear(4 * 32, 2)
        self.scale = scale_in_forward
        with torch.no_grad():
            self.spatial.weight.mul_(3.0)  # above the max norm, so the first forward changes it

    def forward(self, x):  # (N, 22, 32) EEG channels by time
        if self.scale is not None:  # a rewrite that is not a projection: each call changes the weights again
            self.head.weight.data = self.head.weight.data * self.scale
        return self.head(torch.tanh(self.spatial(x.unsqueeze(1))).flatten(1))


def test_a_weight_constraint_applied_in_forward_is_converted_with_a_warning():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"forward assigns to a parameter's `.data` \(a weight constraint"):
        assert_converts(ConstrainedEEGNet(), (22, 32), "float64", n=3)
    assert "data" not in torch.Tensor.__dict__  # torch's own `.data` is back
    with pytest.raises(jaxjac.ConversionCheckError, match="max relative error") as failure:
        with pytest.warns(UserWarning, match="forward assigns"):
            jaxjac.convert(ConstrainedEEGNet(scale_in_forward=1.5).eval(), torch.randn(2, 22, 32))
    # Each torch call rescales again, so torch is no reference, and the error says so instead of "lowering bug".
    assert "torch disagrees with itself by" in str(failure.value) and "lowering bug" not in str(failure.value)
    assert failure.value.report["torch_batch_vs_single_rel_error"] > 0.4


class ClampsItsOwnParameter(nn.Module):
    """braindecode's SyncNet: `self.beta.data.clamp_(min=0)` inside forward, an in-place update of a parameter."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 3, 5)
        self.beta = nn.Parameter(torch.randn(3))
        self.fc = nn.Linear(3 * 12, 2)

    def forward(self, x):
        h = self.conv(x) * torch.exp(-self.beta)[:, None]
        self.beta.data.clamp_(min=0)
        return self.fc(h.flatten(1))


def test_a_parameter_updated_in_place_in_forward_is_not_an_output():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"forward assigns to a parameter's `.data`"):
        assert_converts(ClampsItsOwnParameter(), (4, 16), "float64", n=3)  # not "returns 2 values"


@pytest.mark.parametrize(
    "wrap",
    [torch.nn.DataParallel, torch.compile, lambda net: torch.nn.DataParallel(torch.compile(net))],
    ids=["DataParallel", "torch.compile", "both"],
)
def test_wrappers_that_only_forward_are_looked_through(wrap):
    """A fresh DataParallel is in train mode and prefixes `module.`: neither reaches the conversion."""
    from checkpoint_nets import SAMPLE_SHAPE, trained_net

    net = trained_net().eval()
    x = torch.randn(4, *SAMPLE_SHAPE)
    with warnings.catch_warnings():  # importing torch.compile's machinery warns about TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        wrapped = wrap(net)
    model = jaxjac.convert(wrapped, x, n_probes=2)  # the suite turns the train-mode warning into an error
    assert model.tensor_names and set(model.tensor_names) <= set(net.state_dict())  # no `module.` or `_orig_mod.`
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(model(x.numpy())), net(x).numpy(), rtol=1e-5, atol=1e-6)


class _Doubles(torch.autograd.Function):
    """2x forward; backward 3x (`honest=False`, as a straight-through estimator is) or the true 2x."""

    @staticmethod
    def forward(ctx, x, honest):
        ctx.honest = honest
        return 2.0 * x

    @staticmethod
    def backward(ctx, grad):
        return (2.0 if ctx.honest else 3.0) * grad, None


class CallsAFunction(nn.Module):
    def __init__(self, honest: bool):
        super().__init__()
        self.honest = honest
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(_Doubles.apply(x, self.honest))


def test_a_hand_written_autograd_backward_is_named_not_blamed_on_the_lowering():
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match=r"torch\.autograd\.Function `test_convert_api\._Doubles` with a hand-wr"):
        model = jaxjac.convert(CallsAFunction(honest=True).eval(), x)  # its backward is the derivative
    assert model.metadata["check"]["passed"] is True
    with pytest.warns(UserWarning, match="hand-written backward"):
        with pytest.raises(jaxjac.ConversionCheckError, match="has a hand-written autograd backward"):
            jaxjac.convert(CallsAFunction(honest=False).eval(), x)


class CleansItsInput(nn.Module):
    """tsai's TSTPlus: NaNs in the input are zeroed in place before the layers."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x.nan_to_num_(0.0)
        return self.fc(x.flatten(1))


def test_a_forward_that_edits_its_input_in_place_converts_and_is_checked():
    x = torch.randn(4, 1, 8)
    before = x.clone()
    model = jaxjac.convert(CleansItsInput().eval(), x)  # not "returns 2 values", and torch's check can run
    assert model.metadata["check"]["passed"] is True and model.output_shape == (2,)
    assert torch.equal(x, before)


class FittedFlag(nn.Module):
    """tsai's MiniRocketPlus: a one-element bool buffer says whether the model was fitted, and forward branches on it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)
        self.register_buffer("fitted", torch.tensor([True]))
        self.register_buffer("mask", torch.rand(4, 1) > 0.5)  # a bool mask stays a buffer, applied to the data

    def forward(self, x):
        if not self.fitted:
            raise RuntimeError("fit the model first")
        return (self.conv(x) * self.mask).mean(-1)


def test_a_bool_flag_buffer_forward_branches_on_converts():
    model = assert_converts(FittedFlag(), (3, 16), "float64")
    assert "mask" in model.tensor_names


class CleansByMask(nn.Module):
    """tsai's `x[torch.isnan(x)] = 0`, and nnAudio iSTFT's `x[..., self.mask] = ...` by a constant bool buffer."""

    def __init__(self, by: str):
        super().__init__()
        self.by, self.conv = by, nn.Conv1d(1, 2, 3)
        self.register_buffer("mask", torch.tensor([True, False, True, True, False, False, True, True]))

    def forward(self, x):
        x = x.clone()
        if self.by == "input":
            x[x < 0] = 0.5
        elif self.by == "input-leading-axes":
            x[:, :, x[0, 0] > 0] = -1.0
        elif self.by == "masked-select":  # band selection by a bool buffer: (N, 1, 8) -> (N, 1, 5)
            return self.conv(torch.masked_select(x, self.mask).view(x.shape[0], 1, -1) + x[..., :5]).flatten(1)
        elif self.by == "masked-select-method":
            x = x * x.masked_select(self.mask).view(x.shape[0], 1, -1).sum(-1, keepdim=True)
        else:
            x[:, :, self.mask] = x[:, :, self.mask] * 2 + x[:, :, ~self.mask].sum(-1, keepdim=True)
        return self.conv(x).flatten(1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("by", ["input", "input-leading-axes", "buffer", "masked-select", "masked-select-method"])
def test_assigning_through_a_bool_mask_converts(by, dtype):
    # A mask of the input selects a shape JAX cannot know, but one value assigned to
    # it is a select; a constant mask's positions are known while traced.
    assert_converts(CleansByMask(by), (1, 8), dtype, n=4)


class ComputesOnMaskedPositions(nn.Module):
    """`y[mask] = f(x[mask])` with `f` elementwise: a guarded log, a StudentT's variance, a scale from the input."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.linear = how, nn.Linear(8, 6)

    def forward(self, x):
        h = self.linear(x[:, 0])
        if self.how == "guarded-log":
            out = h.clone()
            out[h > 0] = torch.log(h[h > 0]) * h[h > 0] / (h[h > 0] + 1)
            return out
        if self.how == "student-t-variance":  # the mask computed afresh for each use; inf and NaN assigned
            df, scale = F.softplus(h[:, :3]) * 3, F.softplus(h[:, 3:])
            return torch.distributions.StudentT(df, h[:, :3], scale).variance
        if self.how == "scaled-by-a-0-dim-tensor":
            out = torch.zeros_like(h)
            out[h.abs() < 0.5] = torch.sqrt(0.5 - h.abs()[h.abs() < 0.5]) * h.mean()
            return out
        out = h.clone()
        if self.how == "scaled-by-its-sum-and-max":  # whole reductions of selections: masked reductions
            wide = h.abs() < 10  # never empty, where torch's max and min would fail
            out[h > 0] = h[h > 0] / h[h > 0].sum() + h[wide].max() * h[wide].amin(0, keepdim=True)
            return out
        if self.how == "centred-by-its-mean":
            out, positive = torch.zeros_like(h), h > 0
            out[positive] = h[positive] - h[positive].mean()
            return out
        if self.how == "cumulated":  # the selection's length matters
            return h * h[h > 0].cumsum(0)[-1]
        selected = h[h > 0]  # "length-read": its length is read beside the assignment
        out[h > 0] = torch.log(selected)
        return out * selected.shape[0]


MASKED_CONVERTS = ["guarded-log", "student-t-variance", "scaled-by-a-0-dim-tensor", "scaled-by-its-sum-and-max"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("how", [*MASKED_CONVERTS, "centred-by-its-mean"])
def test_computing_on_the_positions_a_mask_selects_converts(how, dtype):
    # The selection's length depends on the data; computed at every position and kept where
    # the mask holds, the numbers are the same, and the positions left out stay finite.
    assert_converts(ComputesOnMaskedPositions(how), (1, 8), dtype, n=6)


@pytest.mark.parametrize("how", ["length-read", "cumulated"])
def test_a_masked_selection_whose_length_matters_is_still_refused(how):
    with pytest.raises(jaxjac.UnsupportedOpError, match=r"shape depend on the input's values"):
        jaxjac.convert(ComputesOnMaskedPositions(how).eval(), torch.randn(2, 1, 8))


def test_a_data_mask_that_reaches_the_lowering_is_the_data_dependent_error(monkeypatch):
    # Without the masked reductions, `h[m].mean()` reaches JAX's indexing with the mask traced.
    monkeypatch.setattr(jaxjac._masked_regions, "_rewrite_reductions", lambda graph, node: None)
    with pytest.raises(jaxjac.UnsupportedOpError, match=r"aten\.index\.Tensor.* shape depend on the input's values"):
        jaxjac.convert(ComputesOnMaskedPositions("centred-by-its-mean").eval(), torch.randn(2, 1, 8))
