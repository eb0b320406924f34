"""Known answers for analysis.capacity.memorisation: every key of its answer, on small per-size tables.

The tables are built by hand as per_size makes them (one row per size, means over seeds; with
several seeds final_val_acc_sd and seeds). The noise-aware verdicts were worked out by hand from
curve_shape's rule: a move from size a to b is a difference beyond c · s_p · sqrt(1/n_a + 1/n_b),
c the t quantile at 1 - 0.05/(2·pairs), df = Σ(n_i - 1). With sd 0.004 and 3 seeds a size
s_p · sqrt(2/3) = 0.00327, so a move needs more than
  3 sizes (df 6, c = 3.287): 0.0107;  2 sizes (df 4, c = 2.776): 0.0091;  5 sizes (df 10, c = 3.581): 0.0117;
with 2 seeds a size and 3 sizes (df 3, c = 4.857, s_p · 1 = 0.004): 0.0194.
"flat" needs every |difference| + t(0.95, df) · 0.00327 below 0.02 (3 sizes: + 0.0064).
"""

import pandas as pd

from analysis.capacity import memorisation

NO_ANSWER = {
    "memorised_at": None,
    "memorised_size": None,
    "val_peak_at": None,
    "val_peak_size": None,
    "val_peak": None,
    "peak_vs_memorisation": None,
    "beyond": None,
    "second_rise": False,
    "second_rise_at": None,
    "peak_set": [],
    "shape": None,
    "judged": None,
}
ONE_SEED = "one seed a size: differences above 0.005 count, without a noise estimate"
ON_NOISE = "on the noise of the seeds (flat: within ±0.02)"


def _answer(**given):
    """The whole expected answer: NO_ANSWER with the given keys filled in."""
    assert set(given) <= set(NO_ANSWER), "a test may only fill the keys memorisation returns"
    return {**NO_ANSWER, **given}


def _sizes(train, val, sd=None, seeds=None):
    """Sizes [1], [2], [4], ... with 1, 10, 100, ... parameters; with ``seeds``, the sd columns too."""
    n = len(train)
    table = pd.DataFrame(
        {
            "hidden_sizes": [f"[{2**i}]" for i in range(n)],
            "param_count": [10**i for i in range(n)],
            "train_acc": train,
            "final_val_acc": val,
        }
    )
    return table if seeds is None else table.assign(final_val_acc_sd=sd, seeds=seeds)


# ---------------------------------------------------------------- where memorisation and the val peak are


def test_an_empty_table_answers_every_key_with_nothing():
    empty = pd.DataFrame(columns=["hidden_sizes", "param_count", "train_acc", "final_val_acc"])
    assert memorisation(empty) == {
        "memorised_at": None,
        "memorised_size": None,
        "val_peak_at": None,
        "val_peak_size": None,
        "val_peak": None,
        "peak_vs_memorisation": None,
        "beyond": None,
        "second_rise": False,
        "second_rise_at": None,
        "peak_set": [],
        "shape": None,
        "judged": None,
    }


def test_a_group_that_never_memorises_reports_only_its_val_peak():
    result = memorisation(_sizes([0.7, 0.8, 0.98], [0.60, 0.72, 0.70]))
    assert result == _answer(val_peak_at=10, val_peak_size="[2]", val_peak=0.72)


def test_memorisation_at_the_largest_size_only_leaves_no_larger_size_and_nothing_judged():
    result = memorisation(_sizes([0.9, 0.95, 0.995], [0.70, 0.80, 0.75]))
    assert result == _answer(
        memorised_at=100,
        memorised_size="[4]",
        val_peak_at=10,
        val_peak_size="[2]",
        val_peak=0.80,
        peak_vs_memorisation="below",
        beyond="no larger size",
    )


def test_a_train_accuracy_exactly_at_the_threshold_is_memorised_and_two_sizes_are_judged():
    table = _sizes([0.9, 0.99, 1.0], [0.70, 0.75, 0.80])
    # 0.99 >= 0.99: memorised from [2]; [2] and [4] are two sizes, enough to judge (0.80 > 0.75 + 0.005).
    assert memorisation(table) == _answer(
        memorised_at=10,
        memorised_size="[2]",
        val_peak_at=100,
        val_peak_size="[4]",
        val_peak=0.80,
        peak_vs_memorisation="above",
        beyond="keeps rising",
        judged=ONE_SEED,
    )
    # A stricter threshold leaves only [4]: the val peak is at the memorisation point.
    assert memorisation(table, threshold=0.995) == _answer(
        memorised_at=100,
        memorised_size="[4]",
        val_peak_at=100,
        val_peak_size="[4]",
        val_peak=0.80,
        peak_vs_memorisation="at",
        beyond="no larger size",
    )


