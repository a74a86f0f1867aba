"""Graph passes that are float-equivalent or reduce the quantization error.

Each pass lives in its own module with a contract (what it changes, what it needs, when it is
float-equivalent) and returns a :class:`PassRecord` that goes into the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PassRecord:
    """What one pass did, for the report.

    Attributes:
        name: the pass ("equalization", "bias_correction", "adaptive_rounding", ...).
        summary: one sentence for the user (what changed, what it bought).
        changed: names of the nodes the pass changed.
        details: pass-specific figures (JSON-serialisable).
        seconds: wall time of the pass.
    """

    name: str
    summary: str
    changed: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
