"""Coverage, false-positive and classification rates of analysis/statistics.py, with many draws.

    python benchmarks/analysis_coverage.py [--draws 10000] [--seed 0]

The scenarios are tests/test_statistics.py's (the quick loop runs them with ~300-1000 draws and
checks the same bounds): interval coverage at a nominal 95% should land in [0.92, 0.98], the
val-loss onset should say "no onset" on curves that do not overfit >= 95% of the time, and curve
shapes should be classified right >= 90% of the time. Pure numpy: no training, no MLflow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from analysis.statistics import loss_onset  # noqa: E402
from tests.test_statistics import (
    SHAPE_SCENARIOS,
    TREND_SCENARIOS,
    mean_coverage,
    onset_curves,  # noqa: E402
    shape_rate,
    trend_coverage,
)


def rates(draws: int, seed: int) -> list[tuple[str, str, float, str]]:
    """(what, scenario, rate, the bound it should meet)."""
    rows = []
    for scenario in TREND_SCENARIOS:
        rows.append(("trend interval coverage", scenario, trend_coverage(scenario, draws, seed), "0.92-0.98"))
    for seeds, sd in ((3, 0.005), (3, 0.02), (2, 0.01), (10, 0.01)):
        rows.append(
            (
                "mean interval coverage",
                f"{seeds} seeds, seed sd {sd}, 1,000 val images",
                mean_coverage(seeds, sd, draws, seed=seed),
                "0.92-0.98",
            )
        )
    for kind in ("flat", "wander", "learning"):
        found = sum(loss_onset(c) is not None for c in onset_curves(kind, draws, seed))
        rows.append(("onset false positives", kind, found / draws, "<= 0.05"))
    seen = [o for o in (loss_onset(c) for c in onset_curves("onset", draws, seed)) if o is not None]
    rows.append(("onset found (true onset at 20)", "rise 0.008/epoch, sd 0.02", len(seen) / draws, ">= 0.90"))
    rows.append(("onset median epoch (true 20)", "rise 0.008/epoch, sd 0.02", float(np.median(seen)), "20 +- 2"))
    for scenario in SHAPE_SCENARIOS:
        rows.append(("shape right", scenario, shape_rate(scenario, draws, seed)[0], ">= 0.90"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'what':<32} {'scenario':<38} {'rate':>6}  bound")
    for what, scenario, rate, bound in rates(args.draws, args.seed):
        print(f"{what:<32} {scenario:<38} {rate:>6.3f}  {bound}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
