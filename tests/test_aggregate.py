"""Seed averages: mean ± sd per capacity cell and per rerun (analysis/aggregate.py)."""

import math

import pytest

from analysis import record
from analysis.aggregate import capacity_table, mean_sd, mean_sd_text, seed_groups


def test_mean_sd_is_the_mean_and_the_sample_standard_deviation():
    mean, sd = mean_sd([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8) and sd == pytest.approx(0.1)
    assert mean_sd([0.5]) == (0.5, 0.0), "one seed: no spread"


def test_mean_sd_text_leaves_out_values_that_are_not_finite_numbers():
    assert mean_sd_text([0.7, 0.9, math.nan, None]) == "0.8000 ± 0.1414"
    assert mean_sd_text([0.7, 0.9], digits=2) == "0.80 ± 0.14"
    assert mean_sd_text([math.inf, None]) == "—"


def _trial(cell, params, val, train, reg="none"):
    return {
        "param_count": params,
        "val_acc": val,
        "train_acc": train,
        "tags": {record.TAG_CELL: cell, record.TAG_REGULARISER: reg},
    }


def test_seed_groups_put_the_seeds_of_one_cell_and_regulariser_value_together_smallest_first():
    trials = [
        _trial("[64]", 197_000, 0.8, 0.9),
        _trial("[16]", 49_000, 0.7, 0.75),
        _trial("[64]", 197_000, 0.82, 0.92),
        _trial("[64]", 197_000, 0.85, 0.99, "augment=flip"),
    ]
    groups = seed_groups(trials)
    assert list(groups) == [("augment=flip", 197_000, "[64]"), ("none", 49_000, "[16]"), ("none", 197_000, "[64]")]
    assert [t["val_acc"] for t in groups[("none", 197_000, "[64]")]] == [0.8, 0.82]


def test_capacity_table_has_one_row_per_cell_with_seed_means():
    trials = [
        _trial("[64]", 197_000, 0.8, 0.9),
        _trial("[64]", 197_000, 0.84, 0.94),
        _trial("[16]", 49_000, math.nan, None),
    ]
    lines = capacity_table(trials).splitlines()
    assert lines[0] == "final epoch, mean ± sd over seeds:"
    assert len(lines) == 4, lines
    assert lines[2].split() == ["none", "[16]", "49,000", "1", "—", "—"], "a cell with no finite value says so"
    assert lines[3].split() == ["none", "[64]", "197,000", "2", "0.820", "±", "0.028", "0.920", "±", "0.028"]


def test_a_tuned_study_s_values_are_never_pooled_in_one_cell_s_seed_mean():
    trials = [
        {**_trial("[8]", 24_602, 0.70, 0.8), "tags": {record.TAG_CELL: "[8]", record.TAG_TUNE: "lr=0.01"}},
        {**_trial("[8]", 24_602, 0.72, 0.8), "tags": {record.TAG_CELL: "[8]", record.TAG_TUNE: "lr=0.01"}},
        {**_trial("[8]", 24_602, 0.80, 0.9), "tags": {record.TAG_CELL: "[8]", record.TAG_TUNE: "lr=0.1"}},
    ]
    groups = seed_groups(trials)
    assert list(groups) == [("none lr=0.01", 24_602, "[8]"), ("none lr=0.1", 24_602, "[8]")]
    assert [len(v) for v in groups.values()] == [2, 1]
