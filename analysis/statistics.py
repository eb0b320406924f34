"""Statistics of a capacity study: intervals, comparisons, trends, curve shapes, onsets, calibration.

Pure functions of numbers (numpy only: no MLflow, no Ray, no scipy). Each section states its
formula and its assumption; tests/test_statistics.py holds the known answers and the coverage
simulations side by side, and benchmarks/analysis_coverage.py prints the same rates with more draws.

The unit of inference for a capacity curve is the *size*: the seeds of one size are repeated
measurements of one point, so a trend over sizes has (sizes - 2) degrees of freedom however many
seeds were run. Curves are never pooled across depths or regulariser values: callers pass one curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from statistics import NormalDist

import numpy as np

LEVEL = 0.95
FINAL_EPOCHS = 5  # "final" = mean over the last 5 epochs: see tail_mean
FLAT_DELTA = 0.02  # curve_shape's equivalence margin for accuracies: see curve_shape
ECE_BINS = 15


# ---------------------------------------------------------------- distributions (t and F)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (df may be fractional: Welch)."""
    if math.isinf(df):
        return NormalDist().cdf(t)
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def _t_pdf(t: float, df: float) -> float:
    return math.exp(
        math.lgamma((df + 1) / 2)
        - math.lgamma(df / 2)
        - 0.5 * math.log(df * math.pi)
        - (df + 1) / 2 * math.log1p(t * t / df)
    )


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p: Newton's method from the normal quantile (for p > 1/2 the
    t cdf is concave, so the steps approach from below and cannot overshoot), bisection if slow."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if math.isinf(df):
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    t = NormalDist().inv_cdf(p)
    if df > 1e5:  # Cornish-Fisher to 1/df²: error ~ df^-3 (the beta continued fraction is slow there)
        z = t
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df * df)
    for _ in range(60):
        step = (t_cdf(t, df) - p) / _t_pdf(t, df)
        t -= step
        if abs(step) < 1e-10 * max(1.0, abs(t)):  # the cdf itself is good to ~1e-13
            return t
    low, high = 0.0, max(1.0, t)
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return 0.5 * (low + high)


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|)."""
    if math.isinf(df):
        return 2.0 * (1.0 - NormalDist().cdf(abs(t)))
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def f_sf(f: float, d1: float, d2: float) -> float:
    """P(F >= f) for Fisher's F with (d1, d2) degrees of freedom."""
    if f <= 0:
        return 1.0
    return betainc(d2 / 2.0, d1 / 2.0, d2 / (d2 + d1 * f))


# ---------------------------------------------------------------- one size: the mean of its seeds


def mean_interval(
    mean: float, sd: float, n: int, level: float = LEVEL, n_val: int | None = None, split_p: float | None = None
) -> dict:
    """A ``level`` interval for the population value of a size's mean over ``n`` seeds.

    Formula: mean ± t(df) · sqrt(sd²/n + v), with v = p(1-p)/n_val the binomial variance of an
    accuracy p (``split_p``, else the mean itself) measured on the fixed validation split of n_val
    images (0 when n_val is None: give it only for accuracies or differences involving one), and df
    from Welch-Satterthwaite:
    df = (sd²/n + v)² / ((sd²/n)² / (n-1)) (v is known, so it adds no uncertainty of its own).
    Assumptions: seeds are independent draws of one size's training noise, roughly normal; every
    seed is scored on the same split, so its sampling error is shared by all seeds and does not
    shrink with n (it is absent from the seeds' sd, hence added). One seed: no interval.
    """
    out = {"mean": float(mean), "low": math.nan, "high": math.nan, "half": math.nan, "df": math.nan, "n": int(n)}
    if n < 2 or not math.isfinite(sd):
        return out
    seed_var = sd * sd / n
    p = mean if split_p is None else split_p
    split_var = p * (1.0 - p) / n_val if n_val else 0.0
    total = seed_var + split_var
    df = math.inf if seed_var == 0 else total * total / (seed_var * seed_var / (n - 1))
    half = t_quantile(0.5 + level / 2.0, df) * math.sqrt(total) if total > 0 else 0.0
    out.update(low=mean - half, high=mean + half, half=half, df=df)
    return out


