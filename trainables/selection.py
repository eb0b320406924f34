"""Which epoch of a run is its best: one rule for training, the MLflow summary and the analysis.

Selection uses validation only: the best epoch has the highest finite val_acc, and among equal
values the earliest one wins (a later epoch must beat it, not just match it).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable


def improves(val_acc, best_val_acc: float) -> bool:
    """Whether an epoch with ``val_acc`` replaces a best epoch of ``best_val_acc`` (-inf: none yet)."""
    return (
        isinstance(val_acc, numbers.Real)
        and not isinstance(val_acc, bool)
        and math.isfinite(val_acc)
        and val_acc > best_val_acc
    )


def best_record(history: Iterable[dict]) -> dict | None:
    """The best epoch's record of a history (records with "epoch" and "val_acc"); None when no
    epoch has a finite val_acc."""
    best, best_val_acc = None, -math.inf
    for record in sorted(history, key=lambda r: r["epoch"]):
        if improves(record.get("val_acc"), best_val_acc):
            best, best_val_acc = record, record["val_acc"]
    return best
