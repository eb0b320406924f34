"""What a study's seed count can resolve, and where the interpolation threshold lies.

Minimum detectable difference (MDD): the smallest true difference between two sizes' mean final
val_acc that a two-sided Welch/Student test at level alpha finds with probability ``power``, when
each size has n seeds with sd sigma:

    MDD = (t(1 - alpha/2, df) + t(power, df)) * sigma * sqrt(2 / n),   df = 2n - 2

(the usual normal-approximation formula with t quantiles for small n; Cohen 1988, ch. 2). With
n = 3 and sigma = 0.008 it is 0.024; the study's claims are differences of 0.005-0.02. sigma is
the pooled within-size sd of the study's own seeds (analysis.statistics.pooled_sd). Like the
size comparisons, it is about nets scored on the same validation split: the split's own noise
is not in it.

Interpolation threshold (Belkin et al.; Nakkiran et al.): a classifier can fit n training samples
with k classes from about n x k parameters on; below it the net cannot memorise the training set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from analysis.statistics import pooled_sd, t_quantile

ALPHA = 0.05
POWER = 0.8


def min_detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The MDD of two sizes with ``n`` seeds each and seed sd ``sd`` (NaN below 2 seeds)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    df = 2 * n - 2
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * sd * math.sqrt(2.0 / n)


def seeds_for(difference: float, sd: float, alpha: float = ALPHA, power: float = POWER, most: int = 1000) -> int | None:
    """The fewest seeds a size whose MDD is at most ``difference`` (None above ``most``)."""
    for n in range(2, most + 1):
        if min_detectable_difference(sd, n, alpha, power) <= difference:
            return n
    return None


def study_power(sds: Sequence[float], ns: Sequence[int], alpha: float = ALPHA, power: float = POWER) -> dict:
    """A study's MDD at its own seed count: the pooled seed sd of its sizes' final val_acc, the
    median seeds a size, the MDD there, and the seeds needed for an MDD of 0.01."""
    sd, df = pooled_sd(sds, ns)
    seeds = sorted(int(n) for n in ns)
    n = seeds[len(seeds) // 2] if seeds else 0
    return {
        "pooled_sd": sd,
        "sd_df": df,
        "seeds": n,
        "alpha": alpha,
        "power": power,
        "mdd": min_detectable_difference(sd, n, alpha, power),
        "seeds_for_0.01": seeds_for(0.01, sd, alpha, power) if math.isfinite(sd) and sd > 0 else None,
    }


def power_text(p: dict) -> str:
    if not math.isfinite(p["mdd"]):
        return "minimum detectable difference: needs at least 2 seeds a size and a seed sd"
    more = f"; {p['seeds_for_0.01']} seeds would resolve 0.01" if p.get("seeds_for_0.01") else ""
    return (
        f"minimum detectable difference of final val_acc between two sizes at {p['power']:.0%} power "
        f"(two-sided {p['alpha']:.0%}): {p['mdd']:.3f} with {p['seeds']} seeds a size and the pooled seed "
        f"sd {p['pooled_sd']:.4f} ({p['sd_df']} df){more}"
    )


def interpolation_threshold(n_train: int | None, n_classes: int | None) -> int | None:
    """Parameters ~ training samples x classes (None when either is unknown)."""
    if not n_train or not n_classes:
        return None
    return int(n_train) * int(n_classes)