def test_when_every_size_memorises_the_point_is_the_smallest_size_and_the_first_best_is_the_peak():
    result = memorisation(_sizes([0.995, 1.0, 1.0], [0.80, 0.80, 0.80]))
    assert result == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=1,
        val_peak_size="[1]",
        val_peak=0.80,
        peak_vs_memorisation="at",
        beyond="stays flat",
        judged=ONE_SEED,
    )


def test_rows_are_taken_by_parameter_count_whatever_their_order_and_index():
    table = _sizes([0.9, 0.99, 1.0], [0.70, 0.75, 0.80]).iloc[[2, 0, 1]]
    table.index = [7, 3, 5]  # as a group cut out of a larger per-size table
    assert memorisation(table) == _answer(
        memorised_at=10,
        memorised_size="[2]",
        val_peak_at=100,
        val_peak_size="[4]",
        val_peak=0.80,
        peak_vs_memorisation="above",
        beyond="keeps rising",
        judged=ONE_SEED,
    )


def test_extra_columns_left_by_resetting_an_index_twice_do_not_change_the_answer():
    # reset_index() twice leaves columns "index" and "level_0": memorisation must read only its own columns.
    table = _sizes([0.9, 1.0, 1.0, 1.0], [0.70, 0.80, 0.76, 0.79]).reset_index().reset_index()
    assert {"index", "level_0"} <= set(table.columns)
    assert memorisation(table) == _answer(
        memorised_at=10,
        memorised_size="[2]",
        val_peak_at=10,
        val_peak_size="[2]",
        val_peak=0.80,
        peak_vs_memorisation="at",
        beyond="dips, then rises again",
        second_rise=True,
        second_rise_at=1000,
        judged=ONE_SEED,
    )


# ---------------------------------------------------------------- one seed a size: the plain rule of rise


def test_one_seed_a_change_of_exactly_rise_either_way_stays_flat():
    judged = "one seed a size: differences above 0.0625 count, without a noise estimate"
    # 0.75 ± 0.0625 are exact in binary: the boundary itself, not a rounding of it.
    up = memorisation(_sizes([1.0, 1.0], [0.75, 0.8125]), rise=0.0625)
    assert up == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=10,
        val_peak_size="[2]",
        val_peak=0.8125,
        peak_vs_memorisation="above",
        beyond="stays flat",
        judged=judged,
    )
    down = memorisation(_sizes([1.0, 1.0], [0.75, 0.6875]), rise=0.0625)
    assert down == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=1,
        val_peak_size="[1]",
        val_peak=0.75,
        peak_vs_memorisation="at",
        beyond="stays flat",
        judged=judged,
    )
    level = memorisation(_sizes([1.0, 1.0], [0.75, 0.75]), rise=0.0625)
    assert level == down


def test_one_seed_a_change_beyond_rise_rises_or_falls():
    judged = "one seed a size: differences above 0.0625 count, without a noise estimate"
    assert memorisation(_sizes([1.0, 1.0], [0.75, 0.875]), rise=0.0625)["beyond"] == "keeps rising"
    assert memorisation(_sizes([1.0, 1.0], [0.75, 0.625]), rise=0.0625) == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=1,
        val_peak_size="[1]",
        val_peak=0.75,
        peak_vs_memorisation="at",
        beyond="falls",
        judged=judged,
    )


def test_one_seed_compares_the_last_size_with_the_memorisation_point_not_with_its_neighbours():
    late_rise = memorisation(_sizes([1.0, 1.0, 1.0], [0.70, 0.70, 0.80]))
    assert late_rise == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=100,
        val_peak_size="[4]",
        val_peak=0.80,
        peak_vs_memorisation="above",
        beyond="keeps rising",
        judged=ONE_SEED,
    )
    early_rise = memorisation(_sizes([1.0, 1.0, 1.0], [0.70, 0.80, 0.80]))
    assert early_rise == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=10,
        val_peak_size="[2]",
        val_peak=0.80,
        peak_vs_memorisation="above",
        beyond="keeps rising",
        judged=ONE_SEED,
    )
    late_fall = memorisation(_sizes([1.0, 1.0, 1.0], [0.80, 0.80, 0.70]))
    assert late_fall == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=1,
        val_peak_size="[1]",
        val_peak=0.80,
        peak_vs_memorisation="at",
        beyond="falls",
        judged=ONE_SEED,
    )


