"""Random access to the samples of a list of blocks, laid out against the model inputs.

``_Table`` checks every block's layout once (names, dtypes, shapes, counts, labels in all
blocks or none), numbers the samples across blocks and loads one block's arrays on request;
``_take`` and ``_owned`` cut rows out of them without keeping views into mapped files.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .blocks import _Block, _aliased_block
from .checks import _layout
from .readers_numpy import _RowReader
from .specs import InputSpec
from .text import _shape_text


class _Table:
    """Random access to the samples of a list of blocks, laid out against the model inputs."""

    def __init__(self, blocks: list[_Block], specs: list[InputSpec], labels_key: str | None,
                 origin: str) -> None:
        logged: set[tuple[str, str]] = set()
        self.blocks = blocks = [_aliased_block(b, specs, labels_key, logged) for b in blocks]
        self.specs = specs
        self.labels_key = labels_key
        self.origin = origin
        self.layouts = [_layout(b.meta, specs, labels_key, b.where, b.allow_sample)
                        for b in blocks]
        with_labels = [lay.labels for lay in self.layouts]
        if any(with_labels) and not all(with_labels):
            first_without = blocks[with_labels.index(False)].where
            raise DataError(f"labels {labels_key!r}: some parts of {origin} have labels and "
                            f"others do not (none{first_without})")
        self.has_labels = bool(with_labels) and all(with_labels)
        counts = [lay.count for lay in self.layouts]
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.total = int(self.offsets[-1])
        if self.total == 0:
            raise DataError(f"no samples: {origin} holds 0 samples")

    def check_uniform(self, batch_size: int) -> None:
        """Samples stacked into one batch must share their shape per input."""
        if batch_size == 1:
            return
        for spec in self.specs:
            ref: tuple[tuple[int, ...], str] | None = None
            for block, lay in zip(self.blocks, self.layouts):
                if lay.count == 0:
                    continue
                shape = lay.trailing[spec.name]
                if ref is None:
                    ref = (shape, block.where)
                elif shape != ref[0]:
                    raise DataError(
                        f"input {spec.name!r}: samples have different shapes "
                        f"({_shape_text(ref[0])}{ref[1]}, {_shape_text(shape)}{block.where}) "
                        f"and cannot be stacked into batches of {batch_size}; pad them to one "
                        "shape or use batch_size=1")

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        """The arrays of block ``index`` (inputs, then labels), each with a batch axis."""
        raw = self.blocks[index].load()
        keys = [s.name for s in self.specs]
        if self.has_labels:
            keys.append(self.labels_key)
        out = {}
        samples = self.layouts[index].samples
        for key in keys:
            array = raw[key]
            if key in samples or not isinstance(array, (np.ndarray, _RowReader)):
                array = np.asarray(array)
            out[key] = array[np.newaxis] if key in samples else array
        return out

    def block_of(self, indices: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, indices, side="right") - 1


def _take(array: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Rows ``local`` of ``array``; a slice (no copy, mmap-friendly) when they are contiguous."""
    if len(local) and (len(local) == 1 or bool(np.all(np.diff(local) == 1))):
        return array[int(local[0]):int(local[-1]) + 1]
    return array[local]


def _owned(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A writable C-contiguous array of ``dtype`` that shares no memory with the source."""
    out = np.ascontiguousarray(rows, dtype=dtype)
    if out is rows or not out.flags.owndata or not out.flags.writeable:
        out = out.copy()
    return out
