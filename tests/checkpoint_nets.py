"""A small 1D CNN and writers for every checkpoint format `jaxjac convert` reads.

`NET_SOURCE` is the same class as source text, to write into a temporary
directory for `--arch` tests (which import it from the current directory).
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

SAMPLE_SHAPE = (1, 32)


class Net(torch.nn.Module):
    """Conv1d+BN+ReLU+MaxPool+Linear: (N, channels, 32) -> (N, n_classes)."""

    def __init__(self, channels: int = 1, n_classes: int = 3, hidden: int = 4):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv1d(channels, hidden, 5, padding=2),
            torch.nn.BatchNorm1d(hidden),
            torch.nn.ReLU(),
            torch.nn.MaxPool1d(2),
        )
        self.head = torch.nn.Linear(hidden * 16, n_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


NET_SOURCE = "import torch\n\n\n" + inspect.getsource(Net)


def trained_net(n_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    """A `Net` in eval mode with non-trivial BatchNorm statistics, as after training."""
    torch.manual_seed(seed)
    net = Net(n_classes=n_classes).eval()
    with torch.no_grad():
        bn = net.features[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    return net


def write_arch_module(directory: Path, name: str) -> str:
    """Write `NET_SOURCE` as `directory/name.py`; returns the `--arch` spec `name:Net`."""
    (directory / f"{name}.py").write_text(NET_SOURCE)
    return f"{name}:Net"


def write_checkpoints(net: torch.nn.Module, directory: Path) -> dict[str, Path]:
    """Save `net` in every supported format (and a few unsupported ones) under `directory`."""
    x = torch.randn(2, *SAMPLE_SHAPE)
    sd = net.state_dict()
    paths = {
        name: directory / name
        for name in (
            "scripted.pt",
            "traced.pt",
            "dynamic.pt2",
            "fixed.pt2",
            "state_dict.pt",
            "nested_state_dict.pt",
            "nested_model_state_dict.pt",
            "nested_model.pt",
            "data_parallel.pt",
            "pickled.pt",
            "lightning.safetensors",
        )
    }
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users still have such files
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(net).save(str(paths["scripted.pt"]))
        torch.jit.trace(net, x).save(str(paths["traced.pt"]))
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: batch},)), paths["dynamic.pt2"])
    torch.export.save(torch.export.export(net, (x,)), paths["fixed.pt2"])
    torch.save(sd, paths["state_dict.pt"])
    torch.save({"state_dict": sd, "epoch": 7}, paths["nested_state_dict.pt"])
    torch.save({"model_state_dict": sd, "optimizer_state_dict": {}, "epoch": 7}, paths["nested_model_state_dict.pt"])
    torch.save({"model": sd}, paths["nested_model.pt"])
    torch.save({f"module.{k}": v for k, v in sd.items()}, paths["data_parallel.pt"])
    torch.save(net, paths["pickled.pt"])
    # A Lightning module's weights (under `model.`), as safetensors.torch.save_file writes them.
    save_file({f"model.{k}": v.contiguous() for k, v in sd.items()}, paths["lightning.safetensors"], {"format": "pt"})
    return paths
