"""``Dataset``: re-iterable, checked batches of model inputs; the random-access kind.

A ``Dataset`` yields ``{input_name: array}`` batches (cast, C-contiguous, owning their memory)
with optional labels, and a sha256 fingerprint of the data independent of the batch size.
``_IndexedDataset`` serves sources with random access (arrays, lists, files): it applies
``limit`` and ``shuffle`` as a selection of sample indices, follows the model's fixed batch
dimension (``_batch_rule``) and scans every selected value before the first batch, one block
and one chunk at a time.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import DataError
from .checks import _check_values, _needs_range_check
from .specs import InputSpec
from .table import _Table, _owned, _take


logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8

_SCAN_CHUNK_BYTES = 32 << 20  # value checks read at most this much of one input at a time


def _batch_rule(specs: list[InputSpec], requested: int) -> tuple[int, bool]:
    """The batch size to use and whether a short last batch must be dropped."""
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)
             and s.shape[0] > 0}
    if len(fixed) > 1:
        raise DataError(f"the model's inputs fix different batch sizes ({sorted(fixed)}); "
                        "onnxq cannot batch data for it")
    if not fixed:
        return requested, False
    size = fixed.pop()
    if size != requested:
        logger.info("the model fixes the batch dimension to %d: using batch_size=%d "
                    "instead of %d", size, size, requested)
    return size, size > 1


class Dataset:
    """Re-iterable batches of ``{input_name: np.ndarray}``, first axis = samples; optional labels.

    Create one with :func:`load_data`. Every batch holds ``batch_size`` samples (the last one
    may hold fewer), cast to the model's dtypes, C-contiguous, ready for ONNX Runtime.

    Attributes:
        specs: the model inputs the data was checked against.
        batch_size: samples per batch.
        num_samples: samples in total, ``None`` when unknown (streamed source).
        num_batches: batches in total, ``None`` when unknown.
        has_labels: the batches carry labels.
        input_names: the model input names, in graph order.
    """

    specs: list[InputSpec]
    batch_size: int
    num_samples: int | None
    num_batches: int | None
    has_labels: bool

    def __init__(self) -> None:
        raise TypeError("create a Dataset with onnxq.data.load_data")

    @property
    def input_names(self) -> list[str]:
        """The model input names, in graph order."""
        return [s.name for s in self.specs]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield the batches of inputs (without labels)."""
        for inputs, _ in self.batches():
            yield inputs

    def batches(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Yield ``(inputs, labels)`` per batch; labels is ``None`` without labels."""
        raise NotImplementedError

    def fingerprint(self) -> str | None:
        """A sha256 of the data as the model sees it, or ``None`` for a one-shot generator.

        The hash covers the selected samples in order (after ``limit`` and ``shuffle``), their
        dtypes and shapes and the labels; it does not depend on the batch size.
        """
        if self._fingerprint is None and self._can_fingerprint():
            self._fingerprint = _hash_batches(self.specs, self.batches())
        return self._fingerprint

    def __repr__(self) -> str:
        return (f"{type(self).__name__.lstrip('_')}(inputs={self.input_names}, "
                f"num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"has_labels={self.has_labels})")

    # private
    _fingerprint: str | None = None
    _requested_batch: int = DEFAULT_BATCH_SIZE

    def _can_fingerprint(self) -> bool:
        return True

    def _derive(self, specs: list[InputSpec], batch_size: int | None, limit: int | None,
                shuffle: bool, seed: int) -> Dataset:
        raise NotImplementedError


class _IndexedDataset(Dataset):
    """Samples with random access: in-memory arrays, .npz / .npy files, test-data folders."""

    def __init__(self, table: _Table, order: np.ndarray, requested_batch: int,
                 check_values: bool = True, quiet: bool = False) -> None:
        self.specs = table.specs
        self._table = table
        self._order = order
        self._requested_batch = requested_batch
        self.batch_size, self._drop_last = _batch_rule(table.specs, requested_batch)
        table.check_uniform(self.batch_size)
        self.has_labels = table.has_labels
        self.num_samples = len(order)
        if self._drop_last:
            self.num_batches = self.num_samples // self.batch_size
            if self.num_batches == 0:
                raise DataError(f"the model takes batches of exactly {self.batch_size} samples, "
                                f"but the data holds only {self.num_samples}")
            dropped = self.num_samples - self.num_batches * self.batch_size
            if dropped and not quiet:
                logger.warning("dropping the last %d samples: the model takes batches of "
                               "exactly %d", dropped, self.batch_size)
                self.num_samples -= dropped
        else:
            self.num_batches = math.ceil(self.num_samples / self.batch_size)
        self._fingerprint = None
        if not quiet:
            self._log_casts()
        if check_values:
            self._scan()

    def batches(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        cache: dict[int, dict[str, np.ndarray]] = {}
        for start in range(0, self.num_samples, self.batch_size):
            yield self._gather(self._order[start:start + self.batch_size], cache)

    def _gather(self, indices: np.ndarray, cache: dict[int, dict[str, np.ndarray]]
                ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        table = self._table
        owners = table.block_of(indices)
        cuts = np.flatnonzero(np.diff(owners)) + 1
        parts: dict[str, list[np.ndarray]] = {s.name: [] for s in self.specs}
        label_parts: list[np.ndarray] = []
        for run in np.split(np.arange(len(indices)), cuts):
            block = int(owners[run[0]])
            if block not in cache:
                cache.clear()  # one block in memory at a time
                cache[block] = table.arrays(block)
            arrays = cache[block]
            local = indices[run] - table.offsets[block]
            for spec in self.specs:
                rows = _take(arrays[spec.name], local)
                parts[spec.name].append(_owned(rows, spec.dtype))
            if self.has_labels:
                label_parts.append(np.asarray(_take(arrays[table.labels_key], local)))
        inputs = {n: p[0] if len(p) == 1 else np.concatenate(p) for n, p in parts.items()}
        labels = None
        if self.has_labels:
            labels = label_parts[0] if len(label_parts) == 1 else np.concatenate(label_parts)
            labels = np.array(labels)  # own the memory, never a view into a mapped file
        return inputs, labels

    def _scan(self) -> None:
        """Check the values of every selected sample, one block and one chunk at a time."""
        table = self._table
        if not any(s.dtype.kind in "fiu" for s in self.specs):
            return
        selected = np.sort(self._order[:self.num_samples])
        owners = table.block_of(selected)
        cuts = np.flatnonzero(np.diff(owners)) + 1
        for run in np.split(selected, cuts):
            block = int(table.block_of(run[:1])[0])
            arrays = table.arrays(block)
            where = table.blocks[block].where
            local = run - table.offsets[block]
            for spec in self.specs:
                array = arrays[spec.name]
                if not (spec.dtype.kind == "f" or _needs_range_check(array.dtype, spec.dtype)):
                    continue
                row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64))
                                * array.dtype.itemsize)
                step = max(1, _SCAN_CHUNK_BYTES // row_bytes)
                for begin in range(0, len(local), step):
                    chunk = local[begin:begin + step]
                    _check_values(spec, np.asarray(_take(array, chunk)), where, 0,
                                  ids=run[begin:begin + step])

    def _log_casts(self) -> None:
        for spec in self.specs:
            found = {lay_block.meta[spec.name][0] for lay_block in self._table.blocks}
            for dtype in sorted(found - {spec.dtype}, key=str):
                logger.info("input %r: casting %s data to %s", spec.name, dtype.name,
                            spec.dtype.name)

    def _derive(self, specs: list[InputSpec], batch_size: int | None, limit: int | None,
                shuffle: bool, seed: int) -> Dataset:
        order = self._order[:self.num_samples]
        table, recheck = self._table, specs != self.specs
        if recheck:
            table = _Table(table.blocks, specs, table.labels_key, table.origin)
            if table.total != self._table.total:
                raise DataError("the Dataset's samples do not map onto this model's inputs "
                                "the same way; load the data again for this model")
        order = _select(order, limit, shuffle, seed)
        requested = batch_size if batch_size is not None else self._requested_batch
        return _IndexedDataset(table, order, requested, check_values=recheck)


def _select(order: np.ndarray, limit: int | None, shuffle: bool, seed: int) -> np.ndarray:
    if shuffle:
        order = order[np.random.default_rng(seed).permutation(len(order))]
    if limit is not None:
        order = order[:limit]
    return order


def _hash_batches(specs: list[InputSpec],
                  batches: Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]) -> str:
    """sha256 over the data in sample order, independent of where batches are cut."""
    keys = [s.name for s in specs]
    digests = {k: hashlib.sha256() for k in keys + ["\0labels"]}
    shapes: dict[str, list[list[Any]]] = {k: [] for k in digests}
    for inputs, labels in batches:
        arrays = dict(inputs)
        if labels is not None:
            arrays["\0labels"] = labels
        for key, array in arrays.items():
            if array.dtype == object:
                digests[key].update(repr(array.tolist()).encode())
            else:
                digests[key].update(np.ascontiguousarray(array).tobytes())
            runs = shapes[key]
            signature = (array.dtype.str, tuple(array.shape[1:]))
            if runs and runs[-1][0] == signature:
                runs[-1][1] += len(array)
            else:
                runs.append([signature, len(array)])
    total = hashlib.sha256(b"onnxq.feeds/1")
    for key, digest in digests.items():
        total.update(repr((key, shapes[key])).encode())
        total.update(digest.digest())
    return total.hexdigest()
