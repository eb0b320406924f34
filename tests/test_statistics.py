"""Known answers and coverage simulations for analysis/statistics.py (fixed seeds; a few seconds).

benchmarks/analysis_coverage.py prints the same rates with many more draws.
"""

import math
from collections import Counter

import numpy as np
import pytest

from analysis.statistics import (
    betainc,
    confirmation,
    curve_shape,
    ece,
    f_sf,
    holm,
    loss_onset,
    mean_interval,
    onset_share,
    size_comparisons,
    size_trend,
    t_quantile,
    t_two_sided_p,
    tail_mean,
    welch,
)

# ---------------------------------------------------------------- simulation scenarios (shared with the benchmark)

LOG_PARAMS = np.log10([49_202, 196_802, 787_202, 3_148_802])  # the default study's depth-1 sizes
TRUE_SLOPE = 0.02
# name: (seeds a size, sd of the sizes' departure from the line, seed sd per size)
TREND_SCENARIOS = {
    "linear": (3, 0.0, 0.01),
    "curved": (3, 0.01, 0.01),
    "few seeds": (2, 0.005, 0.01),
    "unequal spread": (3, 0.005, (0.002, 0.005, 0.01, 0.02)),
}
# name: (true means, seed sd, seeds, the right answer)
SHAPE_SCENARIOS = {
    "flat": ([0.83] * 4, 0.01, 3, {"flat", "no detectable shape"}),
    "flat, 6 sizes": ([0.83] * 6, 0.008, 3, {"flat", "no detectable shape"}),
    "rising": ([0.80, 0.82, 0.84, 0.86], 0.008, 3, {"rising"}),
    "falling": ([0.86, 0.84, 0.82, 0.80], 0.008, 3, {"falling"}),
    "single peak": ([0.80, 0.84, 0.86, 0.83, 0.79], 0.008, 3, {"single peak"}),
    "double descent": ([0.80, 0.85, 0.78, 0.84, 0.87], 0.008, 3, {"dip-then-rise"}),
}


def trend_coverage(scenario: str, reps: int, seed: int = 0) -> float:
    seeds, departure, seed_sd = TREND_SCENARIOS[scenario]
    rng = np.random.default_rng(seed)
    sd = np.broadcast_to(np.asarray(seed_sd, dtype=float), LOG_PARAMS.shape)
    hits = 0
    for _ in range(reps):
        truth = (
            0.1 + TRUE_SLOPE * LOG_PARAMS + rng.normal(0, departure, len(LOG_PARAMS))
            if departure
            else 0.1 + TRUE_SLOPE * LOG_PARAMS
        )
        values = truth[:, None] + rng.normal(0, 1, (len(truth), seeds)) * sd[:, None]
        t = size_trend(LOG_PARAMS, values.mean(1), values.std(1, ddof=1), [seeds] * len(truth))
        hits += t["low"] <= TRUE_SLOPE <= t["high"]
    return hits / reps


