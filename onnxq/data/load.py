"""The entry points: ``load_data`` turns a source into a checked ``Dataset``; ``check_data`` looks first.

Both check the arguments, read the model inputs and dispatch the source: a ``Dataset`` is
derived (re-batched, limited, shuffled), a path goes to the file and folder readers, a dict, an
array or a list becomes in-memory blocks, and any other iterable is streamed. Sources, folder
rules and casting rules are described in :mod:`onnxq.data`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import ConfigError, DataError
from .blocks import _Block, _item_mapping, _memory_block
from .dataset import DEFAULT_BATCH_SIZE, Dataset, _IndexedDataset, _select
from .readers_folder import _path_blocks
from .specs import InputSpec, _specs_of
from .stream import _Stream, _StreamDataset
from .table import _Table
from .text import _names_text


def load_data(source: Any, model_or_specs: onnx.ModelProto | list[InputSpec], *,
              batch_size: int | None = None, limit: int | None = None, shuffle: bool = False,
              seed: int = 0, labels_key: str = "labels") -> Dataset:
    """Turn a data source into a checked ``Dataset`` of batches for the model's inputs.

    Sources, folder rules and casting rules are described in :mod:`onnxq.data`. All checks
    that can run before any work starts do: names, dtypes, shapes, sample counts, empty data,
    unreadable files and NaN / Inf values (for a stream: its first item; later items are
    checked as they arrive).

    Args:
        source: a ``Dataset``, a dict ``{input_name: array}``, a list or tuple of such dicts, a
            generator or iterable of them, a numpy array (one-input models), or a path to a
            ``.npz`` / ``.npy`` file or a folder.
        model_or_specs: the model, or its ``input_specs``.
        batch_size: samples per batch; ``None`` means 8, or the batch size of a ``Dataset``
            source. A model whose batch dimension is fixed uses that size instead.
        limit: use at most this many samples (after shuffling).
        shuffle: visit the samples in a permutation drawn from ``numpy.random.default_rng(seed)``.
            Not possible for generators and other streamed iterables.
        seed: seed of the shuffle.
        labels_key: the key that holds labels rather than an input (ignored if the model has an
            input of that name, and for a ``Dataset`` source, which keeps its labels).

    Returns:
        The checked ``Dataset``.

    Raises:
        DataError: the data does not fit the model, is empty, or cannot be read.
        ConfigError: ``batch_size`` or ``limit`` is not a positive integer.
        ModelError: the model has no inputs or a non-tensor input.
    """
    _check_arguments(batch_size, limit)
    specs = _specs_of(model_or_specs)
    if isinstance(source, Dataset):
        return source._derive(specs, batch_size, limit, shuffle, seed)
    requested = batch_size if batch_size is not None else DEFAULT_BATCH_SIZE
    key = None if any(s.name == labels_key for s in specs) else labels_key
    if isinstance(source, (list, tuple)) and not source:
        raise DataError("no samples: the data list is empty")
    blocks = _blocks_of(source, specs, key)
    if blocks is None:
        if shuffle:
            raise DataError("shuffle needs data with random access (arrays, a list or files); "
                            f"a {type(source).__name__} is streamed")
        return _StreamDataset(_Stream(source), specs, key, requested, limit)
    table = _Table(blocks[0], specs, key, blocks[1])
    order = _select(np.arange(table.total, dtype=np.int64), limit, shuffle, seed)
    return _IndexedDataset(table, order, requested)


def check_data(source: Any, model_or_specs: onnx.ModelProto | list[InputSpec], *,
               batch_size: int | None = None, limit: int | None = None, labels_key: str = "labels") -> None:
    """The checks of :func:`load_data` that read no values, for a quick look before any work.

    Names, dtypes, ranks, fixed dimensions, sample counts, labels, empty data and unreadable or
    corrupt files (headers only: a large ``.npz`` costs what its directory costs). Values
    (NaN / Inf, narrowing casts) are left to :func:`load_data`. A ``Dataset`` and streamed
    sources (generators, other iterables) are not looked at: reading them here would consume them.

    Raises:
        DataError, ConfigError, ModelError: as :func:`load_data` would for the same source.
    """
    _check_arguments(batch_size, limit)
    specs = _specs_of(model_or_specs)
    if isinstance(source, Dataset):
        return
    key = None if any(s.name == labels_key for s in specs) else labels_key
    if isinstance(source, (list, tuple)) and not source:
        raise DataError("no samples: the data list is empty")
    blocks = _blocks_of(source, specs, key)
    if blocks is None:
        return
    table = _Table(blocks[0], specs, key, blocks[1])
    order = _select(np.arange(table.total, dtype=np.int64), limit, False, 0)
    _IndexedDataset(table, order, batch_size if batch_size is not None else DEFAULT_BATCH_SIZE,
                    check_values=False, quiet=True)


def _check_arguments(batch_size: int | None, limit: int | None) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, (int, np.integer)) or batch_size < 1):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(
            limit, (int, np.integer)) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")


def _blocks_of(source: Any, specs: list[InputSpec],
               labels_key: str | None) -> tuple[list[_Block], str] | None:
    """Blocks of a random-access source, or None for a source that must be streamed."""
    if isinstance(source, (str, os.PathLike)):
        return _path_blocks(Path(source), specs, labels_key)
    if isinstance(source, Mapping):
        return [_memory_block(source, "", allow_sample=False)], "the data"
    if isinstance(source, np.ndarray):
        if len(specs) != 1:
            raise DataError(f"a single array can only feed a one-input model; this one has "
                            f"{len(specs)} inputs ({_names_text(s.name for s in specs)}): "
                            "pass a dict {input_name: array}")
        return [_memory_block({specs[0].name: source}, "", allow_sample=False)], "the data"
    if isinstance(source, (list, tuple)):
        blocks = []
        for number, item in enumerate(source):
            mapping = _item_mapping(item, specs, f"item {number} of the data list")
            blocks.append(_memory_block(mapping, f" in item {number}", allow_sample=True))
        return blocks, "the data list"
    if isinstance(source, (bytes, bytearray)) or not isinstance(source, Iterable):
        raise DataError(f"unsupported data source of type {type(source).__name__}: expected a "
                        "dict, a list of dicts, an iterable, an array, a Dataset or a path")
    return None
