"""Known answers and coverage simulations for analysis/statistics.py (fixed seeds; a few seconds).

benchmarks/analysis_coverage.py prints the same rates with many more draws.
"""

import math
from collections import Counter
from statistics import NormalDist

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
    paired_comparison,
    pooled_sd,
    size_comparisons,
    size_trend,
    t_cdf,
    t_quantile,
    t_two_sided_p,
    tail_mean,
    welch,
    window_noise_sd,
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
    assert t_two_sided_p(-1.959963985, math.inf) == pytest.approx(0.05), "infinite df: the normal's two tails"
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248), "I_0.4(2,3) = 1 - 0.6^4 - 4·0.4·0.6^3"
    assert f_sf(3.0, 2, 8) == pytest.approx((1 + 2 * 3.0 / 8) ** -4), "F(2, d2): P(F > f) = (1 + 2f/d2)^(-d2/2)"
    assert f_sf(0.5, 2, 8) == pytest.approx(1.125**-4) and f_sf(0.0, 2, 8) == 1.0 and f_sf(-1.0, 2, 8) == 1.0
    assert t_cdf(1.959963985, math.inf) == pytest.approx(0.975) and t_cdf(-1.0, 1) == pytest.approx(0.25)
    assert t_cdf(1.0, 1) == pytest.approx(0.75) and t_cdf(0.0, 3) == pytest.approx(0.5), "Cauchy: 1/2 + atan(t)/pi"
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_welch_reproduces_the_issues_p_value_for_the_default_studys_two_largest_sizes():
    # docs/capacity-default.csv: final val_acc of [1024] against [256], 3 seeds each (issue 17: p = 0.40).
    w = welch(0.8256666666666667, 0.004041451884327384, 3, 0.8210000000000001, 0.007211102550927985, 3)
    assert w["p"] == pytest.approx(0.397, abs=0.001) and w["df"] == pytest.approx(3.14, abs=0.01)


def test_welch_from_two_seeds_each_and_its_edge_cases():
    # v1 = 0.01²/2, v2 = 0.02²/2: se = sqrt(0.00025), df = 0.00025² / (v1² + v2²) = 1.470588.
    w = welch(0.80, 0.01, 2, 0.82, 0.02, 2)
    assert w["diff"] == pytest.approx(-0.02) and w["se"] == pytest.approx(math.sqrt(0.00025))
    assert w["t"] == pytest.approx(-0.02 / math.sqrt(0.00025)) and w["df"] == pytest.approx(1.470588, rel=1e-6)
    assert w["p"] == pytest.approx(t_two_sided_p(w["t"], w["df"])) and 0.3 < w["p"] < 0.6
    nothing = {"se": math.nan, "t": math.nan, "df": math.nan, "p": math.nan}
    for one_seed in (welch(0.80, 0.01, 1, 0.82, 0.01, 3), welch(0.80, 0.01, 3, 0.82, 0.01, 1)):
        assert one_seed.keys() == {"diff", *nothing} and one_seed["diff"] == pytest.approx(-0.02)
        assert all(math.isnan(one_seed[k]) for k in nothing), one_seed
    assert welch(0.85, 0.0, 3, 0.80, 0.0, 3) == {
        "diff": pytest.approx(0.05),
        "se": 0.0,
        "t": math.inf,
        "df": math.inf,
        "p": 0.0,
    }, "no seed noise and a difference: certain"
    assert welch(0.80, 0.0, 3, 0.80, 0.0, 3) == {"diff": 0.0, "se": 0.0, "t": 0.0, "df": math.inf, "p": 1.0}


def test_holm_adjusts_step_down_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []
    assert holm([0.6, 0.9]) == [1.0, 1.0], "2 x 0.6 is capped at 1"


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


