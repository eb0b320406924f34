"""What a study's command says and returns at its end: failed trials counted on stdout, a non-zero
exit when none succeeded, and undelivered MLflow calls with the exact `sync` command."""

from __future__ import annotations

import shlex

import pytest

from study.cli import build_parser, exit_code, trouble_lines
from study.manifest import experiment_path
from study.runner import StudySummary


def summary(errors: list[str | None], undelivered: int = 0, storage: str = "/data/ray", interrupted=False):
    trials = [{"trial_id": f"t{i}", "error": e, "val_acc": None if e else 0.7} for i, e in enumerate(errors)]
    path = experiment_path(storage, "cap")
    return StudySummary(
        "cap", "cap", "http://x", path, "p", trials=trials, undelivered=undelivered, interrupted=interrupted
    )


def test_a_study_whose_every_trial_failed_exits_1_and_says_so():
    s = summary(["RuntimeError: boom", "RuntimeError: boom"])
    assert exit_code(s) == 1
    assert trouble_lines(s) == ["failed: 2 of 2 trials failed (none succeeded); first error: RuntimeError: boom"]


def test_a_study_with_some_failed_trials_exits_0_and_counts_them():
    s = summary([None, "OSError: disk", None])
    assert exit_code(s) == 0
    assert trouble_lines(s) == ["failed: 1 of 3 trials failed; first error: OSError: disk"]
    assert trouble_lines(summary([None])) == [] and exit_code(summary([None])) == 0


def test_an_interrupted_study_exits_130_even_when_its_trials_failed():
    assert exit_code(summary(["x"], interrupted=True)) == 130


@pytest.mark.parametrize("storage", ["/data/my ray", "file:///data/ray", "s3://bucket/studies"])
def test_undelivered_calls_name_the_sync_command_that_replays_this_study(storage):
    (line,) = trouble_lines(summary([None], undelivered=21, storage=storage))
    assert line.startswith("warning: 21 MLflow calls were not delivered")
    words = shlex.split(line.split("`")[1])
    assert words[0] == "birdplane"
    args = build_parser().parse_args(words[1:])
    assert (args.command, args.name) == ("sync", "cap")
    assert experiment_path(args.storage_path, args.name) == experiment_path(storage, "cap")
