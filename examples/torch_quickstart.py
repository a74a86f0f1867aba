"""Quantize a PyTorch model in one call: train a small CNN on sklearn's digits, then int8 it.

Run: ``python examples/torch_quickstart.py`` (needs ``pip install onnxq-torch scikit-learn``).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import onnxq


class DigitsCnn(nn.Module):
    """8x8 grey digits -> 10 logits: conv + batch-norm + pooling + dense."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(32 * 2 * 2, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image).flatten(1))


def main() -> None:
    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # [1797, 1, 8, 8]
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]

    model = DigitsCnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_loader = DataLoader(TensorDataset(images[train], labels[train]), batch_size=128, shuffle=True)
    start = time.perf_counter()
    for _ in range(6):
        for x, y in train_loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    print(f"trained in {time.perf_counter() - start:.1f} s")

    calibration = DataLoader(TensorDataset(images[train[:256]], labels[train[:256]]), batch_size=32)
    evaluation = DataLoader(TensorDataset(images[test], labels[test]), batch_size=32)
    result = onnxq.quantize(model, calibration=calibration, evaluation=evaluation,
                            example_inputs=images[:2])  # the one call
    report = result.report
    print(f"float accuracy: {report.float_accuracy:.4f}")
    print(f"int8 accuracy:  {report.quant_accuracy:.4f}")
    print(f"cosine to float: {report.outputs[0].cosine:.4f}")
    print(f"size: {report.float_size_bytes / 1024:.1f} KiB -> {report.quant_size_bytes / 1024:.1f} KiB "
          f"({report.size_ratio:.2f}x smaller)")
    if report.latency is not None:
        print(f"latency per batch: {report.latency.float_ms:.3f} ms float, {report.latency.quant_ms:.3f} ms int8 "
              f"({report.latency.speedup:.2f}x)")
    for note in report.notes[:2]:
        print(f"note: {note}")
    assert np.isfinite(report.quant_accuracy)


if __name__ == "__main__":
    main()