def test_a_mean_interval_s_edges_level_and_split_accuracy():
    assert mean_interval(0.8, 0.01, 3).keys() == {"mean", "low", "high", "half", "df", "n"}
    two = mean_interval(0.8, 0.01, 2)
    assert two["half"] == pytest.approx(12.706204736 * 0.01 / math.sqrt(2)) and two["n"] == 2
    assert two["low"] == pytest.approx(0.8 - two["half"]) and two["high"] == pytest.approx(0.8 + two["half"])
    assert mean_interval(0.8, 0.01, 3, level=0.99)["half"] == pytest.approx(9.924843201 * 0.01 / math.sqrt(3))
    for no_spread in (mean_interval(0.8, 0.01, 1), mean_interval(0.8, math.nan, 3)):
        assert no_spread["mean"] == 0.8 and all(math.isnan(no_spread[k]) for k in ("low", "high", "half", "df"))
    # Seeds that agree exactly: only the split's noise is left, known, so the normal quantile.
    same = mean_interval(0.8, 0.0, 3, n_val=1000)
    assert same["df"] == math.inf and same["half"] == pytest.approx(1.959963985 * math.sqrt(0.8 * 0.2 / 1000))
    exact = mean_interval(0.8, 0.0, 3)
    assert exact["half"] == 0.0 and exact["low"] == exact["high"] == 0.8
    # A gap's interval carries the val accuracy's split noise: p = split_p, not the gap itself.
    gap = mean_interval(0.05, 0.0, 3, n_val=1000, split_p=0.8)
    assert gap["half"] == pytest.approx(same["half"]) and gap["low"] == pytest.approx(0.05 - same["half"])


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


def test_a_size_comparison_s_interval_is_the_welch_difference_plus_minus_t_times_se():
    rows = size_comparisons(["a", "b", "c"], [0.80, 0.85, 0.84], [0.005] * 3, [3] * 3)
    # se = sqrt(2 * 0.005² / 3) = 0.0040825 with Welch df 4: t(0.975, 4) = 2.776445 (tables).
    half = 2.776445 * math.sqrt(2 * 0.005**2 / 3)
    assert (rows[0]["low"], rows[0]["high"]) == pytest.approx((0.05 - half, 0.05 + half), abs=1e-6)
    assert (rows[1]["low"], rows[1]["high"]) == pytest.approx((-0.01 - half, -0.01 + half), abs=1e-6)
    exact = size_comparisons(["a", "b"], [0.80, 0.85], [0.0, 0.0], [3, 3])
    assert exact[0]["low"] == exact[0]["high"] == pytest.approx(0.05) and exact[0]["p"] == 0.0, "no seed noise"
    # Two seeds each, one size without spread: Welch's df is exactly 1, t(0.975, 1) = 12.7062.
    one_df = size_comparisons(["a", "b"], [0.80, 0.85], [0.01, 0.0], [2, 2])
    assert one_df[0]["high"] - one_df[0]["diff"] == pytest.approx(12.7062 * 0.01 / math.sqrt(2), rel=1e-5)


# ---------------------------------------------------------------- trends over sizes: coverage and lack of fit


@pytest.mark.parametrize("scenario", list(TREND_SCENARIOS))
def test_the_size_level_trend_interval_covers_the_true_slope_at_95_percent(scenario):
    assert 0.92 <= trend_coverage(scenario, reps=1000) <= 0.98


def test_a_size_trend_s_known_answer_and_what_too_few_sizes_give():
    # x 0..3, y 0.1 0.3 0.2 0.4: slope Sxy/Sxx = 0.4/5 = 0.08, RSS 0.018, se sqrt(0.018/2/5), t(0.975, 2).
    t = size_trend([0, 1, 2, 3], [0.1, 0.3, 0.2, 0.4], [0.01] * 4, [3] * 4)
    half = 4.302652730 * math.sqrt(0.018 / 2 / 5)
    assert t["slope_per_decade"] == pytest.approx(0.08)
    assert (t["low"], t["high"]) == pytest.approx((0.08 - half, 0.08 + half))
    assert t["sizes"] == 4 and t["df"] == 2 and t["method"] == "t over size means"
    # Lack of fit: F = (0.018/2) / (0.01² / 3) = 270 on (2, 8) df; F(2, d2) has P(F > f) = (1 + 2f/d2)^(-d2/2).
    assert t["lack_of_fit_p"] == pytest.approx((1 + 2 * 270 / 8) ** -4, rel=1e-6)
    assert size_trend([0, 1, 2, 3], [0.1, 0.3, 0.2, 0.4], [0.01] * 4, [3] * 4, level=0.99)["high"] == pytest.approx(
        0.08 + 9.924843201 * math.sqrt(0.018 / 2 / 5)
    )
    assert size_trend([0, 1, 2, 3], [0.1, 0.3, 0.2, 0.4])["lack_of_fit_p"] is None, "no seeds' sds: no lack of fit"
    assert size_trend([0, 1, 2, 3], [0.1, 0.3, 0.2, 0.4], [0.01] * 4, None)["lack_of_fit_p"] is None
    one_df = size_trend([0, 1, 2, 3], [0.1, 0.3, 0.2, 0.4], [0.01, math.nan, math.nan, math.nan], [2, 1, 1, 1])
    assert one_df["lack_of_fit_p"] is not None, "one size with 2 seeds is enough for a noise estimate"
    assert size_trend([0, 1, 2, 3], [0.1, 0.3, 0.2, 0.4], [math.nan] * 4, [1] * 4)["lack_of_fit_p"] is None
    assert size_trend([0, 1, 2, 3], [0.1, 0.3, 0.2, 0.4], [0.0] * 4, [3] * 4)["lack_of_fit_p"] is None
    three = size_trend([0, 1, 2], [0.1, 0.3, 0.2])  # slope 0.05, RSS 0.015 on 1 df: t(0.975, 1) = 12.7062
    assert three["high"] == pytest.approx(0.05 + 12.706204736 * math.sqrt(0.015 / 1 / 2)) and three["df"] == 1
    two = size_trend([0, 1], [0.1, 0.3], [0.01] * 2, [3] * 2)
    assert two["slope_per_decade"] == pytest.approx(0.2) and two["low"] is None and two["high"] is None
    assert two["df"] == 0 and two["lack_of_fit_p"] is None
    for none in (size_trend([0], [0.1]), size_trend([1, 1, 1], [0.1, 0.2, 0.3])):
        assert none["slope_per_decade"] is None and none["low"] is None and none["high"] is None
    assert pooled_sd([0.01, 0.03, math.nan, 0.5], [3, 3, 3, 1]) == pytest.approx((math.sqrt(0.0005), 4))
    assert math.isnan(pooled_sd([0.01], [1])[0]) and pooled_sd([0.01], [1])[1] == 0


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


