"""How a study ends, in the pieces the end-to-end every-trial-failed test cannot vary (it has one
solo trial, all failed): the parent run's status for every mix of trial outcomes, live and after
`sync`; the run of a trial that failed before it started (solo, and a population's member); the
checkpoint-footprint warning; the line a failed trial's error is told by."""

from __future__ import annotations

import os

import pytest
from mlflow import MlflowClient

from analysis.record import TAG_MEMBER, TAG_OUTCOME
from study.runner import NUM_TO_KEEP, error_line, footprint_warning
from study.tracking import MlflowTrialLogger, study_status
from trainables.config import TrainConfig


@pytest.mark.parametrize(
    "interrupted, statuses, expected",
    [
        (False, ["ERROR", "ERROR"], "FAILED"),  # none succeeded
        (False, ["ERROR"], "FAILED"),
        (False, ["ERROR", "TERMINATED"], "FINISHED"),  # some failed: the study still has results
        (False, ["TERMINATED", "ERROR", "ERROR"], "FINISHED"),
        (False, ["TERMINATED"], "FINISHED"),
        (False, [], "FINISHED"),  # nothing ran (an empty replay): nothing failed
        (True, ["ERROR", "ERROR"], "KILLED"),  # interrupted wins: a --resume adopts it again
        (True, ["TERMINATED"], "KILLED"),
        (False, ["FAILED", "FAILED"], "FINISHED"),  # MLflow's word, not Tune's: Tune says ERROR
    ],
)
def test_the_parent_run_ends_failed_only_when_it_has_trials_and_every_one_failed(interrupted, statuses, expected):
    assert study_status(interrupted, statuses) == expected


@pytest.fixture()
def logger(tmp_path):
    log = MlflowTrialLogger(f"sqlite:///{tmp_path / 'mlflow.db'}", "end", "end", {}, {}, {}, key=str(tmp_path))
    log.open_parent()
    return log


@pytest.mark.parametrize("key, member", [("abc12_00000", None), ("abc12_00001/1", "1")])
def test_a_trial_that_failed_before_it_started_gets_its_run_with_its_config(logger, key, member):
    train = TrainConfig(hidden_sizes=(24, 8)).to_dict()
    logger._close_child(key, {"train": train, "tags": {"birdplane.cell": "24-8"}}, None, {}, True)
    client = MlflowClient(logger.tracking_uri)
    (run,) = client.search_runs([logger.experiment_id], "tags.`birdplane.role` = 'trial'")
    assert logger.runs[key] == run.info.run_id
    assert run.info.status == "FAILED" and run.data.tags[TAG_OUTCOME] == "failed"
    assert run.data.params["hidden_sizes"] == "24,8", run.data.params
    assert run.data.tags["birdplane.cell"] == "24-8"
    assert run.data.tags.get(TAG_MEMBER) == member
    assert run.info.run_name != f"trial_{key}", "named by its config, as every trial's run"


def test_the_footprint_counts_every_trial_s_own_checkpoints_two_a_trial(tmp_path):
    assert NUM_TO_KEEP == 2  # the newest, and the one a truncated newest falls back to
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    # Two unequal trials: 2 x their sum is over the free space, 2 x the larger alone is not, nor 1 x the sum.
    sizes = [int(free * 0.25), int(free * 0.35)]
    warning = footprint_warning(str(tmp_path), sizes)
    assert warning is not None and "(2 a trial)" in warning and str(tmp_path) in warning, warning
    assert footprint_warning(str(tmp_path), [int(free * 0.1), int(free * 0.2)]) is None


def test_a_failed_trial_is_told_by_its_first_line_that_says_why():
    assert error_line("Failure # 12 (occurred at 2026-12-01_20-16-11)\nOSError: disk gone\n") == "OSError: disk gone"
    assert error_line("Failure # 3 (occurred at 2026-12-01_20-16-11)\n\n") == "str"  # nothing else said
    assert error_line(RuntimeError("")) == "RuntimeError"
    assert error_line(ValueError("bad value\n  more")) == "bad value"
    assert error_line("") is None and error_line(None) is None