def test_one_seed_a_dip_right_after_the_memorisation_point_then_a_rise_is_a_second_rise():
    # From [2]: 0.80, 0.76, 0.79 -- the lowest is the stretch's second size, and 0.79 > 0.76 + 0.005.
    result = memorisation(_sizes([0.9, 1.0, 1.0, 1.0], [0.70, 0.80, 0.76, 0.79]))
    assert result == _answer(
        memorised_at=10,
        memorised_size="[2]",
        val_peak_at=10,
        val_peak_size="[2]",
        val_peak=0.80,
        peak_vs_memorisation="at",
        beyond="dips, then rises again",
        second_rise=True,
        second_rise_at=1000,
        judged=ONE_SEED,
    )


def test_one_seed_a_dip_that_recovers_by_no_more_than_rise_is_no_second_rise():
    # 0.762 - 0.76 = 0.002 <= 0.005: no second rise; 0.762 < 0.80 - 0.005: it falls.
    assert memorisation(_sizes([1.0, 1.0, 1.0], [0.80, 0.76, 0.762])) == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=1,
        val_peak_size="[1]",
        val_peak=0.80,
        peak_vs_memorisation="at",
        beyond="falls",
        judged=ONE_SEED,
    )
    # A recovery of exactly rise (0.6875 + 0.0625 = 0.75, exact in binary) is no second rise either.
    assert memorisation(_sizes([1.0, 1.0, 1.0], [0.8125, 0.6875, 0.75]), rise=0.0625) == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=1,
        val_peak_size="[1]",
        val_peak=0.8125,
        peak_vs_memorisation="at",
        beyond="stays flat",
        judged="one seed a size: differences above 0.0625 count, without a noise estimate",
    )


def test_one_seed_the_second_rise_is_at_the_best_size_after_the_dip_not_the_first():
    # From [2]: 0.80, 0.76 (dip), 0.78, 0.79: the best after the dip is [16], two sizes after it.
    result = memorisation(_sizes([0.9, 1.0, 1.0, 1.0, 1.0], [0.70, 0.80, 0.76, 0.78, 0.79]))
    assert result == _answer(
        memorised_at=10,
        memorised_size="[2]",
        val_peak_at=10,
        val_peak_size="[2]",
        val_peak=0.80,
        peak_vs_memorisation="at",
        beyond="dips, then rises again",
        second_rise=True,
        second_rise_at=10_000,
        judged=ONE_SEED,
    )


# ---------------------------------------------------------------- several seeds: judged on the seeds' noise


def test_one_seed_a_size_with_sd_columns_as_per_size_writes_them_still_uses_the_plain_rule():
    # per_size writes final_val_acc_sd = nan and seeds = 1 when each size ran once.
    table = _sizes([1.0, 1.0, 1.0], [0.70, 0.75, 0.80], sd=float("nan"), seeds=1)
    assert memorisation(table) == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=100,
        val_peak_size="[4]",
        val_peak=0.80,
        peak_vs_memorisation="above",
        beyond="keeps rising",
        judged=ONE_SEED,
    )


def test_two_seeds_a_size_are_judged_on_the_seeds_noise():
    # Rises of 0.05 and 0.10 against a move threshold of 0.0194: rising, and only [4] is the peak.
    table = _sizes([1.0, 1.0, 1.0], [0.70, 0.75, 0.80], sd=0.004, seeds=2)
    assert memorisation(table) == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=100,
        val_peak_size="[4]",
        val_peak=0.80,
        peak_vs_memorisation="above",
        beyond="keeps rising",
        peak_set=["[4]"],
        shape="rising",
        judged=ON_NOISE,
    )


def test_a_noisy_curve_within_its_noise_stays_flat_and_every_size_is_in_the_peak_set():
    # Differences of 0.001: no move (threshold 0.0107), and 0.001 + 0.0064 < 0.02: flat.
    table = _sizes([1.0, 1.0, 1.0], [0.80, 0.801, 0.80], sd=0.004, seeds=3)
    assert memorisation(table) == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=10,
        val_peak_size="[2]",
        val_peak=0.801,
        peak_vs_memorisation="above",
        beyond="stays flat",
        peak_set=["[1]", "[2]", "[4]"],
        shape="flat",
        judged=ON_NOISE,
    )


def test_without_a_dip_on_the_whole_curve_the_stretch_from_the_memorisation_point_is_judged_alone():
    # The whole curve 0.70, 0.80, 0.70 is a single peak; from [2] on it only falls.
    from_the_peak = memorisation(_sizes([0.9, 1.0, 1.0], [0.70, 0.80, 0.70], sd=0.004, seeds=3))
    assert from_the_peak == _answer(
        memorised_at=10,
        memorised_size="[2]",
        val_peak_at=10,
        val_peak_size="[2]",
        val_peak=0.80,
        peak_vs_memorisation="at",
        beyond="falls",
        peak_set=["[2]"],
        shape="single peak",
        judged=ON_NOISE,
    )
    # Memorised from [1], the stretch is the whole curve: it rises, then falls.
    from_the_start = memorisation(_sizes([1.0, 1.0, 1.0], [0.70, 0.80, 0.70], sd=0.004, seeds=3))
    assert from_the_start == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=10,
        val_peak_size="[2]",
        val_peak=0.80,
        peak_vs_memorisation="above",
        beyond="rises, then falls",
        peak_set=["[2]"],
        shape="single peak",
        judged=ON_NOISE,
    )


