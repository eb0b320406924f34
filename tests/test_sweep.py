"""End-to-end sweeps: real Ray (local and a 2-node cluster), a real `mlflow server` on 127.0.0.1."""

import collections
import signal
import time

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import last_json, make_image_tree, run_birdplane
from tests.test_faults import epochs_of, finish, output, ray_results, results_reported, start

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def sweep_tree(tmp_path_factory):
    return make_image_tree(
        tmp_path_factory.mktemp("sweep-images"), per_class=40, test_per_class=10, classes=("airplane", "bird")
    )


def small_space(tmp_path, epochs=2, **over) -> str:
    space = {
        "depth": {"low": 1, "high": 2},
        "width": {"low": 16, "high": 128, "log": True},
        "batch_size": {"choices": [16, 32]},
        "lr": {"low": 1e-3, "high": 1e-1, "log": True},
        "loss": {"choices": ["nll", "ce", "mse", "bce"]},
        "epochs": epochs,
        **over,
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return str(path)


def study_runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("birdplane.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("birdplane.role") == "trial"]
    return client, parents, children


def test_smoke_sweep_records_every_trial_as_a_nested_mlflow_run(smoke_sweep, mlflow_server):
    summary = smoke_sweep["summary"]
    assert len(summary["trials"]) == 5 and summary["best"]["val_acc"] is not None
    client, parents, children = study_runs(mlflow_server.url, "smoke")
    assert len(parents) == 1 and len(children) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_id == summary["parent_run_id"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "search_space.json",
        "data.json",
        "sweep.json",
    }
    assert parent.data.params["num_samples"] == "5"
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["outcome"] in ("completed", "stopped_early", "diverged")
        assert child.info.status == "FINISHED"
        assert child.data.metrics["param_count"] > 0 and "best_val_acc" in child.data.metrics
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "gap"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps == list(range(1, int(child.data.metrics["epochs_run"]) + 1)), key
        for key in ("lr", "batch_size", "loss", "hidden_sizes", "depth"):
            assert key in child.data.params
        assert {a.path for a in client.list_artifacts(child.info.run_id)} == {"config.json", "model.pt"}
    trial_ids = {c.data.tags["ray_trial_id"] for c in children}
    assert trial_ids == {t["trial_id"] for t in summary["trials"]}


def test_multi_objective_sweep_really_optimises_both_objectives(sweep_tree, tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = run_birdplane(
        "sweep",
        "--smoke",
        "--num-samples",
        3,
        "--space",
        small_space(tmp_path),
        "--objectives",
        "val_acc,param_count",
        "--scheduler",
        "none",
        "--optuna-storage",
        storage,
        "--data-root",
        sweep_tree,
        "--cache-dir",
        tmp_path / "cache",
        "--name",
        "mo",
        "--storage-path",
        tmp_path / "ray",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Pareto set" in proc.stdout
    # What the searcher optimised, from the Optuna study it persisted: two directions, two values a trial.
    study = optuna.load_study(study_name="mo", storage=storage)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3 and all(len(t.values) == 2 for t in complete)
    assert all(t.values[1] == int(t.values[1]) and t.values[1] > 1000 for t in complete), "param_count"


def test_an_interrupted_sweep_resumes_to_exactly_num_samples_trials_and_runs(mlflow_server, tmp_path):
    # Trials of a few seconds each, so the interruption lands mid-sweep.
    tree = make_image_tree(tmp_path / "images", per_class=200, test_per_class=5, classes=("airplane", "bird"))
    space = small_space(tmp_path, epochs=6, width={"low": 1024, "high": 2048}, depth=2)
    common = [
        "--num-samples",
        6,
        "--space",
        space,
        "--data-root",
        tree,
        "--cache-dir",
        tmp_path / "cache",
        "--name",
        "resumable",
        "--storage-path",
        tmp_path / "ray",
        "--tracking-uri",
        mlflow_server.url,
        "--scheduler",
        "none",
        "--max-concurrent",
        1,
    ]
    proc = start(["sweep", *common])  # output to a file: a full pipe would block the study
    # Interrupt at a known point: two trials done (6 epochs each) and the third at epoch 2.
    deadline = time.monotonic() + 300
    while results_reported(tmp_path / "ray" / "resumable") < 14 and time.monotonic() < deadline:
        assert proc.poll() is None, output(proc)[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out = finish(proc, 180)
    assert proc.returncode == 130 and "--resume" in out
    _, _, before = study_runs(mlflow_server.url, "resumable")
    finished_before = sum(c.info.status == "FINISHED" for c in before)
    assert 2 <= finished_before < 6, "the sweep was interrupted part-way"
    assert not [c for c in before if c.info.status == "RUNNING"], "interrupted runs are closed (KILLED)"

    before_resume = {t: epochs_of(rows) for t, rows in ray_results(tmp_path / "ray" / "resumable").items()}
    assert any(e[-1] < 6 for e in before_resume.values()), f"a trial was cut short: {before_resume}"
    resumed = run_birdplane("sweep", *common, "--resume", "--json", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = last_json(resumed.stdout)
    assert len(summary["trials"]) == 6
    # Ray's own record proves continuation (MLflow de-duplicates steps, so it cannot): no trial that
    # had reported epochs restarted at epoch 1, and trials cut short went on to the end.
    after_resume = {t: epochs_of(rows) for t, rows in ray_results(tmp_path / "ray" / "resumable").items()}
    for trial, epochs in before_resume.items():
        assert after_resume[trial].count(1) == 1 and after_resume[trial][-1] == 6, (trial, epochs, after_resume[trial])
    assert len(after_resume) == 6
    client, parents, children = study_runs(mlflow_server.url, "resumable")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags["ray_trial_id"] for c in children]
    assert len(children) == 6 and len(set(trial_ids)) == 6
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")]
        assert steps == list(range(1, 7)), "each epoch logged exactly once, continuous across the interruption"


@pytest.fixture()
def two_node_cluster(tmp_path):
    from tests.servers import RayNode

    head = RayNode(tmp_path / "ray-logs").start()
    worker = RayNode(tmp_path / "ray-logs", head_address=head.address)
    try:
        worker.start()
        yield head
    finally:
        worker.stop()
        head.stop()


@pytest.mark.long  # past the default suite's budget: pytest --run-long
def test_sweep_on_a_two_node_cluster_runs_trials_on_both_nodes(mlflow_server, two_node_cluster, tmp_path):
    env = {"RAY_AUTH_MODE": "token"}
    # Trials of a few seconds, so two run at once, one per node.
    tree = make_image_tree(tmp_path / "images", per_class=200, test_per_class=5, classes=("airplane", "bird"))
    space = small_space(tmp_path, width={"low": 1024, "high": 2048}, depth=2)
    args = [
        "sweep",
        "--num-samples",
        4,
        "--epochs",
        2,
        "--space",
        space,
        "--scheduler",
        "none",
        "--data-root",
        tree,
        "--cache-dir",
        tmp_path / "cache",
        "--address",
        two_node_cluster.address,
    ]
    refused = run_birdplane(
        *args,
        "--name",
        "local-store",
        "--storage-path",
        tmp_path / "shared",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'local.db'}",
        env=env,
    )
    assert refused.returncode == 2 and "tracking server" in refused.stderr.strip().splitlines()[-1]
    proc = run_birdplane(
        *args,
        "--name",
        "cluster",
        "--storage-path",
        tmp_path / "shared",
        "--tracking-uri",
        mlflow_server.url,
        "--json",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    nodes = collections.Counter(t["node_id"] for t in summary["trials"])
    assert len(summary["trials"]) == 4 and len(nodes) == 2, nodes
    _, _, children = study_runs(mlflow_server.url, "cluster")
    assert len(children) == 4
