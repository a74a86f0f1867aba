"""Progress bars for long loops (tqdm), silent unless asked for."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = False,
             unit: str = "batch") -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar on stderr when ``enabled``; otherwise yield them unchanged."""
    if not enabled:
        yield from items
        return
    with tqdm(items, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True) as bar:
        yield from bar