def test_a_shape_is_told_with_the_same_keys_whatever_the_curve():
    keys = {"shape", "moves", "peak", "dip", "peak_set", "delta"}
    for means in ([0.8], [0.8, 0.9], [0.8, 0.8]):
        assert curve_shape(means, [0.01] * len(means), [3] * len(means)).keys() == keys


def test_a_move_between_two_sizes_is_beyond_t_times_the_pooled_se_and_some_curves_cannot_be_judged():
    # Two sizes, 3 seeds each of sd 0.01: one pair, df 4, threshold t(0.975, 4) * 0.01 * sqrt(2/3) = 0.0227.
    assert curve_shape([0.80, 0.826], [0.01] * 2, [3] * 2)["shape"] == "rising"
    assert curve_shape([0.80, 0.82], [0.01] * 2, [3] * 2)["shape"] != "rising"
    # 2 seeds and 1: df 1, t(0.975, 1) * 0.01 * sqrt(1/2 + 1) = 0.156.
    assert curve_shape([0.5, 0.8], [0.01, math.nan], [2, 1])["shape"] == "rising"
    assert curve_shape([0.8], [0.01], [3])["shape"] == "one size"
    assert curve_shape([0.8, 0.9], [math.nan] * 2, [1, 1])["shape"] == "cannot judge (one seed a size)"
    assert curve_shape([0.8, 0.9], [0.0, 0.0], [3, 3])["shape"] == "cannot judge (one seed a size)", "no spread"
    # "Beyond" the threshold: a difference equal to it is no move (either way).
    edge = t_quantile(0.975, 4) * (pooled_sd([0.01] * 2, [3] * 2)[0] * np.sqrt(1 / 3.0 + 1 / 3.0))
    assert curve_shape([0.0, edge], [0.01] * 2, [3] * 2)["moves"] == []
    assert curve_shape([edge, 0.0], [0.01] * 2, [3] * 2)["moves"] == []
    # Flat only when every pair's 90% interval lies strictly within ±delta; noisy seeds: no shape.
    assert curve_shape([0.83, 0.84, 0.83], [0.03] * 3, [3] * 3)["shape"] == "no detectable shape"
    tost = t_quantile(0.95, 4) * (pooled_sd([0.01] * 2, [3] * 2)[0] * np.sqrt(1 / 3.0 + 1 / 3.0))
    assert curve_shape([0.5, 0.5], [0.01] * 2, [3] * 2, delta=tost)["shape"] == "no detectable shape"
    assert curve_shape([0.5, 0.5], [0.01] * 2, [3] * 2, delta=tost * 1.000001)["shape"] == "flat"


