"""onnxq-torch: the PyTorch adapter of onnxq (found through the ``onnxq.adapters`` entry point)."""

from .adapter import TorchAdapter
from .data import TorchFeeds, to_feeds
from .export import EXPORT_OPTIONS, export_module
from .files import LoadedModel, load_file

__all__ = [
    # the adapter
    "TorchAdapter",
    # building blocks
    "EXPORT_OPTIONS", "LoadedModel", "TorchFeeds", "export_module", "load_file", "to_feeds",
]
