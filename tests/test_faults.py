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

from study.preflight import MLFLOW_HTTP_TIMEOUT_S
from tests.conftest import last_json, make_image_tree, run_birdplane
from tests.servers import MlflowServer, descendants, stop_group

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def slow_tree(tmp_path_factory):
    """Enough images that a trial takes a few seconds, so faults land mid-trial."""
    return make_image_tree(
        tmp_path_factory.mktemp("fault-images"), per_class=200, test_per_class=5, classes=("airplane", "bird")
    )


def write_space(folder: Path, **over) -> Path:
    space = {
        "depth": 2,
        "width": {"low": 1024, "high": 2048},
        "batch_size": {"choices": [16, 32]},
        "lr": {"low": 1e-3, "high": 3e-2, "log": True},
        "loss": {"choices": ["nll", "ce"]},
        "epochs": 3,
        **over,
    }
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def sweep_args(tmp_path, tree, uri, name, samples, space=None, *extra):
    return [
        "sweep",
        "--num-samples",
        samples,
        "--space",
        space or write_space(tmp_path),
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
        "--scheduler",
        "none",
        *extra,
    ]


def start(args, env=None) -> subprocess.Popen:
    """The sweep in its own process group, its output going to a file: a pipe that nobody reads until
    the end fills up (64 KiB) and blocks a chatty sweep mid-run (seen during an MLflow outage, when
    every retried call logs a warning). The file lies in the test run's own temporary folder
    (conftest's isolated_run_folders, removed at the end of the run)."""
    import tempfile

    with tempfile.NamedTemporaryFile(
        "w", prefix="sweep-", suffix=".log", delete=False, dir=os.environ["BIRDPLANE_TEST_TMP"]
    ) as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "study.cli", *map(str, args)],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    proc.log_path = log.name
    return proc


