"""A torch.export model (`model.pt2`) in the repository is found, loaded and run like a
TorchScript one, with a dynamic batch dimension."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from services.worker.repository import scan
from services.worker.runner import ModelRunner


class Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2.0).sum(dim=1, keepdim=True)


def test_exported_model_serves_batches_of_any_size(tmp_path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(Scale(), (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    model_dir = tmp_path / "scale"
    (model_dir / "3").mkdir(parents=True)
    torch.export.save(program, str(model_dir / "3" / "model.pt2"))
    (model_dir / "config.pbtxt").write_text(
        "max_batch_size: 16\n"
        'input [ { name: "x" data_type: TYPE_FP32 dims: [4] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [1] } ]\n'
    )

    (entry,) = scan(tmp_path)
    assert (entry.config.name, entry.version, entry.config.platform) == (
        "scale",
        "3",
        "torch_export",
    )
    runner = ModelRunner(entry.config, entry.version, entry.model_path, torch.device("cpu"))
    runner.warm_up()
    for rows in (1, 5, 16):
        x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
        (y,) = runner.run([x])
        np.testing.assert_allclose(y, (x * 2).sum(axis=1, keepdims=True))
    assert set(runner.service_times) == {1, 5, 16}
    runner.close()
