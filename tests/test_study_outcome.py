"""What a study's command says and returns at its end: failed trials counted on stdout, a non-zero
exit when none succeeded, and undelivered MLflow calls with the exact `sync` command; and, end to
end, a real sweep whose every trial Ray's out-of-memory monitor kills."""

from __future__ import annotations

import errno
import re
import shlex
import sys

import pytest
from mlflow import MlflowClient

from analysis.record import TAG_OUTCOME, TAG_PARENT, TAG_ROLE
from study.cli import build_parser, exit_code, trouble_lines
from study.manifest import experiment_path
from study.runner import StudySummary, error_line
from tests.conftest import make_image_tree, run_birdplane
from trainables.tune_adapter import is_disk_full


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


# What Ray's Trial.get_error returns for an error it could not pickle (a worker its memory monitor killed).
OOM_TEXT = (
    "Failure # 1 (occurred at 2026-12-01_20-16-11)\n"
    "1 worker(s) were killed due to the node running low on memory. Memory on the node was 7.57GB used\n"
    "OOM kill reason: Memory usage 8091504640B exceeded threshold\n"
)


def test_a_trial_error_given_as_text_is_read_without_a_crash():
    assert error_line(OOM_TEXT) == (
        "1 worker(s) were killed due to the node running low on memory. Memory on the node was 7.57GB used"
    )
    assert error_line(RuntimeError("boom\n  at line 3")) == "boom" and error_line(None) is None
    assert is_disk_full(OOM_TEXT) is False  # a str has no __cause__: this raised AttributeError in the driver
    assert is_disk_full("Failure # 1\nOSError: [Errno 28] No space left on device") is True
    err = OSError(errno.ENOSPC, "No space left on device")
    wrapped = RuntimeError("trial failed")
    wrapped.cause = "not an exception (a RayActorError's cause may be a protobuf message)"
    wrapped.__cause__ = err
    assert is_disk_full(wrapped) is True


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.skipif(sys.platform != "linux", reason="Ray's memory monitor runs on Linux only")
def test_a_sweep_whose_every_trial_ray_kills_for_memory_exits_1_and_fails_its_runs(tmp_path):
    """Ray's memory monitor kills every trial's worker (the node is 'out of memory' at a threshold of
    1% of its memory): the trial fails, is retried by Tune (3 times) and fails again. The study must end
    with the failures counted on stdout, exit 1, no traceback, and FAILED runs in MLflow."""
    tree = make_image_tree(tmp_path / "images", per_class=8, test_per_class=4, classes=("airplane", "bird"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_birdplane(
        *("sweep", "--smoke", "--num-samples", 1, "--epochs", 1, "--max-concurrent", 1, "--name", "oom"),
        *("--data-root", tree, "--cache-dir", tmp_path / "cache"),
        *("--storage-path", tmp_path / "ray", "--tracking-uri", uri),
        env={"RAY_memory_usage_threshold": "0.01", "RAY_memory_monitor_refresh_ms": "50"},
        timeout=400,
        cwd=tmp_path,  # MLflow's ./mlruns artefacts of the sqlite store land here
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    failed = [line for line in proc.stdout.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1, proc.stdout[-3000:]
    assert failed[0].startswith("failed: 1 of 1 trials failed (none succeeded); first error: 1 worker(s) were killed")
    assert "running low on memory" in failed[0]
    last = proc.stderr.strip().splitlines()[-1]
    assert not re.match(r"^(Traceback|[\w.]+(Error|Exception)\b)", last), proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("oom").experiment_id
    runs = client.search_runs([exp])
    (parent,) = [r for r in runs if r.data.tags.get(TAG_ROLE) == "sweep"]
    children = [r for r in runs if r.data.tags.get(TAG_PARENT) == parent.info.run_id]
    assert parent.info.status == "FAILED"
    assert [r.info.status for r in children] == ["FAILED"]
    assert [r.data.tags.get(TAG_OUTCOME) for r in children] == ["failed"]
    # Killed before they started, the runs still hold their trial's config, as every trial run does.
    assert all("hidden_sizes" in r.data.params for r in children), [r.data.params for r in children]
    synced = run_birdplane("sync", "--name", "oom", "--storage-path", tmp_path / "ray", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-2000:]
    assert client.get_run(parent.info.run_id).info.status == "FAILED", "sync ends the parent as the driver did"
