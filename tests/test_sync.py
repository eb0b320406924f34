"""`birdplane sync` after the tracking server was down past a study's end: the replayed runs are the
runs the live logger would have written (params, tags, names, config.json), for either kind of study,
and `report` and `rerun` work on them."""

from __future__ import annotations

import shlex
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from mlflow import MlflowClient

from analysis.record import CONFIG_ARTIFACT, TAG_NODE, TAG_PARENT, TAG_ROLE, TAG_STUDY, TAG_TRIAL
from tests.conftest import Started, make_image_tree, run_together
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
    tmp_path.mkdir(parents=True, exist_ok=True)
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
    by_key = {(r.data.params.get("seed"), r.data.params.get("hidden_sizes")): r for r in runs}
    assert len(by_key) == len(runs), f"{experiment}: two trial runs of one trial"  # a run written twice
    return by_key


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
        "epochs logged": [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")],
        "config.json": resolved,
        "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
    }


KINDS = ("capacity", "sweep")


def start_all(servers) -> None:
    """Start several MLflow servers at once (each takes ~10 s to answer)."""
    with ThreadPoolExecutor() as pool:
        list(pool.map(lambda server: server.start(), servers))


def test_sync_after_an_outage_past_the_end_writes_the_runs_the_live_logger_writes(tree, mlflow_server, tmp_path):
    """Both kinds at once, each a live study beside one whose server went away: four studies, then
    two syncs, two reports and two reruns, each batch run concurrently (the suite's time)."""
    logs = tmp_path / "logs"
    servers = {kind: MlflowServer(tmp_path / f"server-{kind}") for kind in KINDS}
    start_all(servers.values())
    started: list[Started] = []

    def launch(label: str, *args, env=None) -> Started:
        started.append(Started(logs, label, *args, env=env))
        return started[-1]

    try:
        live = {
            k: launch(f"{k}-live", *study_args(k, tmp_path / k, tree, mlflow_server.url, f"{k}-live")) for k in KINDS
        }
        drain = {"BIRDPLANE_MLFLOW_DRAIN_S": "3"}
        down = {
            k: launch(f"{k}-down", *study_args(k, tmp_path / k, tree, servers[k].url, f"{k}-down"), env=drain)
            for k in KINDS
        }
        # The parent run is opened (synchronously) before birdplane's manifest is written and any
        # trial starts; each server goes away right after. Killed, not stopped: waiting for one
        # server's graceful stop once let the other study finish before its own server went away
        # (no undelivered call, no sync command printed).
        waiting = set(KINDS)
        while waiting:
            for kind in sorted(waiting):
                assert down[kind].proc.poll() is None, down[kind].result().stderr[-3000:]
                if (tmp_path / kind / "ray" / f"{kind}-down" / "birdplane.json").exists():
                    servers[kind].kill()
                    waiting.discard(kind)
            time.sleep(0.05)
        commands = {}
        for kind in KINDS:
            done = live[kind].result(timeout=600)
            assert done.returncode == 0, f"{kind}: {done.stderr[-3000:]}"
            ended = down[kind].result(timeout=600)
            assert ended.returncode == 0, f"{kind}: {ended.stderr[-3000:]}"
            warning = [line for line in ended.stdout.splitlines() if "MLflow calls were not delivered" in line]
            assert len(warning) == 1, ended.stdout[-3000:]
            commands[kind] = warning[0].split("`")[1]
            assert commands[kind].startswith(f"birdplane sync --name {kind}-down --storage-path "), commands[kind]

        start_all(servers.values())
        # The commands as printed, word for word.
        synced = run_together(logs, {f"sync-{k}": shlex.split(commands[k])[1:] for k in KINDS})
        for label, result in synced.items():
            assert result.returncode == 0, f"{label}: {result.stderr[-3000:]}"
            assert "runs completed" in result.stdout and ": 0 runs completed" not in result.stdout, result.stdout
        for kind in KINDS:
            live_runs = trial_runs(mlflow_server.url, f"{kind}-live")
            expected = {i: as_logged(mlflow_server.url, r) for i, r in live_runs.items()}
            replayed = {
                i: as_logged(servers[kind].url, r) for i, r in trial_runs(servers[kind].url, f"{kind}-down").items()
            }
            assert sorted(replayed) == sorted(expected), kind
            for index, run in expected.items():
                differ = {k: (replayed[index][k], v) for k, v in run.items() if replayed[index][k] != v}
                assert not differ, f"{kind} trial {index}: (synced, live) differ in {differ}"
            assert all(r["params"].get("hidden_sizes") and r["config.json"]["train"] for r in replayed.values())

        after = {}
        for kind in KINDS:
            where = ["--experiment", f"{kind}-down", "--tracking-uri", servers[kind].url]
            after[f"report-{kind}"] = ["report", *where, "--out", tmp_path / kind / "r"]
            after[f"rerun-{kind}"] = ["rerun", *where, "--seeds", 1, "--epochs", 1]
        for label, result in run_together(logs, after).items():
            assert result.returncode == 0, f"{label}: {result.stderr[-3000:]}"
            if label.startswith("rerun"):
                assert "test_acc" in result.stdout, result.stdout[-2000:]
        assert all((tmp_path / kind / "r" / "report.html").is_file() for kind in KINDS)
    finally:
        for study in started:
            stop_group(study.proc)
        for server in servers.values():
            server.stop()
