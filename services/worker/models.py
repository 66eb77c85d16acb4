"""Writing models into a repository: the default model `tideserve up` serves on first run, and
any TorchScript file (such as the shared benchmark models) with a config derived from a probe."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

DEFAULT_MODEL = "tiny_cnn"


class TinyCNN(nn.Module):
    """A small real classifier for 28x28 grey images: two conv blocks and a linear head. Weights
    are seeded, so every fresh repository serves the same function."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.features(x).flatten(1)), dim=1)


def _config_text(
    name: str,
    input_dims: list[int],
    output_dims: list[int],
    max_batch_size: int,
    max_queue_delay_us: int,
) -> str:
    return (
        f'name: "{name}"\n'
        'platform: "pytorch_libtorch"\n'
        f"max_batch_size: {max_batch_size}\n"
        f'input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: {input_dims} }} ]\n'
        f'output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: {output_dims} }} ]\n'
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us}"
        # Clients may bound their time in the queue (tritonclient's `timeout`).
        " default_queue_policy { allow_timeout_override: true } }\n"
    )


def add_torchscript_model(
    repository: Path,
    name: str,
    model_file: Path,
    input_dims: list[int],
    *,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 0,
) -> Path:
    """Copy a TorchScript file with one FP32 input and one FP32 output into the repository as
    version 1, probing it once to learn its output dims. Returns the model directory."""
    module = torch.jit.load(str(model_file), map_location="cpu").eval()
    with torch.inference_mode():
        output = module(torch.zeros(1, *input_dims))
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, model_dir / "1" / "model.pt")
    (model_dir / "config.pbtxt").write_text(
        _config_text(name, input_dims, list(output.shape[1:]), max_batch_size, max_queue_delay_us)
    )
    return model_dir


def write_default_model(repository: Path) -> Path:
    """Create the default model in `repository` unless it is already there."""
    model_dir = repository / DEFAULT_MODEL
    if (model_dir / "config.pbtxt").exists():
        return model_dir
    torch.manual_seed(0)
    scripted = torch.jit.trace(TinyCNN().eval(), torch.zeros(1, 1, 28, 28))
    staging = repository / f".{DEFAULT_MODEL}.pt"
    repository.mkdir(parents=True, exist_ok=True)
    scripted.save(str(staging))
    add_torchscript_model(repository, DEFAULT_MODEL, staging, [1, 28, 28])
    staging.unlink()
    return model_dir
