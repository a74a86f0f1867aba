"""Re-create the demo model and data shipped in examples/data/ (needs torch and scikit-learn).

A small CNN (conv + batch-norm + pooling + dense) trained on scikit-learn's 8x8 digits
(1797 real scanned digits), exported to ONNX with a dynamic batch axis, plus calibration and
evaluation sets as .npz files whose keys are the model's input names (``labels`` holds labels).

    .venv/bin/python examples/make_digits_model.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

HERE = Path(__file__).resolve().parent / "data"


class DigitsCNN(nn.Module):
    """Two conv blocks and a two-layer classifier for 1x8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


def main() -> None:
    torch.manual_seed(0)
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in [0, 1]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1297], order[1297:]

    model = DigitsCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    for _ in range(30):
        for batch in torch.randperm(len(x)).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(images[test])).argmax(1).numpy() == labels[test]).mean()
    print(f"float test accuracy: {accuracy:.4f}")

    HERE.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.from_numpy(images[:1]),), HERE / "digits_cnn.onnx", input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    np.savez_compressed(HERE / "digits_calib.npz", image=images[train[:256]], labels=labels[train[:256]])
    np.savez_compressed(HERE / "digits_eval.npz", image=images[test], labels=labels[test])
    for path in sorted(HERE.iterdir()):
        print(f"{path.relative_to(HERE.parent.parent)}: {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
