"""A ResNet-50-sized image classifier built here (random weights, fixed seed), for the GPU
benchmark: bottleneck blocks [3, 4, 6, 3], widths 256 to 2048, about 25.6 M parameters and
4.1 GFLOP per 224x224 image, like the published ResNet-50.

It takes UINT8 images [B, 3, 224, 224] and normalises them itself, as a production image model
does: clients then send a quarter of the bytes that FP32 pixels would take.

    python -m bench.models OUT_DIR    # writes OUT_DIR/resnet50.pt2 (torch.export, dynamic batch)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

MAX_BATCH = 64


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet50Like(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        layers: list[nn.Module] = []
        cin = 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for index in range(blocks):
                layers.append(Bottleneck(cin, width, stride if index == 0 else 1))
                cin = width * 4
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def export_resnet50(out: Path, device: str = "cpu", half: bool = False) -> Path:
    """Export for one device (and precision): an exported graph keeps the device and dtypes it
    was traced with, so a GPU deployment exports on the GPU, in FP16 if it serves FP16."""
    torch.manual_seed(0)
    model = ResNet50Like().eval().to(device)
    if half:
        model = model.half()
    example = torch.zeros(2, 3, 224, 224, dtype=torch.uint8, device=device)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "resnet50.pt2"
    torch.export.save(program, str(path))
    return path


if __name__ == "__main__":
    print(export_resnet50(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