def welch(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int) -> dict:
    """Welch's t test of mean 1 - mean 2 from summary numbers: diff, t, df and two-sided p.

    Assumption: two independent sets of seeds. Both are scored on the same validation split, so
    the split's own sampling noise is *not* in this test: it compares the nets on this split.
    """
    v1, v2 = s1 * s1 / n1, s2 * s2 / n2
    diff, se = m1 - m2, math.sqrt(v1 + v2)
    if n1 < 2 or n2 < 2 or not math.isfinite(se):  # one seed: no spread to test against
        return {"diff": diff, "se": math.nan, "t": math.nan, "df": math.nan, "p": math.nan}
    if se == 0:
        return {"diff": diff, "se": 0.0, "t": math.inf if diff else 0.0, "df": math.inf, "p": 0.0 if diff else 1.0}
    df = (v1 + v2) ** 2 / ((v1 * v1 / (n1 - 1) if n1 > 1 else 0) + (v2 * v2 / (n2 - 1) if n2 > 1 else 0))
    t = diff / se
    return {"diff": diff, "se": se, "t": t, "df": df, "p": t_two_sided_p(t, df)}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control, any dependence)."""
    p = list(pvalues)
    if any(math.isnan(v) for v in p):  # no test for some: no family to correct
        return [math.nan] * len(p)
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def size_comparisons(
    labels: Sequence[str], means: Sequence[float], sds: Sequence[float], ns: Sequence[int], level: float = LEVEL
) -> list[dict]:
    """Adjacent sizes (b - a, in the given order), and each size against the best (best - size):
    Welch differences with ``level`` intervals and Holm-adjusted p-values over the whole family."""
    k = len(means)
    if k < 2:
        return []
    best = int(np.nanargmax(means))
    pairs = [("adjacent", i + 1, i) for i in range(k - 1)] + [("vs best", best, i) for i in range(k) if i != best]
    rows = []
    for kind, a, b in pairs:
        w = welch(means[a], sds[a], ns[a], means[b], sds[b], ns[b])
        half = (
            t_quantile(0.5 + level / 2, w["df"]) * w["se"]
            if w["se"] > 0 and w["df"] > 0
            else math.nan
            if math.isnan(w["se"])
            else 0.0
        )
        rows.append(
            {
                "comparison": kind,
                "a": labels[a],
                "b": labels[b],
                "diff": w["diff"],
                "low": w["diff"] - half,
                "high": w["diff"] + half,
                "p": w["p"],
            }
        )
    for row, adjusted in zip(rows, holm([r["p"] for r in rows]), strict=False):
        row["p_holm"] = adjusted
    return rows


# ---------------------------------------------------------------- a curve over sizes: trend and lack of fit


def size_trend(
    log10_params: Sequence[float],
    means: Sequence[float],
    sds: Sequence[float] | None = None,
    ns: Sequence[int] | None = None,
    level: float = LEVEL,
) -> dict:
    """Slope of the size means against log10(params), with a t interval from the size-level residuals.

    Formula: ordinary least squares over the k size means; se(slope) = sqrt(RSS/(k-2) / Sxx);
    interval slope ± t(k-2) · se. The residuals hold both the seed noise of the means and how far
    the true curve departs from a line, so the interval stays honest when the curve is not
    straight (a bootstrap over the seeds of fixed sizes would leave that out and under-cover).
    Lack of fit (when sds and ns are given): F = [RSS/(k-2)] / [s²_pooled · mean(1/n_i)], with
    (k-2, Σ(n_i-1)) df; a small p says the sizes scatter about the line more than their seeds do.
    Assumption: one curve (one depth, one regulariser value); sizes are the units.
    """
    x, y = np.asarray(log10_params, dtype=float), np.asarray(means, dtype=float)
    k = len(x)
    out = {
        "slope_per_decade": None,
        "low": None,
        "high": None,
        "sizes": k,
        "df": k - 2,
        "lack_of_fit_p": None,
        "method": "t over size means",
    }
    if k < 2 or np.ptp(x) == 0:
        return out
    sxx = float(((x - x.mean()) ** 2).sum())
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    out["slope_per_decade"] = slope
    if k < 3:
        return out
    rss = float(((y - y.mean() - slope * (x - x.mean())) ** 2).sum())
    half = t_quantile(0.5 + level / 2, k - 2) * math.sqrt(rss / (k - 2) / sxx)
    out.update(low=slope - half, high=slope + half)
    if sds is not None and ns is not None:
        pooled, df_within = pooled_sd(sds, ns)
        if df_within > 0 and pooled > 0:
            expected = pooled**2 * float(np.mean([1.0 / n for n in ns]))
            out["lack_of_fit_p"] = f_sf(rss / (k - 2) / expected, k - 2, df_within)
    return out


def pooled_sd(sds: Sequence[float], ns: Sequence[int]) -> tuple[float, int]:
    """(pooled within-size sd, its degrees of freedom Σ(n_i-1)) over sizes with at least 2 seeds."""
    pairs = [(s, n) for s, n in zip(sds, ns, strict=False) if n > 1 and math.isfinite(s)]
    df = sum(n - 1 for _, n in pairs)
    return (math.sqrt(sum((n - 1) * s * s for s, n in pairs) / df), df) if df else (math.nan, 0)


# ---------------------------------------------------------------- a curve over sizes: its shape


def curve_shape(
    means: Sequence[float], sds: Sequence[float], ns: Sequence[int], delta: float = FLAT_DELTA, alpha: float = 0.05
) -> dict:
    """The shape of a curve judged on all its sizes at once, with noise-aware thresholds.

    A *move* from size a to a later size b is a difference m_b - m_a beyond c · s_p · sqrt(1/n_a +
    1/n_b), with s_p the pooled seed sd (df Σ(n_i-1)) and c the t quantile at 1 - alpha/(2·pairs):
    Bonferroni over every pair, so a curve with no real change shows any move with probability
    <= alpha. The shape is the longest chain of alternating moves:
    none -> "flat" when every pair's 1-2·alpha interval lies within ±delta (equivalence, TOST),
    else "no detectable shape"; up -> "rising"; down -> "falling"; up, down -> "single peak";
    down, up -> "dip-then-rise"; up, down, up -> "dip-then-rise" after a first rise (classic double
    descent in accuracy); longer -> "oscillating". ``peak``/``dip`` give the index of the highest
    (lowest) size that starts and ends such moves; ``peak_set`` the sizes not significantly
    below the peak (a confidence set for its location). delta: FLAT_DELTA = 0.02 for accuracies,
    about 1.7 binomial sd of a 1,000-image split (0.012): a split that size cannot rank closer nets.
    Assumption: the seed sd is about the same at every size of the curve (pooled).
    """
    m, n = np.asarray(means, dtype=float), np.asarray(ns, dtype=float)
    k = len(m)
    out = {"shape": "no detectable shape", "moves": [], "peak": None, "dip": None, "peak_set": [], "delta": delta}
    s_p, df = pooled_sd(sds, ns)
    if k < 2 or df == 0 or not s_p > 0:
        out["shape"] = "cannot judge (one seed a size)" if k >= 2 else "one size"
        return out
    pairs = k * (k - 1) // 2
    c = t_quantile(1 - alpha / (2 * pairs), df)
    se = s_p * np.sqrt(1 / n[:, None] + 1 / n[None, :])
    diff = m[None, :] - m[:, None]  # diff[a, b] = m_b - m_a
    up, down = diff > c * se, -diff > c * se
    # Longest alternating chain: best[i][d] = moves in the longest chain ending at i with last move d.
    best = [[0, 0] for _ in range(k)]
    back: list[list[tuple | None]] = [[None, None] for _ in range(k)]
    for b in range(k):
        for a in range(b):
            for d, sig in ((0, up[a, b]), (1, down[a, b])):
                if sig:
                    length = best[a][1 - d] + 1 if best[a][1 - d] else 1
                    if length > best[b][d]:
                        best[b][d], back[b][d] = length, (a, 1 - d)
    end, d = max(((i, d) for i in range(k) for d in (0, 1)), key=lambda e: best[e[0]][e[1]])
    moves = []
    while best[end][d]:
        moves.append("up" if d == 0 else "down")
        end, d = back[end][d]
        if best[end][d] == 0:
            break
    moves.reverse()
    out["moves"] = moves
    peaks = [i for i in range(1, k - 1) if up[:i, i].any() and down[i, i + 1 :].any()]
    dips = [i for i in range(1, k - 1) if down[:i, i].any() and up[i, i + 1 :].any()]
    top = int(np.argmax(m))
    out["peak_set"] = [i for i in range(k) if not down[top, i] or i == top]
    if not moves:
        tost = t_quantile(1 - alpha, df)
        out["shape"] = "flat" if bool((np.abs(diff) + tost * se < delta).all()) else "no detectable shape"
    elif moves in (["up"], ["down"]):
        out["shape"] = "rising" if moves == ["up"] else "falling"
    elif moves == ["up", "down"]:
        out.update(shape="single peak", peak=max(peaks, key=lambda i: m[i]))
    elif moves in (["down", "up"], ["up", "down", "up"]):
        out.update(
            shape="dip-then-rise",
            dip=min(dips, key=lambda i: m[i]),
            peak=max(peaks, key=lambda i: m[i]) if moves[0] == "up" else None,
        )
    else:
        out["shape"] = "oscillating"
    return out


# ---------------------------------------------------------------- one run: per-epoch metrics


def tail_mean(values: Sequence[float], k: int = FINAL_EPOCHS) -> float:
    """The mean of the last ``k`` values: the "final" value of a per-epoch curve.

    k = 5: a single epoch is one draw from the run's epoch-to-epoch swing (val loss 0.46 -> 0.56 ->
    0.53 at epochs 30/40/50 of the chapter's recipe); 5 epochs divide independent noise by ~2.2,
    and the last 5 of a 60-epoch budget are 1/12 of training, short next to the curve's own drift.
    """
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v[-k:])) if v else math.nan


def window_noise_sd(values: Sequence[float], window: int) -> float:
    """The sd of a ``window``-epoch mean of a curve's noise, from the curve itself.

    The curve is cut into whole windows (the last one ending at the last epoch); the second
    differences of their means remove any piecewise-linear trend, and for independent block noise
    of sd s_b have sd s_b · sqrt 6, so s_b = MAD(second differences) / 0.6745 / sqrt 6. Block means
    keep the noise's slow wandering (SGD's epoch-to-epoch correlation) that first differences of
    single epochs would miss.
    """
    y = np.asarray(values, dtype=float)
    blocks = y[len(y) % window :].reshape(-1, window).mean(axis=1)
    d2 = np.diff(blocks, 2)
    return float(np.median(np.abs(d2)) / 0.6745 / math.sqrt(6)) if len(d2) else math.nan


def loss_onset(
    val_loss: Sequence[float],
    epochs: Sequence[int] | None = None,
    window: int = 5,
    tolerance: float = 4.0,
    min_after: int = 10,
) -> int | None:
    """The overfitting onset on the validation loss: the last epoch where its smoothed curve was
    near its minimum, when a sustained rise follows. None when no onset can be told from noise.

    Smoothing: a centred moving average of ``window`` epochs (kept where the window is whole); one
    noise unit is window_noise_sd, the sd of a window mean. Detection: the smoothed curve leaves
    its minimum's band of ``tolerance`` units for good, and at least ``min_after`` epochs follow
    (a rise must be sustained, not one swing). Location: the last epoch before that within one
    unit of the minimum. Calibration (tests/test_statistics.py, benchmarks/analysis_coverage.py),
    60 epochs: "no onset" on a flat curve in >= 95% of runs, with independent noise (~98%) and
    with AR(1) noise, phi 0.6 (~96%); a rise of 0.008 an epoch after epoch 20 (noise sd 0.02) is
    found in ~100% of runs at median epoch 21; after a long plateau the epoch comes out early.
    Curves of fewer than ~40 epochs rarely show one: with under 8 windows the noise estimate also
    takes in the bend of the early learning curve (conservative: too short to tell).
    """
    y = np.asarray(val_loss, dtype=float)
    ep = list(epochs) if epochs is not None else list(range(1, len(y) + 1))
    if len(y) < 4 * window or len(y) < window + min_after + window or not np.isfinite(y).all():
        return None
    smooth = np.convolve(y, np.ones(window) / window, mode="valid")  # smooth[j] is centred on j + window // 2
    low, unit = float(smooth.min()), window_noise_sd(y, window)
    last = int(np.nonzero(smooth <= low + tolerance * unit)[0][-1])  # the last epoch within tolerance of the minimum
    if len(smooth) - 1 - last < min_after:
        return None
    turn = int(np.nonzero(smooth[: last + 1] <= low + unit)[0][-1])  # where it was last near its minimum
    return int(ep[turn + window // 2])


def onset_share(onsets: Sequence) -> dict:
    """How many seeds show an onset, of how many, and the median onset of those that do."""
    seen = [float(o) for o in onsets if o is not None and not (isinstance(o, float) and math.isnan(o))]
    return {"seen": len(seen), "seeds": len(onsets), "median": float(np.median(seen)) if seen else math.nan}


def ece(confidences: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> float:
    """Expected calibration error: Σ_b (|b|/n) · |accuracy(b) - mean confidence(b)| over ``bins``
    equal-width confidence bins on [0, 1] (the top bin includes 1.0). ``confidences`` are the
    predicted class's probabilities, ``correct`` whether that prediction was right."""
    conf, hit = np.asarray(confidences, dtype=float), np.asarray(correct, dtype=float)
    if len(conf) != len(hit):
        raise ValueError("confidences and correct must have the same length")
    if len(conf) == 0:
        return math.nan
    index = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            total += inside.sum() / len(conf) * abs(hit[inside].mean() - conf[inside].mean())
    return float(total)


