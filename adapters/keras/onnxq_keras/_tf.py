"""TensorFlow, imported lazily and quietly (onnxq loads every adapter; torch users must not pay
for a TensorFlow import)."""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

from onnxq.errors import AdapterError


def tf() -> ModuleType:
    """The ``tensorflow`` module; on first import its C++ logging and the oneDNN banner are
    silenced (``setdefault``: a value the user set wins)."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow
    except ImportError as exc:  # the adapter is installed but its framework is not
        raise AdapterError("onnxq-keras needs TensorFlow: pip install tensorflow-cpu "
                           f"(or tensorflow) [{exc}]") from exc
    return tensorflow


def keras() -> ModuleType:
    tf()
    import keras as keras_module

    return keras_module


def loaded() -> bool:
    """True once the user's process has imported TensorFlow or Keras: only then can an object
    be a Keras model or a tf.data pipeline, so nothing needs importing to answer "no"."""
    return "tensorflow" in sys.modules or "keras" in sys.modules


def from_framework(obj: Any) -> bool:
    """True when ``obj``'s class (or a base class) is defined by tensorflow or keras."""
    for klass in type(obj).__mro__:
        root = klass.__module__.split(".")[0]
        if root in ("tensorflow", "keras", "tf_keras"):
            return True
    return False


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__