def mean_coverage(seeds: int, seed_sd: float, reps: int, n_val: int = 1000, p: float = 0.83, seed: int = 0) -> float:
    """A size's mean over seeds, all scored on one validation split of n_val images drawn anew each
    replicate: its binomial error is shared by the seeds."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(reps):
        split = rng.binomial(n_val, p) / n_val - p
        values = p + split + rng.normal(0, seed_sd, seeds)
        ci = mean_interval(values.mean(), values.std(ddof=1), seeds, n_val=n_val)
        hits += ci["low"] <= p <= ci["high"]
    return hits / reps


def shape_rate(scenario: str, reps: int, seed: int = 0) -> tuple[float, Counter]:
    truth, sd, seeds, right = SHAPE_SCENARIOS[scenario]
    rng = np.random.default_rng(seed)
    found = Counter()
    for _ in range(reps):
        values = np.asarray(truth)[:, None] + rng.normal(0, sd, (len(truth), seeds))
        found[curve_shape(values.mean(1), values.std(1, ddof=1), [seeds] * len(truth))["shape"]] += 1
    return sum(found[s] for s in right) / reps, found


def onset_curves(kind: str, reps: int, seed: int = 0, epochs: int = 60, sd: float = 0.02):
    """60-epoch val-loss curves: "flat" (no overfitting, independent noise), "wander" (flat, AR(1)
    noise with phi 0.6), "learning" (falls, then levels off) and "onset" (levels off, then rises
    by 0.008 a epoch from epoch 20)."""
    rng = np.random.default_rng(seed)
    e = np.arange(1, epochs + 1)
    for _ in range(reps):
        noise = rng.normal(0, sd, epochs)
        if kind == "wander":
            for i in range(1, epochs):
                noise[i] += 0.6 * noise[i - 1]
        base = {
            "flat": 0.45 + 0 * e,
            "wander": 0.45 + 0 * e,
            "learning": 0.4 + 0.3 * np.exp(-e / 8),
            "onset": 0.4 + 0.3 * np.exp(-e / 6) + 0.008 * np.maximum(0, e - 20),
        }[kind]
        yield base + noise


# ---------------------------------------------------------------- distributions: known values


def test_t_and_f_distributions_match_tabulated_values():
    # Student's t 0.975 quantiles (any statistics table) and a few exact cdf values.
    for df, value in ((1, 12.706204736), (2, 4.302652730), (3, 3.182446305), (9, 2.262157163), (30, 2.042272456)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-8)
    assert t_quantile(0.995, 4) == pytest.approx(4.604094871, abs=1e-8)
    assert t_quantile(0.025, 5) == pytest.approx(-2.570581836, abs=1e-8)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959963985, abs=1e-8)
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5), "Cauchy: P(|T| > 1) = 1/2"
    assert t_two_sided_p(2.0, 2) == pytest.approx(1 - 2 / math.sqrt(6)), "df 2 has a closed form"
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248), "I_0.4(2,3) = 1 - 0.6^4 - 4·0.4·0.6^3"
    assert f_sf(3.0, 2, 8) == pytest.approx((1 + 2 * 3.0 / 8) ** -4), "F(2, d2): P(F > f) = (1 + 2f/d2)^(-d2/2)"
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_welch_reproduces_the_issues_p_value_for_the_default_studys_two_largest_sizes():
    # docs/capacity-default.csv: final val_acc of [1024] against [256], 3 seeds each (issue 17: p = 0.40).
    w = welch(0.8256666666666667, 0.004041451884327384, 3, 0.8210000000000001, 0.007211102550927985, 3)
    assert w["p"] == pytest.approx(0.397, abs=0.001) and w["df"] == pytest.approx(3.14, abs=0.01)


def test_holm_adjusts_step_down_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


# ---------------------------------------------------------------- per-size means: intervals that cover


def test_a_mean_interval_is_t_with_n_minus_1_df_widened_by_the_splits_binomial_noise():
    plain = mean_interval(0.8, 0.01, 3)
    assert plain["half"] == pytest.approx(4.302652730 * 0.01 / math.sqrt(3)) and plain["df"] == pytest.approx(2)
    wide = mean_interval(0.8, 0.01, 3, n_val=1000)
    seed_var, split_var = 0.01**2 / 3, 0.8 * 0.2 / 1000
    df = (seed_var + split_var) ** 2 / (seed_var**2 / 2)
    assert wide["df"] == pytest.approx(df)
    assert wide["half"] == pytest.approx(t_quantile(0.975, df) * math.sqrt(seed_var + split_var))
    assert math.isnan(mean_interval(0.8, math.nan, 1)["low"]), "one seed: no interval"


@pytest.mark.parametrize("seeds,seed_sd", [(3, 0.005), (3, 0.02), (2, 0.01), (10, 0.01)])
def test_mean_intervals_cover_the_population_accuracy_at_95_percent(seeds, seed_sd):
    assert 0.92 <= mean_coverage(seeds, seed_sd, reps=1000) <= 0.98


def test_without_the_split_noise_the_interval_would_under_cover():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(1000):
        values = 0.83 + rng.binomial(1000, 0.83) / 1000 - 0.83 + rng.normal(0, 0.005, 3)
        ci = mean_interval(values.mean(), values.std(ddof=1), 3)  # no n_val: seed noise only
        hits += ci["low"] <= 0.83 <= ci["high"]
    assert hits / 1000 < 0.85


def test_size_comparisons_are_adjacent_and_against_the_best_with_holm():
    rows = size_comparisons(["a", "b", "c"], [0.80, 0.85, 0.84], [0.005] * 3, [3] * 3)
    assert [(r["comparison"], r["a"], r["b"]) for r in rows] == [
        ("adjacent", "b", "a"),
        ("adjacent", "c", "b"),
        ("vs best", "b", "a"),
        ("vs best", "b", "c"),
    ]
    assert rows[0]["diff"] == pytest.approx(0.05) and rows[0]["p_holm"] < 0.01
    assert rows[3]["p_holm"] == pytest.approx(holm([r["p"] for r in rows])[3]) and rows[3]["p_holm"] > 0.05
    single = size_comparisons(["a", "b"], [0.80, 0.85], [math.nan] * 2, [1, 1])
    assert math.isnan(single[0]["p"]) and math.isnan(single[0]["low"]), "one seed a size: nothing to test"


# ---------------------------------------------------------------- trends over sizes: coverage and lack of fit


@pytest.mark.parametrize("scenario", list(TREND_SCENARIOS))
def test_the_size_level_trend_interval_covers_the_true_slope_at_95_percent(scenario):
    assert 0.92 <= trend_coverage(scenario, reps=1000) <= 0.98


def test_lack_of_fit_flags_a_curve_and_not_a_line():
    rng = np.random.default_rng(1)
    bent = size_trend(LOG_PARAMS, [0.80, 0.84, 0.85, 0.80], [0.005] * 4, [3] * 4)
    assert bent["lack_of_fit_p"] < 0.001
    rejections = 0
    for _ in range(400):
        values = (0.1 + TRUE_SLOPE * LOG_PARAMS)[:, None] + rng.normal(0, 0.01, (4, 3))
        rejections += size_trend(LOG_PARAMS, values.mean(1), values.std(1, ddof=1), [3] * 4)["lack_of_fit_p"] < 0.05
    assert 0.02 <= rejections / 400 <= 0.08, "a level-5% test on a true line: ~5% rejections"


# ---------------------------------------------------------------- shapes of a whole curve


@pytest.mark.parametrize("scenario", list(SHAPE_SCENARIOS))
def test_curve_shapes_are_classified_right_at_least_90_percent_of_the_time(scenario):
    rate, found = shape_rate(scenario, reps=300)
    assert rate >= 0.90, found


def test_shapes_say_where_the_peak_and_the_dip_are():
    peak = curve_shape([0.80, 0.84, 0.86, 0.83, 0.79], [0.004] * 5, [3] * 5)
    assert peak["shape"] == "single peak" and peak["peak"] == 2 and peak["moves"] == ["up", "down"]
    assert peak["peak_set"] == [2], "every other size is clearly below the peak"
    dd = curve_shape([0.80, 0.85, 0.78, 0.84, 0.87], [0.004] * 5, [3] * 5)
    assert dd["shape"] == "dip-then-rise" and dd["dip"] == 2 and dd["peak"] == 1 and dd["moves"] == ["up", "down", "up"]
    flat = curve_shape([0.830, 0.832, 0.829, 0.831], [0.002] * 4, [5] * 4, delta=0.02)
    assert flat["shape"] == "flat", "every pair's interval within ±0.02"
    assert curve_shape([0.8, 0.9], [math.nan] * 2, [1, 1])["shape"] == "cannot judge (one seed a size)"


# ---------------------------------------------------------------- the onset on the val loss


@pytest.mark.parametrize("kind", ["flat", "wander", "learning"])
def test_no_onset_on_curves_that_do_not_overfit_at_least_95_percent_of_the_time(kind):
    found = [loss_onset(curve) for curve in onset_curves(kind, reps=400)]
    assert sum(o is not None for o in found) / 400 <= 0.05


def test_a_real_onset_is_found_near_where_it_is():
    found = [loss_onset(curve) for curve in onset_curves("onset", reps=300)]
    seen = [o for o in found if o is not None]
    assert len(seen) / 300 >= 0.90
    assert abs(np.median(seen) - 20) <= 2


def test_onset_uses_the_given_epochs_needs_later_epochs_and_counts_seeds():
    curve = np.concatenate([np.linspace(0.7, 0.4, 20), np.linspace(0.4, 0.8, 40)])
    assert loss_onset(curve, epochs=range(101, 161)) == 121, "the 5-epoch mean centred on epoch 121 is lowest"
    assert loss_onset(curve[:25]) is None, "too few epochs after the minimum"
    assert loss_onset(np.linspace(0.7, 0.4, 60)) is None, "still falling"
    late = 0.4 + np.random.default_rng(0).normal(0, 0.005, 60) + 0.03 * np.maximum(0, np.arange(60) - 51)
    assert loss_onset(late) is None, "a rise in the last 8 epochs leaves fewer than min_after epochs to confirm it"
    assert loss_onset(late, min_after=3) is not None
    assert onset_share([20, None, 30, float("nan")]) == {"seen": 2, "seeds": 4, "median": 25.0}


# ---------------------------------------------------------------- final values, calibration, confirmations


def test_final_is_the_mean_of_the_last_k_epochs():
    assert tail_mean([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], 5) == pytest.approx(0.5)
    assert tail_mean([0.4, 0.6], 5) == pytest.approx(0.5) and math.isnan(tail_mean([]))


def test_ece_known_answers():
    assert ece([1.0] * 10, [True] * 8 + [False] * 2) == pytest.approx(0.2), "always sure, right 80%"
    # Two bins: conf 0.55 right 1 of 2 (|0.5 - 0.55|), conf 0.95 right 2 of 2 (|1 - 0.95|).
    assert ece([0.55, 0.55, 0.95, 0.95], [True, False, True, True]) == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 200_000)
    assert ece(conf, rng.uniform(size=conf.size) < conf) < 0.01, "calibrated by construction"
    with pytest.raises(ValueError):
        ece([0.5], [True, False])


def test_a_confirmation_compares_like_with_like_and_keeps_the_own_seed_apart():
    # Issue 17's case: the trial's final 0.877 reproduces exactly with its own seed; the two
    # independent seeds average 0.8665, so the selection was ~0.010 lucky.
    rows = confirmation(
        {"seed": 0, "final": 0.877, "best": 0.885},
        [
            {"seed": 0, "final": 0.877, "best": 0.885},
            {"seed": 1, "final": 0.865, "best": 0.874},
            {"seed": 2, "final": 0.868, "best": 0.878},
        ],
    )
    final, best = rows
    assert final["metric"] == "final" and final["own_seed"] == 0.877 and final["independent_seeds"] == 2
    assert final["independent_mean"] == pytest.approx(0.8665) and final["luck"] == pytest.approx(0.0105)
    assert final["low"] < 0.8665 < final["high"]
    assert best["metric"] == "best" and best["independent_mean"] == pytest.approx(0.876)
    assert best["luck"] == pytest.approx(0.009)