def test_shapes_say_where_the_peak_and_the_dip_are():
    peak = curve_shape([0.80, 0.84, 0.86, 0.83, 0.79], [0.004] * 5, [3] * 5)
    assert peak["shape"] == "single peak" and peak["peak"] == 2 and peak["moves"] == ["up", "down"]
    assert peak["peak_set"] == [2], "every other size is clearly below the peak"
    dd = curve_shape([0.80, 0.85, 0.78, 0.84, 0.87], [0.004] * 5, [3] * 5)
    assert dd["shape"] == "dip-then-rise" and dd["dip"] == 2 and dd["peak"] == 1 and dd["moves"] == ["up", "down", "up"]
    # The first rise's peak is the high point before the dip, not the higher size after it (4, 0.89).
    late_high = curve_shape([0.862, 0.88, 0.871, 0.863, 0.89, 0.879], [0.005] * 6, [3] * 6)
    assert late_high["shape"] == "dip-then-rise" and late_high["peak"] == 1 and late_high["dip"] == 3
    # The dip is where a fall ends and a rise starts: here size 3, not the low first sizes.
    low_start = curve_shape([0.798, 0.786, 0.88, 0.828, 0.884], [0.005] * 5, [3] * 5)
    assert low_start["moves"] == ["up", "down", "up"] and low_start["dip"] == 3 and low_start["peak"] == 2
    v = curve_shape([0.86, 0.80, 0.87], [0.004] * 3, [3] * 3)
    assert v["shape"] == "dip-then-rise" and v["dip"] == 1 and v["peak"] is None, "the dip next to the last size"
    wide = curve_shape([0.86, 0.81, 0.80, 0.87], [0.004] * 4, [3] * 4)
    assert wide["shape"] == "dip-then-rise" and wide["dip"] == 2, "of two sizes at the bottom, the lower"
    two_tops = curve_shape([0.80, 0.86, 0.85, 0.78, 0.87], [0.004] * 5, [3] * 5)
    assert two_tops["moves"] == ["up", "down", "up"] and two_tops["peak"] == 1, "of two sizes at the top, the higher"
    zigzag = curve_shape([0.80, 0.87, 0.80, 0.87, 0.80], [0.004] * 5, [3] * 5)
    assert zigzag["shape"] == "oscillating" and zigzag["moves"] == ["up", "down", "up", "down"]
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
    assert onset_share([20.0, 30.0, None]) == {"seen": 2, "seeds": 3, "median": 25.0}, "float epochs count too"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        none = onset_share([None, None])
    assert none["seen"] == 0 and none["seeds"] == 2 and math.isnan(none["median"])


def test_an_onset_needs_a_rise_beyond_4_noise_units_of_the_5_epoch_mean():
    # 12 windows of 5 epochs whose means alternate ±a: second differences ±4a, so one noise unit
    # (the sd of a window mean) is 4a / 0.6745 / sqrt(6) = 2.421a; the smoothed curve spans ±a.
    a = 0.01
    flat = 0.45 + np.repeat([a if i % 2 == 0 else -a for i in range(12)], 5)
    assert window_noise_sd(flat, 5) == pytest.approx(4 * a / 0.6745 / math.sqrt(6))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(window_noise_sd([0.4, 0.5, 0.6, 0.7], 2)), "2 windows: no second difference"
    # A step of 11a from epoch 31 leaves the smoothed minimum (-a) by >= 10a: more than 4 units
    # (9.7a), fewer than 5 (12.1a).
    step = flat + np.where(np.arange(60) >= 30, 11 * a, 0.0)
    assert loss_onset(step) == 28, "the default band is 4 units: the step is an onset"
    assert loss_onset(step, tolerance=5.0) is None
    assert loss_onset(flat + np.where(np.arange(60) >= 30, 9 * a, 0.0)) is None, "a step within 4 units is noise"
    # The default min_after is 10 epochs: a step at epoch 48 leaves exactly 10 smoothed epochs after it.
    late = flat + np.where(np.arange(60) >= 47, 13 * a, 0.0)
    assert loss_onset(late) == 45 and loss_onset(late, min_after=11) is None
    assert loss_onset(np.where(np.arange(60) == 50, math.nan, step)) is None, "a curve with a gap is not judged"
    # A band narrower than one unit: the onset is the last epoch inside the band within one unit of the
    # minimum, never the first epoch that left it (smoothed epoch 32 is within one unit but outside 0.5).
    assert loss_onset(flat + np.where(np.arange(60) >= 34, 20 * a, 0.0), tolerance=0.5) == 31


