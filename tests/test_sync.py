"""`birdplane sync` after the tracking server was down past a study's end: the replayed runs are the
runs the live logger would have written (params, tags, names, config.json), for either kind of study,
and `report` and `rerun` work on them."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from analysis.record import CONFIG_ARTIFACT, TAG_NODE, TAG_PARENT, TAG_ROLE, TAG_STUDY, TAG_TRIAL
from tests.conftest import make_image_tree, run_birdplane
from tests.servers import MlflowServer, stop_group

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # two studies, a rerun: minutes on a busy machine

# Tags that name the study or its Ray instance, not the trial: they differ between two studies.
PER_STUDY_TAGS = {TAG_PARENT, TAG_TRIAL, TAG_STUDY, TAG_NODE}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sync-images")
    return make_image_tree(folder, per_class=40, test_per_class=10, classes=("airplane", "bird"), jitter=80)


def study_args(kind: str, tmp_path, tree, uri: str, name: str) -> list:
    common = [
        "--smoke",
        "--data-root",
        tree,
        "--cache-dir",
        tmp_path / "cache",
        "--name",
        name,
        "--storage-path",
        tmp_path / "ray",
        "--tracking-uri",
        uri,
        "--max-concurrent",
        1,
    ]
    if kind == "capacity":
        return ["capacity", *common, "--seeds", 1]
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"depth": {"low": 1, "high": 2}, "width": {"low": 8, "high": 64}, "epochs": 2}))
    return ["sweep", *common, "--num-samples", 2, "--scheduler", "none", "--space", space, "--optuna-storage", "none"]


def trial_runs(uri: str, experiment: str) -> dict[tuple, object]:
    """The study's trial runs by (training seed, hidden sizes): a capacity cell's seed, or a sweep
    trial's (its sweep's seed plus the trial's number), the same in two studies of the same flags."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [
        r for r in client.search_runs([exp.experiment_id], max_results=1000) if r.data.tags.get(TAG_ROLE) == "trial"
    ]
    return {(r.data.params.get("seed"), r.data.params.get("hidden_sizes")): r for r in runs}


def as_logged(uri: str, run) -> dict:
    """What a trial's run says about the trial, without what names its study."""
    client = MlflowClient(uri)
    config = client.download_artifacts(run.info.run_id, CONFIG_ARTIFACT)
    with open(config) as f:
        resolved = yaml.safe_load(f)
    return {
        "name": run.info.run_name,
        "status": run.info.status,
        "params": run.data.params,
        "tags": {k: v for k, v in run.data.tags.items() if k not in PER_STUDY_TAGS},
        "node tagged": TAG_NODE in run.data.tags,
        "config.json": resolved,
        "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
    }


@pytest.mark.parametrize("kind", ["capacity", "sweep"])
def test_sync_after_an_outage_past_the_end_writes_the_runs_the_live_logger_writes(kind, tree, mlflow_server, tmp_path):
    live = run_birdplane(*study_args(kind, tmp_path, tree, mlflow_server.url, f"{kind}-live"), timeout=400)
    assert live.returncode == 0, live.stderr[-3000:]

    server = MlflowServer(tmp_path / "server").start()
    name = f"{kind}-down"
    proc = subprocess.Popen(
        [sys.executable, "-m", "study.cli", *map(str, study_args(kind, tmp_path, tree, server.url, name))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "BIRDPLANE_MLFLOW_DRAIN_S": "3"},
        start_new_session=True,
    )
    try:
        # The parent run is opened (synchronously) before birdplane's manifest is written and any
        # trial starts; the server goes away right after.
        while not (tmp_path / "ray" / name / "birdplane.json").exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        server.stop()
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
        warning = [line for line in out.splitlines() if "MLflow calls were not delivered" in line]
        assert len(warning) == 1, out[-3000:]
        command = warning[0].split("`")[1]
        assert command.startswith(f"birdplane sync --name {name} --storage-path "), command

        server.start()
        synced = run_birdplane(*shlex.split(command)[1:])  # the command as printed, word for word
        assert synced.returncode == 0, synced.stderr[-3000:]
        assert "runs completed" in synced.stdout, synced.stdout
    finally:
        stop_group(proc)
    try:
        live_runs = trial_runs(mlflow_server.url, f"{kind}-live")
        expected = {i: as_logged(mlflow_server.url, r) for i, r in live_runs.items()}
        replayed = {i: as_logged(server.url, r) for i, r in trial_runs(server.url, name).items()}
        assert sorted(replayed) == sorted(expected)
        for index, run in expected.items():
            differ = {k: (replayed[index][k], v) for k, v in run.items() if replayed[index][k] != v}
            assert not differ, f"trial {index}: (synced, live) differ in {differ}"
        assert all(r["params"].get("hidden_sizes") and r["config.json"]["train"] for r in replayed.values())

        report = run_birdplane("report", "--experiment", name, "--tracking-uri", server.url, "--out", tmp_path / "r")
        assert report.returncode == 0, report.stderr[-3000:]
        assert (tmp_path / "r" / "report.html").is_file()
        rerun = run_birdplane(
            "rerun", "--experiment", name, "--tracking-uri", server.url, "--seeds", 1, "--epochs", 1, timeout=400
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "test_acc" in rerun.stdout
    finally:
        server.stop()
