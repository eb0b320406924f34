"""Averages over seeds: mean ± sd of a study's runs, per capacity cell or per rerun."""

from __future__ import annotations

import math
import statistics

from analysis import record


def finite(values) -> list[float]:
    """The values that are numbers and finite (a diverged or unfinished run has none)."""
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def mean_sd(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_sd_text(values: list[float], digits: int = 4) -> str:
    """'0.8123 ± 0.0100'; '—' when there is no finite value."""
    kept = finite(values)
    if not kept:
        return "—"
    mean, sd = mean_sd(kept)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def seed_groups(trials: list[dict]) -> dict[tuple[str, int, str], list[dict]]:
    """A capacity study's summary trials by (regulariser value [and tuned value], param_count, cell), sorted so."""
    cells: dict[tuple[str, int, str], list[dict]] = {}
    for t in trials:
        tags = t.get("tags") or {}
        tuned = tags.get(record.TAG_TUNE, "none")  # a tuned study: each value's seeds apart
        group = tags.get(record.TAG_REGULARISER, "none") + ("" if tuned == "none" else f" {tuned}")
        key = (group, t.get("param_count") or 0, tags.get(record.TAG_CELL, "?"))
        cells.setdefault(key, []).append(t)
    return dict(sorted(cells.items()))


def capacity_table(trials: list[dict]) -> str:
    """Final val_acc and train_acc per cell (and regulariser value), mean ± sd over seeds."""
    lines = [f"  {'regulariser':<22} {'cell':<14} {'params':>11} {'seeds':>5} {'val_acc':>15} {'train_acc':>15}"]
    for (reg, count, cell), runs in seed_groups(trials).items():
        val = mean_sd_text([r.get("val_acc") for r in runs], 3)
        train = mean_sd_text([r.get("train_acc") for r in runs], 3)
        lines.append(f"  {reg:<22} {cell:<14} {count:>11,} {len(runs):>5} {val:>15} {train:>15}")
    return "final epoch, mean ± sd over seeds:\n" + "\n".join(lines)