def test_a_dip_at_the_memorisation_point_puts_the_second_rise_at_the_best_size_after_the_dip():
    # Whole curve: down 0.80 -> 0.76 at [2] (the memorisation point), up to 0.86 at [4]; 0.86 vs 0.855
    # and 0.85 are no moves (< 0.0117). The best after the dip is the size right after it, [4].
    table = _sizes([0.9, 0.995, 1.0, 1.0, 1.0], [0.80, 0.76, 0.86, 0.855, 0.85], sd=0.004, seeds=3)
    assert memorisation(table) == _answer(
        memorised_at=10,
        memorised_size="[2]",
        val_peak_at=100,
        val_peak_size="[4]",
        val_peak=0.86,
        peak_vs_memorisation="above",
        beyond="dips, then rises again",
        second_rise=True,
        second_rise_at=100,
        peak_set=["[4]", "[8]", "[16]"],
        shape="dip-then-rise",
        judged=ON_NOISE,
    )


def test_the_second_rise_is_looked_for_only_after_the_dip_not_before_it():
    # 0.90 before the dip at [2] is the best of all, but the second rise is the best after the
    # dip: 0.86 at [8] (0.84 -> 0.86 is a move of 0.02 > 0.0117, 0.86 -> 0.85 none).
    table = _sizes([1.0, 1.0, 1.0, 1.0, 1.0], [0.90, 0.76, 0.84, 0.86, 0.85], sd=0.004, seeds=3)
    assert memorisation(table) == _answer(
        memorised_at=1,
        memorised_size="[1]",
        val_peak_at=1,
        val_peak_size="[1]",
        val_peak=0.90,
        peak_vs_memorisation="at",
        beyond="dips, then rises again",
        second_rise=True,
        second_rise_at=1000,
        peak_set=["[1]"],
        shape="dip-then-rise",
        judged=ON_NOISE,
    )


def test_a_dip_only_on_the_stretch_from_the_memorisation_point_is_placed_on_that_stretch():
    # Whole curve 0.86, 0.80, 0.86, 0.80, 0.86: down, up, down, up -- oscillating. From [4] on
    # (0.86, 0.80, 0.86) it dips and rises again; the second rise is the stretch's last size, [16].
    table = _sizes([0.9, 0.95, 1.0, 1.0, 1.0], [0.86, 0.80, 0.86, 0.80, 0.86], sd=0.004, seeds=3)
    assert memorisation(table) == _answer(
        memorised_at=100,
        memorised_size="[4]",
        val_peak_at=1,
        val_peak_size="[1]",
        val_peak=0.86,
        peak_vs_memorisation="below",
        beyond="dips, then rises again",
        second_rise=True,
        second_rise_at=10_000,
        peak_set=["[1]", "[4]", "[16]"],
        shape="oscillating",
        judged=ON_NOISE,
    )


def test_a_dip_and_rise_before_the_memorisation_point_is_no_second_rise_after_it():
    """The whole curve dips at [2] and rises again by [4], before the nets memorise (from [8]); from
    [8] on, val_acc stays flat. A second rise is what follows memorisation: none here."""
    table = _sizes(train=[0.5, 0.6, 0.9, 1.0, 1.0], val=[0.80, 0.70, 0.80, 0.80, 0.80], sd=[0.004] * 5, seeds=[3] * 5)
    assert memorisation(table) == _answer(
        memorised_at=1000,
        memorised_size="[8]",
        val_peak_at=1,
        val_peak_size="[1]",
        val_peak=0.80,
        peak_vs_memorisation="below",
        beyond="stays flat",
        peak_set=["[1]", "[4]", "[8]", "[16]"],
        shape="dip-then-rise",
        judged=ON_NOISE,
    )


def test_a_dip_just_before_the_memorisation_point_is_no_second_rise_either():
    """The dip at [2], the size right before the nets memorise (from [4]): still before it."""
    table = _sizes(train=[0.5, 0.6, 1.0, 1.0, 1.0], val=[0.80, 0.70, 0.80, 0.80, 0.80], sd=[0.004] * 5, seeds=[3] * 5)
    got = memorisation(table)
    assert (got["memorised_size"], got["beyond"], got["second_rise"], got["second_rise_at"]) == (
        "[4]",
        "stays flat",
        False,
        None,
    )