def test_an_onset_needs_4_windows_and_window_plus_min_after_plus_window_epochs():
    # A noiseless rise from the first epoch: its minimum is the first 5-epoch mean (centred on epoch 3).
    rising = 0.3 + 0.01 * np.arange(30)
    assert loss_onset(rising[:25], min_after=15) == 3, "25 = 5 + 15 + 5 epochs are enough"
    assert loss_onset(rising[:24], min_after=15) is None
    assert loss_onset(rising[:20], min_after=3) == 3, "20 epochs = 4 windows are enough"
    assert loss_onset(rising[:19], min_after=3) is None
    # A noiseless plateau, then a rise: the noise unit is 0, so the band is the minimum itself.
    plateau = np.concatenate([np.full(40, 0.5), 0.5 + 0.01 * np.arange(1, 21)])
    assert window_noise_sd(plateau, 5) == 0.0 and loss_onset(plateau) == 38, "the last plateau window's centre"


# ---------------------------------------------------------------- final values, calibration, confirmations


def test_final_is_the_mean_of_the_last_k_epochs():
    assert tail_mean([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], 5) == pytest.approx(0.5)
    assert tail_mean([0.4, 0.6], 5) == pytest.approx(0.5)
    assert tail_mean([0.1, None, math.nan, 0.3], 5) == pytest.approx(0.2), "missing epochs are left out"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        assert math.isnan(tail_mean([])) and math.isnan(tail_mean([None, math.nan]))


def test_ece_known_answers():
    assert ece([1.0] * 10, [True] * 8 + [False] * 2) == pytest.approx(0.2), "always sure, right 80%"
    # Two bins: conf 0.55 right 1 of 2 (|0.5 - 0.55|), conf 0.95 right 2 of 2 (|1 - 0.95|).
    assert ece([0.55, 0.55, 0.95, 0.95], [True, False, True, True]) == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 200_000)
    assert ece(conf, rng.uniform(size=conf.size) < conf) < 0.01, "calibrated by construction"
    with pytest.raises(ValueError, match="^confidences and correct must have the same length$"):
        ece([0.5], [True, False])
    assert ece([0.9], [True]) == pytest.approx(0.1) and math.isnan(ece([], [])), "one prediction; none"
    # 0.9 is in bin 13 of 15, 0.97 in the top bin 14: apart, |1 - 0.9| / 2 + |0 - 0.97| / 2.
    assert ece([0.9, 0.97], [True, False]) == pytest.approx(0.05 + 0.485)


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


def test_a_confirmation_s_interval_is_the_independent_seeds_mean_interval_with_the_split_noise():
    runs = [{"seed": 0, "final": 0.877, "best": 0.885}, {"seed": 1, "final": 0.865}, {"seed": 2, "final": 0.868}]
    final, _ = confirmation({"seed": 0, "final": 0.877, "best": 0.885}, runs, n_val=1000)
    expected = mean_interval(0.8665, float(np.std([0.865, 0.868], ddof=1)), 2, n_val=1000)
    assert (final["low"], final["high"]) == pytest.approx((expected["low"], expected["high"]))
    assert final["sweep"] == 0.877
    narrow = mean_interval(0.8665, float(np.std([0.865, 0.868], ddof=1)), 2)
    assert final["high"] - final["low"] > narrow["high"] - narrow["low"], "the split's noise widens it"


def test_a_confirmation_without_enough_retrainings_says_nan_quietly():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" / "degrees of freedom <= 0"
        # One independent seed listed before a missing own seed; the sweep has no best value.
        final, best = confirmation({"seed": 5, "final": 0.9, "best": None}, [{"seed": 1, "final": 0.8, "best": 0.85}])
        none, _ = confirmation({"seed": 5, "final": 0.9, "best": 0.9}, [])
    assert math.isnan(final["own_seed"]), "no retraining with the trial's own seed"
    assert final["independent_mean"] == 0.8 and final["luck"] == pytest.approx(0.1)
    assert math.isnan(final["low"]) and math.isnan(final["high"]), "one seed: no interval"
    assert best["sweep"] is None and math.isnan(best["luck"]) and best["independent_mean"] == 0.85
    assert none["independent_seeds"] == 0 and math.isnan(none["independent_mean"]) and math.isnan(none["luck"])


