"""Streamed data: a generator or other iterable of dicts, checked and re-batched as it arrives.

``_StreamDataset`` never holds the source whole: each item is checked when it arrives (the
first one before ``load_data`` returns), cast and cut into batches of the requested size. A
generator can be iterated once; a re-iterable object as often as wanted (and fingerprinted).
Shuffling needs random access and is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..errors import DataError
from .blocks import _aliases, _item_mapping, _log_aliases, _renamed
from .checks import _Layout, _as_array, _check_values, _layout, _meta_of
from .dataset import Dataset, _batch_rule
from .specs import InputSpec
from .table import _owned
from .text import _shape_text


logger = logging.getLogger(__name__)


class _Stream:
    """Items of a generator (one pass) or of a re-iterable object, with the first one peeked."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self.one_shot = isinstance(iterable, Iterator)
        self._iterable = iterable
        self._iterator: Iterator[Any] | None = iterable if self.one_shot else None
        self._consumed = False
        self.first = self._peek()

    def _peek(self) -> Any:
        iterator = self._iterator if self.one_shot else iter(self._iterable)
        try:
            return next(iterator)
        except StopIteration:
            raise DataError("no samples: the data stream yielded no items") from None

    def items(self) -> Iterator[Any]:
        if not self.one_shot:
            yield from self._iterable
            return
        if self._consumed:
            raise DataError("this Dataset streams from a generator and was already iterated; "
                            "pass a list, a re-iterable object or files to iterate it again")
        self._consumed = True
        yield self.first
        yield from self._iterator


class _StreamDataset(Dataset):
    """Items streamed from a generator or an iterable; checked and re-batched as they arrive."""

    def __init__(self, stream: _Stream, specs: list[InputSpec], labels_key: str | None,
                 requested_batch: int, limit: int | None) -> None:
        self.specs = specs
        self._stream = stream
        self._labels_key = labels_key
        self._limit = limit
        self._requested_batch = requested_batch
        self.batch_size, self._drop_last = _batch_rule(specs, requested_batch)
        self.num_samples = None
        self.num_batches = None
        self._fingerprint = None
        self._cast_logged: set[tuple[str, str]] = set()
        self._aliases_logged: set[tuple[str, str]] = set()
        first = self._conform(stream.first, 0, 0)
        self.has_labels = first[2]

    def _can_fingerprint(self) -> bool:
        return not self._stream.one_shot

    def _conform(self, item: Any, number: int, first_index: int
                 ) -> tuple[_Layout, dict[str, np.ndarray], bool]:
        where = f" in item {number}"
        mapping = _item_mapping(item, self.specs, f"item {number} of the data stream")
        arrays = {str(k): _as_array(str(k), v, where) for k, v in mapping.items()}
        renames = _aliases(arrays, self.specs, self._labels_key)
        if renames:
            _log_aliases(renames, self._aliases_logged)
            arrays = _renamed(arrays, renames)
        layout = _layout(_meta_of(arrays), self.specs, self._labels_key, where, True)
        for key in layout.samples:
            arrays[key] = arrays[key][np.newaxis]
        for spec in self.specs:
            _check_values(spec, arrays[spec.name], where, first_index)
            found = arrays[spec.name].dtype
            if found != spec.dtype and (spec.name, found.name) not in self._cast_logged:
                self._cast_logged.add((spec.name, found.name))
                logger.info("input %r: casting %s data to %s", spec.name, found.name,
                            spec.dtype.name)
        return layout, arrays, layout.labels

    def batches(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        keys = self.input_names + ([self._labels_key] if self.has_labels else [])
        pending: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        buffered = seen = 0
        reference: _Layout | None = None
        for number, item in enumerate(self._stream.items()):
            layout, arrays, labelled = self._conform(item, number, seen)
            if labelled != self.has_labels:
                state = "has" if labelled else "has no"
                raise DataError(f"labels {self._labels_key!r} in item {number}: the item "
                                f"{state} labels, unlike item 0")
            reference = self._check_stackable(reference, layout, number)
            take = layout.count
            if self._limit is not None:
                take = min(take, self._limit - seen)
            for key in keys:
                pending[key].append(arrays[key][:take])
            buffered += take
            seen += take
            while buffered >= self.batch_size:
                yield self._emit(pending, self.batch_size)
                buffered -= self.batch_size
            if self._limit is not None and seen >= self._limit:
                break  # pull no more items from the stream
        if buffered and not self._drop_last:
            yield self._emit(pending, buffered)
        elif buffered:
            logger.warning("dropping the last %d samples: the model takes batches of exactly %d",
                           buffered, self.batch_size)
        if seen == 0:
            raise DataError("no samples: the data stream yielded 0 samples")

    def _check_stackable(self, reference: _Layout | None, layout: _Layout,
                         number: int) -> _Layout:
        if self.batch_size == 1 or layout.count == 0:
            return reference if reference is not None else layout
        if reference is None:
            return layout
        for name in self.input_names:
            if layout.trailing[name] != reference.trailing[name]:
                raise DataError(
                    f"input {name!r} in item {number}: samples have shape "
                    f"{_shape_text(layout.trailing[name])}, earlier ones "
                    f"{_shape_text(reference.trailing[name])}; they cannot be stacked into "
                    f"batches of {self.batch_size}; pad them to one shape or use batch_size=1")
        return reference

    def _emit(self, pending: dict[str, list[np.ndarray]], size: int
              ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        out: dict[str, np.ndarray] = {}
        for key, parts in pending.items():
            joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
            out[key], rest = joined[:size], joined[size:]
            parts[:] = [rest] if len(rest) else []
        labels = np.array(out.pop(self._labels_key)) if self.has_labels else None
        inputs = {s.name: _owned(out[s.name], s.dtype) for s in self.specs}
        return inputs, labels

    def _derive(self, specs: list[InputSpec], batch_size: int | None, limit: int | None,
                shuffle: bool, seed: int) -> Dataset:
        if shuffle:
            raise DataError("shuffle needs data with random access (arrays, a list or files); "
                            "this Dataset streams from an iterable")
        if self._limit is not None:
            limit = self._limit if limit is None else min(limit, self._limit)
        requested = batch_size if batch_size is not None else self._requested_batch
        return _StreamDataset(self._stream, specs, self._labels_key, requested, limit)
