"""Blocks: runs of samples of a re-iterable source, described by metadata and loaded on demand.

A ``_Block`` holds where its data came from, the raw dtype and shape per key (read without
loading the arrays) and a loader. This module builds blocks from in-memory dicts and list items,
and renames data keys that feed an input under another name: ``label`` as ``labels`` (and the
other way round), and the one array of a one-input model under that input's name.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from .checks import Meta, _as_array, _meta_of
from .specs import InputSpec


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Block:
    """A run of samples of a re-iterable source: its raw metadata and a loader for its arrays."""

    where: str                                # " in item 3", " in '/data/a.npz'", ""
    meta: Meta                                # raw dtype / shape per key, read without loading
    load: Callable[[], Mapping[str, Any]]     # raw arrays (possibly memory-mapped) per key
    allow_sample: bool                        # arrays may lack the batch axis (one sample)


_LABEL_KEYS = ("labels", "label")  # either one holds labels when the labels key is one of them


def _aliases(keys: Iterable[str], specs: list[InputSpec], labels_key: str | None) -> dict[str, str]:
    """Data keys to read under another name: ``label`` as the labels key ``labels`` (and the
    other way round), and the one array of a one-input model under that input's name
    (``arr_0`` of an ``.npz``, ``image`` for an input called ``input_layer``)."""
    keys = list(keys)
    names = {s.name for s in specs}
    renames: dict[str, str] = {}
    if labels_key in _LABEL_KEYS and labels_key not in keys:
        other = next((k for k in _LABEL_KEYS if k != labels_key and k in keys and k not in names), None)
        if other is not None:
            renames[other] = labels_key
    if len(specs) == 1 and specs[0].name not in keys:
        rest = [k for k in keys if k not in renames and k != labels_key]
        if len(rest) == 1 and not re.search(r"[/\\]", rest[0]):  # never a path-like archive member
            renames[rest[0]] = specs[0].name
    return renames


def _renamed(mapping: Mapping[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    return {renames.get(k, k): v for k, v in mapping.items()}


def _log_aliases(renames: dict[str, str], logged: set[tuple[str, str]]) -> None:
    for old, new in renames.items():
        if (old, new) not in logged:
            logged.add((old, new))
            logger.debug("data key %r is read as %r", old, new)


def _aliased_block(block: _Block, specs: list[InputSpec], labels_key: str | None,
                   logged: set[tuple[str, str]]) -> _Block:
    """``block`` with its keys renamed by :func:`_aliases` (itself when nothing is renamed)."""
    renames = _aliases(block.meta, specs, labels_key)
    if not renames:
        return block
    _log_aliases(renames, logged)
    load = block.load
    return _Block(where=block.where, meta=_renamed(block.meta, renames),
                  load=lambda: _renamed(load(), renames), allow_sample=block.allow_sample)


def _memory_block(mapping: Mapping[str, Any], where: str, allow_sample: bool) -> _Block:
    arrays = {str(k): _as_array(str(k), v, where) for k, v in mapping.items()}
    return _Block(where=where, meta=_meta_of(arrays), load=lambda: arrays,
                  allow_sample=allow_sample)


def _item_mapping(item: Any, specs: list[InputSpec], what: str) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    if isinstance(item, np.ndarray) and len(specs) == 1:
        return {specs[0].name: item}
    hint = " or an array (one-input model)" if len(specs) == 1 else ""
    raise DataError(f"{what} is a {type(item).__name__}; expected a dict "
                    f"{{input_name: array}}{hint}")
