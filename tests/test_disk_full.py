"""A full disk under a study, on a real small filesystem (tmpfs; the commands run in tmp_path, so
MLflow's ./mlruns artefacts stay there): one line and exit 75, the parent
run FAILED, no retries against the full disk, and after space is freed a --resume that finishes
every trial with each epoch once in MLflow. Also: Ray's snapshot truncated by a full disk."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import last_json, make_image_tree, run_birdplane
from tests.test_faults import assert_complete, children

pytestmark = [pytest.mark.timeout(600)]

DISK_MB = 60


@pytest.fixture()
def small_disk(tmp_path):
    """A 60 MB tmpfs mounted under tmp_path (root only), unmounted at the end."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path, leave_mb: float) -> Path:
    """A ballast file that leaves ``leave_mb`` MB free on ``disk`` (deleting it frees the space)."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    ballast = disk / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * int(free - leave_mb * 2**20))
    return ballast


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_image_tree(
        tmp_path_factory.mktemp("disk-images"), per_class=60, test_per_class=4, classes=("airplane", "bird")
    )


def study_args(tmp_path, tree, disk, kind, name, *extra):
    return [
        kind,
        "--data-root",
        tree,
        "--cache-dir",
        tmp_path / "cache",
        "--name",
        name,
        "--storage-path",
        disk,
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        *extra,
    ]


def sweep_extra(tmp_path, epochs=3):
    # [128] nets: a checkpoint of 1.6-3.2 MB (weights, best weights); the whole study needs ~25 MB.
    space = {"depth": 1, "width": 128, "batch_size": 32, "lr": {"low": 1e-3, "high": 1e-2}, "epochs": epochs}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return ["--space", path, "--num-samples", 3, "--scheduler", "none", "--max-concurrent", 1]


def capacity_extra():
    return ["--widths", 128, "--depths", 1, "--seeds", 3, "--epochs", 3, "--max-concurrent", 1]


def parent_status(uri, experiment):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`birdplane.role` != 'trial'")
    assert len(runs) == 1, [r.data.tags for r in runs]
    return runs[0].info.status


def failures(experiment: Path) -> dict[str, int]:
    """How often each trial failed, from Ray's error files (one 'Failure #' entry per failure)."""
    return {p.parent.name: p.read_text().count("Failure #") for p in experiment.glob("trial_*/error.txt")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sweep", "capacity"])
def test_a_full_disk_ends_the_study_in_one_line_and_resume_completes_it(tmp_path, tree, small_disk, kind):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    extra = sweep_extra(tmp_path) if kind == "sweep" else capacity_extra()
    args = study_args(tmp_path, tree, small_disk, kind, "full", *extra)
    ballast = fill(small_disk, leave_mb=8)  # room for the first trial's checkpoints, not for all

    ended = run_birdplane(*args, timeout=300, cwd=tmp_path)
    lines = ended.stderr.strip().splitlines()
    assert ended.returncode == 75, ended.stderr[-3000:]
    assert lines[-1].startswith(f"birdplane: error: no space left on device under {small_disk} ("), lines[-1]
    assert f"birdplane {kind} --name full --resume" in lines[-1] and "MB free" in lines[-1], lines[-1]
    assert "Traceback" not in ended.stdout + "\n".join(lines[-5:])
    assert parent_status(uri, "full") == "FAILED"
    assert all(n <= 1 for n in failures(small_disk / "full").values()), failures(small_disk / "full")
    assert not any(small_disk.glob("full/trial_*/checkpoint_*/.*.tmp")), "no half-written files left"

    ballast.unlink()
    resumed = run_birdplane(*args, "--resume", "--json", timeout=300, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(last_json(resumed.stdout)["trials"]) == 3
    assert_complete(uri, "full", 3, 3)  # every trial's epochs exactly once, FINISHED, with its model
    assert parent_status(uri, "full") == "FINISHED"


@pytest.mark.long  # past the default suite's budget: pytest --run-long
@pytest.mark.slow
def test_a_truncated_snapshot_resumes_from_the_last_good_one_or_says_why_not(tmp_path, tree, small_disk):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = study_args(tmp_path, tree, small_disk, "sweep", "trunc", *sweep_extra(tmp_path, epochs=2))
    done = run_birdplane(*args, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = small_disk / "trunc"
    (state,) = experiment.glob("experiment_state-*.json")
    state.write_bytes(b"")  # what a full disk left of Ray's snapshot

    synced = run_birdplane("sync", "--name", "trunc", "--storage-path", small_disk, cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert "0 runs completed" in synced.stdout
    resumed = run_birdplane(*args, "--resume", "--json", timeout=300, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_complete(uri, "trunc", 3, 2)

    # Nothing that reads is left: one line, no traceback.
    for path in (*experiment.glob("experiment_state-*.json"), *experiment.glob(".birdplane-snapshot/*")):
        path.write_bytes(b"")
    for command in (["sync", "--name", "trunc", "--storage-path", small_disk], [*args, "--resume"]):
        failed = run_birdplane(*command, timeout=300, cwd=tmp_path)
        assert failed.returncode == 2, failed.stderr[-3000:]
        assert "Traceback" not in failed.stderr
        (line,) = failed.stderr.strip().splitlines()
        assert "truncated" in line and "experiment_state" in line, line
    _, runs = children(uri, "trunc")
    assert len(runs) == 3


@pytest.mark.parametrize("kind", ["sweep", "capacity"])
def test_check_warns_when_the_checkpoints_may_not_fit(tmp_path, tree, small_disk, kind):
    extra = sweep_extra(tmp_path) if kind == "sweep" else capacity_extra()
    args = study_args(tmp_path, tree, small_disk, kind, "fits", *extra, "--check")
    fits = run_birdplane(*args, cwd=tmp_path)
    assert fits.returncode == 0 and "warning" not in fits.stderr, fits.stderr[-2000:]
    fill(small_disk, leave_mb=2)
    tight = run_birdplane(*args, cwd=tmp_path)
    assert tight.returncode == 0, tight.stderr[-2000:]
    assert "warning: the checkpoints may need about" in tight.stderr and str(small_disk) in tight.stderr, tight.stderr
    assert not (small_disk / "fits").exists(), "--check writes nothing"
