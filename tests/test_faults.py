"""Faults with real processes: a killed driver, a killed trial, a lost node, NaNs, MLflow outages."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import last_json, make_image_tree, run_birdplane
from tests.servers import MlflowServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slow_tree(tmp_path_factory):
    """Enough images that a trial takes a few seconds, so faults land mid-trial."""
    return make_image_tree(tmp_path_factory.mktemp("fault-images"), per_class=200, test_per_class=5,
                           classes=("airplane", "bird"))


def write_space(folder: Path, **over) -> Path:
    space = {"depth": 2, "width": {"low": 1024, "high": 2048}, "batch_size": {"choices": [16, 32]},
             "lr": {"low": 1e-3, "high": 3e-2, "log": True}, "loss": {"choices": ["nll", "ce"]}, "epochs": 3, **over}
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def sweep_args(tmp_path, tree, uri, name, samples, space=None, *extra):
    return ["sweep", "--num-samples", samples, "--space", space or write_space(tmp_path), "--data-root", tree,
            "--cache-dir", tmp_path / "cache", "--name", name, "--storage-path", tmp_path / "ray",
            "--tracking-uri", uri, "--scheduler", "none", *extra]


def start(args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "study.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
                            start_new_session=True)


def children(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if r.data.tags.get("birdplane.role") == "trial"]


def wait_for(predicate, proc, timeout=300, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the store may be mid-creation
            pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sweep ended before {what}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def finished_count(uri, experiment):
    return sum(c.info.status == "FINISHED" for c in children(uri, experiment)[1])


def epochs_logged(uri, experiment):
    client, runs = children(uri, experiment)
    return max((len(client.get_metric_history(r.info.run_id, "val_acc")) for r in runs), default=0)


def assert_complete(uri, experiment, samples, epochs):
    client, runs = children(uri, experiment)
    ids = [r.data.tags["ray_trial_id"] for r in runs]
    assert len(runs) == samples and len(set(ids)) == samples, ids
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert steps == list(range(1, epochs + 1)), steps
        assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"config.json", "model.pt"}


def result_epochs(trial_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def test_sigkilled_driver_resumes_with_every_trial_once_and_continuous_metrics(slow_tree, mlflow_server, tmp_path):
    args = sweep_args(tmp_path, slow_tree, mlflow_server.url, "killed", 6, None, "--max-concurrent", 1)
    proc = start(args)
    wait_for(lambda: finished_count(mlflow_server.url, "killed") >= 2 and epochs_logged(mlflow_server.url, "killed") >= 1,
             proc, what="two finished trials")
    time.sleep(1.5)  # into the next trial
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started in its session
    proc.wait()
    before = finished_count(mlflow_server.url, "killed")
    assert before < 6
    resumed = run_birdplane(*args, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(last_json(resumed.stdout)["trials"]) == 6
    assert_complete(mlflow_server.url, "killed", 6, 3)


def test_a_killed_trial_process_is_retried_from_its_last_checkpoint(slow_tree, mlflow_server, tmp_path):
    space = write_space(tmp_path, epochs=6)
    proc = start(sweep_args(tmp_path, slow_tree, mlflow_server.url, "workerkill", 2, space, "--max-concurrent", 1, "--json"))
    wait_for(lambda: epochs_logged(mlflow_server.url, "workerkill") >= 2, proc, what="two epochs of the first trial")
    pids = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"], capture_output=True, text=True).stdout.split()
    assert pids, "the trial's worker process"
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    summary = last_json(out)
    assert len(summary["trials"]) == 2
    assert_complete(mlflow_server.url, "workerkill", 2, 6)
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(tmp_path / "ray" / "workerkill"))
    retried = [t for t in analysis.trials if t.run_metadata.num_failures > 0]
    assert len(retried) == 1
    epochs = result_epochs(Path(retried[0].storage.trial_fs_path))
    assert epochs.count(1) == 1 and epochs[-1] == 6, f"continued from a checkpoint, not from epoch 0: {epochs}"


def test_a_diverging_trial_is_marked_and_the_sweep_goes_on(slow_tree, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = write_space(tmp_path, depth=1, width=64, activation="relu", loss="ce", epochs=2,
                        lr={"choices": [1.0e30, 0.01]})
    proc = run_birdplane(*sweep_args(tmp_path, slow_tree, uri, "nan", 6, space, "--json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    _, runs = children(uri, "nan")
    outcomes = {r.data.tags["outcome"] for r in runs}
    assert len(runs) == 6 and outcomes == {"diverged", "completed"}
    assert all(r.info.status == "FINISHED" for r in runs)
    best = summary["best"]
    assert best["config"]["lr"] == 0.01 and best["val_acc"] > 0.5


def test_a_diverged_result_reaches_optuna_as_a_completed_bad_value():
    from ray.tune.search.optuna import OptunaSearch
    import optuna

    from trainables.tune_adapter import reportable

    searcher = OptunaSearch(space={"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)},
                            metric="val_loss", mode="min", sampler=optuna.samplers.RandomSampler(seed=0))
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", result=reportable({"val_loss": float("nan"), "val_acc": 0.5, "epoch": 1}))
    trial = searcher._ot_study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == float("inf")


def test_mlflow_outage_mid_sweep_loses_nothing_when_the_server_returns(slow_tree, tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    try:
        proc = start(sweep_args(tmp_path, slow_tree, server.url, "outage", 4, None, "--max-concurrent", 1))
        wait_for(lambda: epochs_logged(server.url, "outage") >= 1, proc, what="the first epoch in MLflow")
        server.stop()
        time.sleep(12)  # trials keep training; their MLflow calls queue up and retry
        assert proc.poll() is None, "training goes on without the server"
        server.start()
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out[-3000:]
        assert_complete(server.url, "outage", 4, 3)
    finally:
        server.stop()


def test_mlflow_down_until_the_end_is_recovered_by_sync(slow_tree, tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    try:
        args = sweep_args(tmp_path, slow_tree, server.url, "longoutage", 3, None, "--max-concurrent", 1)
        proc = start(args, env={"BIRDPLANE_MLFLOW_DRAIN_S": "5"})
        wait_for(lambda: epochs_logged(server.url, "longoutage") >= 1, proc, what="the first epoch in MLflow")
        server.stop()
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0 and "birdplane sync" in out, out[-3000:]
        server.start()
        synced = run_birdplane("sync", "--name", "longoutage", "--storage-path", tmp_path / "ray")
        assert synced.returncode == 0, synced.stderr[-3000:]
        assert_complete(server.url, "longoutage", 3, 3)
        again = run_birdplane("sync", "--name", "longoutage", "--storage-path", tmp_path / "ray")
        assert again.returncode == 0 and "0 runs completed" in again.stdout
        assert_complete(server.url, "longoutage", 3, 3)  # nothing duplicated by a second sync
    finally:
        server.stop()


def test_losing_a_node_mid_sweep_retries_its_trials_on_the_other(slow_tree, mlflow_server, tmp_path):
    from tests.servers import RayNode

    head = RayNode(tmp_path / "ray-logs").start()
    worker = RayNode(tmp_path / "ray-logs", head_address=head.address).start()
    try:
        space = write_space(tmp_path, epochs=5)
        proc = start(sweep_args(tmp_path, slow_tree, mlflow_server.url, "nodeloss", 4, space,
                                "--address", head.address, "--json"), env={"RAY_AUTH_MODE": "token"})
        # Both nodes busy: two trials have reported an epoch.
        wait_for(lambda: sum(len(MlflowClient(mlflow_server.url).get_metric_history(r.info.run_id, "val_acc")) >= 1
                             for r in children(mlflow_server.url, "nodeloss")[1]) >= 2, proc, what="two running trials")
        worker.stop()
        out, _ = proc.communicate(timeout=500)
        assert proc.returncode == 0, out[-3000:]
        assert len(last_json(out)["trials"]) == 4
        assert_complete(mlflow_server.url, "nodeloss", 4, 5)
        from ray.tune import ExperimentAnalysis

        analysis = ExperimentAnalysis(str(tmp_path / "ray" / "nodeloss"))
        assert any(t.run_metadata.num_failures > 0 for t in analysis.trials), "a trial was retried"
    finally:
        worker.stop()
        head.stop()