# ---------------------------------------------------------------- confirmations of a selected trial


def paired_comparison(
    a: Sequence[float], b: Sequence[float], delta: float = 0.01, level: float = LEVEL, target: float = 0.8
) -> dict:
    """Two treatments measured on the same seeds (a searcher against random search, say): the
    per-seed differences a - b, their mean with its ``level`` t interval, the paired t test's
    two-sided p, their sd, the power this many pairs have to detect a true difference of ``delta``
    at that sd, and the pairs that power needs to reach ``target``.

    Power: the two-sided test at 1 - level, by the normal approximation of the noncentral t,
    Phi(delta·sqrt(n)/sd - t(1 - alpha/2, n - 1)) (the far tail left out). Assumption: the seeds'
    differences are independent and roughly normal. Fewer than 2 pairs: only the mean.
    """
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(d)
    out = {"n": n, "diff": math.nan, "sd": math.nan, "low": math.nan, "high": math.nan, "p": math.nan}
    out.update(power=math.nan, pairs_needed=None)
    if n == 0:
        return out
    mean = math.fsum(d) / n
    out["diff"] = mean
    if n < 2:
        return out
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    alpha = 1.0 - level

    def power(pairs: int) -> float:
        if sd == 0:
            return 1.0
        return NormalDist().cdf(delta * math.sqrt(pairs) / sd - t_quantile(1.0 - alpha / 2.0, pairs - 1))

    half = t_quantile(1.0 - alpha / 2.0, n - 1) * sd / math.sqrt(n)
    if sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = t_two_sided_p(mean / (sd / math.sqrt(n)), n - 1)
    needed = next((m for m in range(2, 100_001) if power(m) >= target), None)
    out.update(sd=sd, low=mean - half, high=mean + half, p=p, power=power(n), pairs_needed=needed)
    return out