def test_the_t_density_and_the_incomplete_beta_s_ends_have_known_answers():
    from analysis.statistics import _t_pdf

    # Closed forms: df 1 is Cauchy; df 2 is (2 + t²)^(-3/2); df 4 is 3/8 (1 + t²/4)^(-5/2).
    for t in (0.0, 0.5, -1.0, 2.0, 7.0):
        assert _t_pdf(t, 1) == pytest.approx(1 / (math.pi * (1 + t * t)), rel=1e-12)
        assert _t_pdf(t, 2) == pytest.approx((2 + t * t) ** -1.5, rel=1e-12)
        assert _t_pdf(t, 4) == pytest.approx(3 / 8 * (1 + t * t / 4) ** -2.5, rel=1e-12)
    # I_x(a, b) at and beyond its ends; the t cdf at ± infinity reaches them (x = df / (df + t²) = 0).
    assert (betainc(2, 3, 0.0), betainc(2, 3, -0.5), betainc(2, 3, 1.0), betainc(2, 3, 1.5)) == (0.0, 0.0, 1.0, 1.0)
    assert t_cdf(math.inf, 3) == 1.0 and t_cdf(-math.inf, 3) == 0.0


def test_the_t_and_f_tails_match_their_closed_forms_far_out_and_close_in():
    """Where the incomplete beta's continued fraction converges slowly (x near 0 or 1), betainc
    turns to the side where it converges fast: t near 0 or far out, F with more numerator df."""
    for t in (1e-3, 1e-2, 0.3, 3.0, 100.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12), t
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12), t
    # F(d1, 2): P(F > f) = 1 - (1 - x)^(d1/2) with x = 2 / (2 + d1·f).
    for d1 in (1, 3, 6, 10):
        for f in (0.5, 3.0, 100.0):
            x = 2 / (2 + d1 * f)
            assert f_sf(f, d1, 2) == pytest.approx(1 - (1 - x) ** (d1 / 2), rel=1e-9), (f, d1)


def test_a_paired_comparison_s_interval_p_and_power_known_answers():
    # Differences 0.01, 0.02, 0.00, 0.03: mean 0.015, sd sqrt(0.0005 / 3) = 0.0129099, se = sd / 2.
    got = paired_comparison([0.82, 0.84, 0.80, 0.83], [0.81, 0.82, 0.80, 0.80])
    sd = math.sqrt(0.0005 / 3)
    se, t = sd / 2, 0.015 / (sd / 2)
    # Student's t with 3 df: F(t) = 1/2 + (u / (1 + u²) + atan(u)) / pi, u = t / sqrt(3).
    u = t / math.sqrt(3)
    p = 2 * (1 - (0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi))
    assert got == {
        "n": 4,
        "diff": pytest.approx(0.015),
        "sd": pytest.approx(sd),
        "low": pytest.approx(0.015 - 3.182446305 * se),
        "high": pytest.approx(0.015 + 3.182446305 * se),
        "p": pytest.approx(p),
        "power": pytest.approx(NormalDist().cdf(0.01 / se - 3.182446305)),
        "pairs_needed": 15,
    }
    # 15 pairs: Phi(0.01·sqrt(15)/sd - t(0.975, 14)) = Phi(2.9999 - 2.1448) just above 0.8; 14 pairs fall short.
    assert (
        NormalDist().cdf(0.01 * math.sqrt(14) / sd - 2.144786688)
        < 0.8
        < NormalDist().cdf(0.01 * math.sqrt(15) / sd - 2.144786688)
    )
    # No spread (differences exact in binary): certain, whatever the pairs.
    same = {"n": 2, "sd": 0.0, "power": 1.0, "pairs_needed": 2}
    assert paired_comparison([0.5, 0.75], [0.25, 0.5]) == {**same, "diff": 0.25, "low": 0.25, "high": 0.25, "p": 0.0}
    assert paired_comparison([0.5, 0.75], [0.5, 0.75]) == {**same, "diff": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
    # A difference of 0 to detect is never detected more often than the test's own errors: no pairs suffice.
    assert paired_comparison([0.82, 0.84, 0.80, 0.83], [0.81, 0.82, 0.80, 0.80], delta=0.0)["pairs_needed"] is None
    one = paired_comparison([0.8], [0.7])
    assert one["diff"] == pytest.approx(0.1) and one["pairs_needed"] is None
    assert all(math.isnan(one[k]) for k in ("sd", "low", "high", "p", "power")), one
    assert math.isnan(paired_comparison([], [])["diff"])
    with pytest.raises(ValueError):
        paired_comparison([0.8, 0.7], [0.8])
