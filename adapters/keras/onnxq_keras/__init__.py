"""onnxq adapter for TF/Keras: export Keras 3 models, ``tf.function``s and SavedModels to ONNX
through tf2onnx, and turn ``tf.data`` / ``keras.utils.PyDataset`` / tensors into onnxq feeds.

Installed, it is found by onnxq through the entry point ``onnxq.adapters: keras``; importing this
package does not import TensorFlow (that happens on first use).
"""

from .adapter import KerasAdapter
from .export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, ExportOptions

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "ExportOptions", "KerasAdapter"]
__version__ = "0.1.0"