def confirmation(sweep: dict, runs: Sequence[dict], level: float = LEVEL, n_val: int | None = None) -> list[dict]:
    """Like-for-like check of a selected trial: final against final, best against best.

    ``sweep``: the selected trial's {"seed", "final", "best"} (final = tail mean, best = the best
    epoch's val_acc, selected on the split it is reported on); ``runs``: its retrainings, each
    {"seed", "final", "best"}. The retraining with the trial's own seed reproduces the trial, so it
    is shown apart ("own_seed"); only the other seeds are independent: their mean, interval and
    ``luck`` = sweep - their mean (how much the selection's own draw flattered the trial).
    """
    rows = []
    for key in ("final", "best"):
        own = [r[key] for r in runs if r.get("seed") == sweep.get("seed") and r.get(key) is not None]
        others = [float(r[key]) for r in runs if r.get("seed") != sweep.get("seed") and r.get(key) is not None]
        mean = float(np.mean(others)) if others else math.nan
        sd = float(np.std(others, ddof=1)) if len(others) > 1 else math.nan
        ci = mean_interval(mean, sd, len(others), level, n_val)
        value = sweep.get(key)
        rows.append(
            {
                "metric": key,
                "sweep": value,
                "own_seed": own[0] if own else math.nan,
                "independent_seeds": len(others),
                "independent_mean": mean,
                "low": ci["low"],
                "high": ci["high"],
                "luck": (value - mean) if value is not None and others else math.nan,
            }
        )
    return rows
