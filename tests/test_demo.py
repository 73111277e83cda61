"""`jaxjac demo` and the bundled example it runs on."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

import jaxjac
from jaxjac.cli import demo
from jaxjac.example import example_path, load_example_bands, load_example_data, load_example_model


def run_cli(argv: list[str]) -> int:
    """Run `jaxjac ARGV` through the root CLI, or through demo's own parser if the root is not written yet."""
    try:
        from jaxjac.cli import main

        return main(argv)
    except SystemExit as error:  # the root placeholder raises; fall back to demo's register/run
        if "not yet" not in str(error.code):
            raise
    parser = argparse.ArgumentParser(prog="jaxjac")
    demo.register(parser.add_subparsers(dest="command", required=True))
    return demo.run(parser.parse_args(argv))


def test_example_files_are_small_and_plain() -> None:
    X, y = load_example_data()
    assert X.shape == (300, 1, 224) and X.dtype == np.float32
    assert y.shape == (300,) and set(np.unique(y)) == {0, 1, 2}
    bands = load_example_bands()
    assert sorted(bands) == [0, 1, 2] and all(0 <= b < 224 for v in bands.values() for b in v)
    info = json.loads(example_path("bands.json").read_text())
    assert info["test_accuracy"] >= 0.9, "the shipped model should have learned the planted bands"
    total = sum(example_path(n).stat().st_size for n in ("spectra_X.npy", "spectra_y.npy", "spectra_cnn.safetensors"))
    assert total < 1_000_000


def test_example_model_is_eval_and_accurate() -> None:
    import torch

    net = load_example_model()
    assert not any(m.training for m in net.modules())
    X, y = load_example_data()
    with torch.no_grad():
        logits = net(torch.from_numpy(X))
    assert logits.shape == (300, 3)
    assert (logits.argmax(1).numpy() == y).mean() >= 0.9


def test_demo_prints_agreement_and_planted_bands(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    out = tmp_path / "demo"
    assert run_cli(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "conversion check passed" in text
    agreement = re.search(r"agreement: max relative error (\S+) .*: OK", text)
    assert agreement, text
    assert float(agreement.group(1)) <= 1e-4
    assert "(300, 3, 1, 224)" in text
    # The trained model's saliency finds every planted band; a regression would show here.
    assert len(re.findall(r"found 2/2 within", text)) == 3, text

    deletion = re.search(r"accuracy (\S+), vs (\S+) \+- (\S+) for random bands", text)
    assert deletion, text
    ranked, random_mean, random_std = map(float, deletion.groups())
    assert ranked < random_mean - 2 * random_std, "deleting the top bands must hurt far more than random ones"
    assert "model randomisation" in text and "(passed" in text
    report = json.loads((out / "importance.json").read_text())
    assert report["schema"] == "jaxjac.importance/1" and report["n_samples"] == 300
    for name in ("importance", "importance-heatmap", "importance-curves"):
        for suffix in (".png", ".svg"):
            assert (out / f"{name}{suffix}").stat().st_size > 1000

    J = np.load(out / "J.npy")
    assert J.shape == (300, 3, 1, 224)
    assert (out / "spectra_cnn.jaxjac").stat().st_size > 0
    # Refuses to overwrite without --force, naming the file; the CLI turns the error into exit code 2.
    with pytest.raises(jaxjac.JaxjacError, match=r"J\.npy already exists; pass --force"):
        parser = argparse.ArgumentParser(prog="jaxjac")
        demo.register(parser.add_subparsers(dest="command", required=True))
        demo.run(parser.parse_args(["demo", "--out", str(out)]))


def test_demo_help_describes_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="jaxjac")
    demo.register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["demo", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "bundled example" in text and "--out DIR" in text


def test_a_float32_kink_is_told_from_a_wrong_row_by_torch_in_float64() -> None:
    net = load_example_model()
    X = load_example_data()[0][:4]
    truth = demo.torch_jacobians(load_example_model().double(), X.astype(np.float64))
    flipped = truth.copy()
    flipped[:, 0, 0, 100] += 0.1  # rows off by a whole term, in float64 too: a lowering bug
    scale = np.abs(truth).max()
    assert "at a float32 kink" in demo._kinks_in_float32(net, X, truth.astype(np.float32), scale, 1e-4)
    assert demo._kinks_in_float32(net, X, flipped.astype(np.float32), scale, 1e-4) is None
    not_a_number = truth.astype(np.float32)
    not_a_number[0, 0, 0, 0] = np.nan  # a NaN row is never a kink
    assert demo._kinks_in_float32(net, X, not_a_number, scale, 1e-4) is None