def output(proc: subprocess.Popen) -> str:
    with open(proc.log_path, errors="replace") as f:
        return f.read()


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for the sweep to end; its whole output."""
    proc.wait(timeout=timeout)
    return output(proc)


def children(uri, experiment, deleted=False):
    from mlflow.entities import ViewType

    from study.records import open_client

    # A sqlite store that the sweep is still creating is opened under the sweep's own lock: a
    # second process migrating it at once would crash the sweep ("table ... already exists").
    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
    runs = client.search_runs([exp.experiment_id], max_results=1000, run_view_type=view)
    return client, [r for r in runs if r.data.tags.get("birdplane.role") == "trial"]


def wait_for(predicate, proc, timeout=300, what="", poll=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the store may be mid-creation
            pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sweep ended before {what}: {output(proc)[-3000:]}")
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def finished_count(uri, experiment):
    return sum(c.info.status == "FINISHED" for c in children(uri, experiment)[1])


def epochs_logged(uri, experiment):
    client, runs = children(uri, experiment)
    return max((len(client.get_metric_history(r.info.run_id, "val_acc")) for r in runs), default=0)


def assert_complete(uri, experiment, samples, epochs):
    client, runs = children(uri, experiment)
    # A run's key: its trial, and its member in a population trial (a capacity study's cell).
    ids = [(r.data.tags["ray_trial_id"], r.data.tags.get("birdplane.member")) for r in runs]
    assert len(runs) == samples and len(set(ids)) == samples, ids
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert steps == list(range(1, epochs + 1)), steps
        assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"config.json", "model.pt"}


def ray_results(experiment_dir: Path) -> dict[str, list[dict]]:
    """Ray's own record of every trial's reported results (result.json), by trial id."""
    out = {}
    for path in sorted(experiment_dir.glob("trial_*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def results_reported(experiment_dir: Path) -> int:
    try:
        return sum(len(rows) for rows in ray_results(experiment_dir).values())
    except (OSError, ValueError):  # a line mid-write
        return 0


def epochs_of(rows: list[dict]) -> list[int]:
    return [r["epoch"] for r in rows]


def kill_after_results(proc, experiment_dir: Path, count: int) -> None:
    """SIGKILL the driver (its whole session) once Ray has recorded ``count`` results (its
    result.json files are flushed at every experiment snapshot, which these tests make frequent)."""
    kill_when(proc, lambda: results_reported(experiment_dir) >= count, f"{count} reported results")


def kill_when(proc, predicate, what: str) -> None:
    wait_for(predicate, proc, what=what, poll=0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def outbox_max_backoff() -> float:
    """The Outbox's longest wait between retries (its constructor's default, as the tracking callback makes it)."""
    import inspect

    from study.tracking import Outbox

    return inspect.signature(Outbox.__init__).parameters["max_backoff"].default


def epochs_in_mlflow(uri, experiment) -> int:
    client, runs = children(uri, experiment)
    return sum(len(client.get_metric_history(r.info.run_id, "val_acc")) for r in runs)


def test_sigkilled_driver_resumes_the_running_trial_from_its_checkpoint_in_the_same_run(
    slow_tree, mlflow_server, tmp_path
):
    # Tune snapshots its experiment state every step here, so the trial running at the kill is in
    # the snapshot with its latest checkpoint: the resumed sweep must continue it, in the same run.
    args = sweep_args(
        tmp_path, slow_tree, mlflow_server.url, "killed", 6, write_space(tmp_path, epochs=6), "--max-concurrent", 1
    )
    experiment = tmp_path / "ray" / "killed"
    proc = start(args, env={"TUNE_GLOBAL_CHECKPOINT_S": "0"})
    kill_after_results(proc, experiment, 14)  # trials 1 and 2 done (6 epochs each), the third at epoch 2
    before = ray_results(experiment)
    running = [t for t, rows in before.items() if epochs_of(rows)[-1] < 6]
    assert len(running) == 1, {t: epochs_of(r) for t, r in before.items()}
    trial = running[0]
    _, runs_before = children(mlflow_server.url, "killed")
    run_before = {r.data.tags["ray_trial_id"]: r.info.run_id for r in runs_before}
    assert trial in run_before and finished_count(mlflow_server.url, "killed") < 6

    resumed = run_birdplane(*args, "--resume", "--json", env={"TUNE_GLOBAL_CHECKPOINT_S": "0"}, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(last_json(resumed.stdout)["trials"]) == 6
    assert_complete(mlflow_server.url, "killed", 6, 6)
    after = ray_results(experiment)
    epochs = epochs_of(after[trial])
    assert epochs.count(1) == 1 and epochs[-1] == 6, f"continued from its checkpoint, not from epoch 1: {epochs}"
    _, runs_after = children(mlflow_server.url, "killed")
    adopted = {r.data.tags["ray_trial_id"]: r for r in runs_after}[trial]
    assert adopted.info.run_id == run_before[trial], "the resumed trial adopted its run"
    assert adopted.data.tags["outcome"] == "completed"
    assert not children(mlflow_server.url, "killed", deleted=True)[1], "no orphans when the snapshot knew every trial"


@pytest.mark.long  # past the default suite's budget: pytest --run-long
def test_runs_of_trials_a_stale_snapshot_never_knew_are_retired_as_orphans(slow_tree, mlflow_server, tmp_path):
    # Tune snapshots its state only at the first step here: trials created later are unknown to
    # the restored experiment, and their runs must not count as trials of the study.
    from ray.tune import ExperimentAnalysis

    # (Tune also forces a snapshot once a trial has made num_to_keep=2 checkpoints, and may write it
    # a step or two later: the kill waits for a run whose trial the snapshot on disk does not name.)
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "3600"}
    args = sweep_args(
        tmp_path,
        slow_tree,
        mlflow_server.url,
        "stale",
        6,
        write_space(tmp_path, epochs=3, width=2048, batch_size=16),
        "--max-concurrent",
        1,
    )
    experiment = tmp_path / "ray" / "stale"
    proc = start(args, env=env)

    # Ray's result.json files are flushed only with a snapshot here, so the kill point is read in
    # MLflow: a trial running whose run the newest snapshot cannot know, after two finished runs.
    def unknown_running() -> bool:
        snapshot = "".join(p.read_text() for p in experiment.glob("experiment_state-*.json"))
        runs = children(mlflow_server.url, "stale")[1]
        done = sum(r.info.status == "FINISHED" for r in runs)
        return done >= 2 and any(
            r.info.status == "RUNNING" and r.data.tags["ray_trial_id"] not in snapshot for r in runs
        )

    kill_when(proc, unknown_running, "a RUNNING run of a trial Ray's snapshot does not know")
    known = {t.trial_id for t in ExperimentAnalysis(str(experiment)).trials}
    _, runs_before = children(mlflow_server.url, "stale")
    status_before = {r.info.run_id: r.info.status for r in runs_before}
    unknown = {r.info.run_id for r in runs_before if r.data.tags["ray_trial_id"] not in known}
    assert len(unknown) >= 1, (known, [r.data.tags["ray_trial_id"] for r in runs_before])
    adopted = {r.info.run_id for r in runs_before} - unknown

    resumed = run_birdplane(*args, "--resume", "--json", env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(last_json(resumed.stdout)["trials"]) == 6
    assert_complete(mlflow_server.url, "stale", 6, 3)
    # Runs that never finished are retired (soft-deleted); a finished run holds completed results and
    # is never deleted: it leaves the study (role orphan) and stays.
    finished_unknown = {r for r in unknown if status_before[r] == "FINISHED"}
    client, retired = children(mlflow_server.url, "stale", deleted=True)
    assert {r.info.run_id for r in retired} == unknown - finished_unknown
    for run in retired:
        assert run.data.tags["outcome"] == "orphaned" and run.info.lifecycle_stage == "deleted"
        assert run.info.status == "KILLED"
    exp = client.get_experiment_by_name("stale").experiment_id
    kept = [r for r in client.search_runs([exp], max_results=1000) if r.data.tags.get("birdplane.role") == "orphan"]
    assert {r.info.run_id for r in kept} == finished_unknown
    assert all(r.info.status == "FINISHED" and r.data.tags["outcome"] == "completed" for r in kept)
    assert "RUNNING" in {status_before[r] for r in unknown}, "the trial running at the kill was one of them"
    live = {r.info.run_id for r in children(mlflow_server.url, "stale")[1]}
    assert adopted <= live, "runs of trials the snapshot knew were adopted, not replaced"


def test_a_killed_trial_process_is_retried_from_its_last_checkpoint(slow_tree, mlflow_server, tmp_path):
    space = write_space(tmp_path, epochs=6)
    experiment = tmp_path / "ray" / "workerkill"
    proc = start(
        sweep_args(tmp_path, slow_tree, mlflow_server.url, "workerkill", 2, space, "--max-concurrent", 1, "--json")
    )
    wait_for(lambda: results_reported(experiment) >= 2, proc, what="two epochs of the first trial", poll=0.05)
    # The process the trial reports it runs in, from Ray's record of its results: only that one is killed.
    (rows,) = ray_results(experiment).values()
    pid = int(rows[-1]["pid"])
    # Ray's record names the process; kill it only if it is one this test started (below the sweep).
    assert pid in descendants(proc.pid), f"pid {pid} from result.json is not below the sweep {proc.pid}"
    os.kill(pid, signal.SIGKILL)
    out = finish(proc, 300)
    assert proc.returncode == 0, out[-3000:]
    summary = last_json(out)
    assert len(summary["trials"]) == 2
    assert_complete(mlflow_server.url, "workerkill", 2, 6)
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(tmp_path / "ray" / "workerkill"))
    retried = [t for t in analysis.trials if t.run_metadata.num_failures > 0]
    assert len(retried) == 1
    epochs = epochs_of(ray_results(experiment)[retried[0].trial_id])
    assert epochs.count(1) == 1 and epochs[-1] == 6, f"continued from a checkpoint, not from epoch 0: {epochs}"


def test_a_diverging_trial_is_marked_and_the_sweep_goes_on(slow_tree, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = write_space(
        tmp_path, depth=1, width=64, activation="relu", loss="ce", epochs=2, lr={"choices": [1.0e30, 0.01]}
    )
    proc = run_birdplane(*sweep_args(tmp_path, slow_tree, uri, "nan", 6, space, "--json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    _, runs = children(uri, "nan")
    outcomes = {r.data.tags["outcome"] for r in runs}
    assert len(runs) == 6 and outcomes == {"diverged", "completed"}
    assert all(r.info.status == "FINISHED" for r in runs)
    best = summary["best"]
    assert best["config"]["lr"] == 0.01 and best["val_acc"] > 0.5


def test_mlflow_outage_mid_sweep_loses_nothing_and_delivers_soon_after_the_server_returns(slow_tree, tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    experiment = tmp_path / "ray" / "outage"
    try:
        proc = start(
            sweep_args(
                tmp_path, slow_tree, server.url, "outage", 6, write_space(tmp_path, epochs=6), "--max-concurrent", 1
            )
        )
        wait_for(lambda: epochs_logged(server.url, "outage") >= 1, proc, what="the first epoch in MLflow", poll=0.1)
        logged = epochs_in_mlflow(server.url, "outage")  # at most what MLflow holds when it stops
        server.stop()
        at_outage = results_reported(experiment)
        # Training goes on without the server: Ray records every remaining epoch during the outage.
        wait_for(lambda: results_reported(experiment) == 36, proc, what="all 36 epochs in Ray's results")
        assert at_outage < 36
        server.start()
        returned = time.monotonic()
        # The mechanism, not this machine's speed, bounds the wait: the call in flight gives up after
        # MLflow's HTTP timeout (no retries), the Outbox waits at most its longest backoff, and then
        # one call reaches the server. One call's time and one poll's are measured here, now.
        started = time.monotonic()
        epochs_in_mlflow(server.url, "outage")
        poll_s = time.monotonic() - started
        bound = MLFLOW_HTTP_TIMEOUT_S + outbox_max_backoff() + 3 * poll_s
        wait_for(
            lambda: epochs_in_mlflow(server.url, "outage") > min(logged, 35),
            proc,
            timeout=bound,
            poll=0.2,
            what=f"the first delivery within {bound:.1f} s of the server's return",
        )
        print(f"first delivery {time.monotonic() - returned:.1f} s after the server returned (bound {bound:.1f} s)")
        # The rest is the backlog, delivered in order; no clock on it beyond the hang guard.
        wait_for(lambda: assert_complete(server.url, "outage", 6, 6) is None, proc, what="every run delivered")
        print(f"delivered {time.monotonic() - returned:.1f} s after the server returned")
        out = finish(proc, 120)
        assert proc.returncode == 0, out[-3000:]
    finally:
        if "proc" in locals():
            stop_group(proc)  # only if the test failed half-way: the sweep it started must not outlive it
        server.stop()


@pytest.mark.long  # past the default suite's budget: pytest --run-long
def test_mlflow_down_until_the_end_is_recovered_by_sync(slow_tree, tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    try:
        # The storage path as a URI: sync reads birdplane's manifest through pyarrow, not os.path.
        storage = f"file://{tmp_path / 'ray-uri'}"
        args = sweep_args(tmp_path, slow_tree, server.url, "longoutage", 3, None, "--max-concurrent", 1)
        args[args.index("--storage-path") + 1] = storage
        proc = start(args, env={"BIRDPLANE_MLFLOW_DRAIN_S": "5"})
        wait_for(lambda: epochs_logged(server.url, "longoutage") >= 1, proc, what="the first epoch in MLflow")
        server.stop()
        out = finish(proc, 300)
        assert proc.returncode == 0 and "birdplane sync" in out, out[-3000:]
        server.start()
        synced = run_birdplane("sync", "--name", "longoutage", "--storage-path", storage)
        assert synced.returncode == 0, synced.stderr[-3000:]
        assert_complete(server.url, "longoutage", 3, 3)
        again = run_birdplane("sync", "--name", "longoutage", "--storage-path", storage)
        assert again.returncode == 0 and "0 runs completed" in again.stdout
        assert_complete(server.url, "longoutage", 3, 3)  # nothing duplicated by a second sync
    finally:
        if "proc" in locals():
            stop_group(proc)
        server.stop()


def test_a_crashed_node_s_trials_continue_from_their_checkpoints_on_the_other(slow_tree, mlflow_server, tmp_path):
    from ray.tune import ExperimentAnalysis

    from tests.servers import RayNode, descendants

    head = RayNode(tmp_path / "ray-logs").start()
    worker = RayNode(tmp_path / "ray-logs", head_address=head.address).start()
    experiment = tmp_path / "ray" / "nodeloss"
    try:
        space = write_space(tmp_path, epochs=5)
        proc = start(
            sweep_args(
                tmp_path, slow_tree, mlflow_server.url, "nodeloss", 4, space, "--address", head.address, "--json"
            ),
            env={"RAY_AUTH_MODE": "token"},
        )
        # Both nodes busy: two trials have reported an epoch (and so hold a checkpoint).
        wait_for(lambda: len(ray_results(experiment)) >= 2, proc, what="two running trials", poll=0.1)
        # A crash, not a shutdown: SIGKILL the worker node's raylet, a child of the node we started.
        raylets = [pid for pid, name in descendants(worker.proc.pid).items() if name == "raylet"]
        assert len(raylets) == 1, descendants(worker.proc.pid)
        os.kill(raylets[0], signal.SIGKILL)
        out = finish(proc, 300)
        assert proc.returncode == 0, out[-3000:]
        assert len(last_json(out)["trials"]) == 4
        assert_complete(mlflow_server.url, "nodeloss", 4, 5)
        retried = [t for t in ExperimentAnalysis(str(experiment)).trials if t.run_metadata.num_failures > 0]
        assert retried, "the crashed node's trial was retried"
        results = ray_results(experiment)
        for trial in retried:
            epochs = epochs_of(results[trial.trial_id])
            assert epochs.count(1) == 1 and epochs[-1] == 5, f"continued from a checkpoint: {epochs}"
    finally:
        worker.stop()
        head.stop()
