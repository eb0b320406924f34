"""A study's name is taken once: two starts at once, a second --resume of a running study, a study
MLflow already holds, a fresh store opened by several processes at once; and `sync` never deletes
a run that holds completed results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from analysis.record import ROLE_ORPHAN, ROLE_TRIAL, TAG_OUTCOME, TAG_PARENT, TAG_ROLE, TAG_STUDY, TAG_TRIAL
from study.errors import UsageError
from study.namelock import LOCK_FILE, claimed
from tests.conftest import REPO, make_image_tree, run_birdplane


def python(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )


def test_a_new_sqlite_store_opened_by_four_processes_at_once_is_created_once_without_a_crash(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 8  # every process has imported MLflow by then: they open the store together
    code = """
        import sys, time
        from study import records
        uri, start = sys.argv[1], float(sys.argv[2])
        while time.time() < start:
            time.sleep(0.001)
        client = records.open_client(uri)
        client.create_experiment("e-" + str(time.time_ns()))
    """
    procs = [python(code, uri, start) for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e[-600:] for e in errors]
    assert len(MlflowClient(uri).search_experiments()) == 5  # Default and one each
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"], "no lock file beside the store"


def test_a_running_driver_s_lock_refuses_a_second_resume_or_a_sync_and_a_sigkilled_driver_s_does_not(tmp_path, capsys):
    path = tmp_path / "ray" / "held"
    holder = python(
        """
        import sys, time
        from study.namelock import claimed
        from study import manifest
        with claimed(sys.argv[1], "held", resume=False):
            uri = "sqlite:///" + sys.argv[1] + "/mlflow.db"
            manifest.write(sys.argv[1], manifest.Manifest("sweep", "held", "held", uri, "", {}, {}))
            print("held", flush=True)
            time.sleep(120)
        """,
        path,
    )
    assert holder.stdout.readline().strip() == "held", holder.stderr.read()
    with pytest.raises(UsageError, match="already exists under"):
        with claimed(str(path), "held", resume=False):
            pass
    with pytest.raises(UsageError, match="is running in another process"):
        with claimed(str(path), "held", resume=True):
            pass
    from study.cli import main

    assert main(["sync", "--name", "held", "--storage-path", str(tmp_path / "ray")]) == 2
    assert "is running in another process" in capsys.readouterr().err
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (path / LOCK_FILE).exists(), "the killed driver left its lock file"
    with claimed(str(path), "held", resume=True):  # and it does not block a --resume
        pass


def test_a_start_that_fails_before_its_manifest_gives_its_name_back(tmp_path):
    path = tmp_path / "ray" / "early"
    with pytest.raises(RuntimeError):
        with claimed(str(path), "early", resume=False):
            assert path.is_dir()
            raise RuntimeError("the cluster check failed")
    assert not path.parent.exists(), "nor the storage folder it made"
    with claimed(str(path), "early", resume=False):
        pass


def test_a_fresh_start_is_refused_when_mlflow_already_holds_the_study(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("taken")
    parent = client.create_run(exp, tags={TAG_STUDY: "taken", TAG_ROLE: "sweep"}).info.run_id
    tree = make_image_tree(tmp_path / "images", per_class=4, test_per_class=2, classes=("airplane", "bird"))
    proc = run_birdplane(
        *("sweep", "--smoke", "--num-samples", 1, "--epochs", 1, "--name", "taken"),
        *("--data-root", tree, "--cache-dir", tmp_path / "cache"),
        *("--storage-path", tmp_path / "elsewhere", "--tracking-uri", uri),
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"already holds the sweep 'taken' (parent run {parent})" in lines[0], lines
    assert not (tmp_path / "elsewhere" / "taken").exists(), "the name was given back"
    assert len(client.search_runs([exp])) == 1, "no second parent run"


def test_sync_soft_deletes_only_unfinished_orphans_and_keeps_a_finished_one(tmp_path):
    from study.sync import retire_orphans
    from study.tracking import MlflowTrialLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MlflowTrialLogger(uri, "orphans", "orphans", {}, {}, {}, key=str(tmp_path))
    logger.open_parent()
    client = MlflowClient(uri)

    def child(trial: str, status: str | None) -> str:
        tags = {TAG_PARENT: logger.parent_run_id, TAG_TRIAL: trial, TAG_ROLE: ROLE_TRIAL}
        run_id = client.create_run(logger.experiment_id, tags=tags).info.run_id
        if status:
            client.set_tag(run_id, TAG_OUTCOME, "completed")
            client.log_metric(run_id, "val_acc", 0.9, step=1)
            client.set_terminated(run_id, status=status)
        return run_id

    known, done, running = child("known", "FINISHED"), child("done", "FINISHED"), child("running", None)
    retired, kept = retire_orphans(client, logger, {"known"})
    assert retired == [(running, "running", "RUNNING")] and kept == [(done, "done", "FINISHED")]
    assert client.get_run(running).info.lifecycle_stage == "deleted"
    finished = client.get_run(done)
    assert finished.info.lifecycle_stage == "active" and finished.data.metrics["val_acc"] == 0.9
    assert finished.data.tags[TAG_ROLE] == ROLE_ORPHAN and finished.data.tags[TAG_OUTCOME] == "completed"
    assert client.get_run(known).data.tags[TAG_ROLE] == ROLE_TRIAL


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_starts_of_one_study_at_once_on_a_new_store_one_runs_the_other_is_refused(tmp_path):
    tree = make_image_tree(tmp_path / "images", per_class=20, test_per_class=4, classes=("airplane", "bird"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        *("-m", "study.cli", "sweep", "--smoke", "--num-samples", 2, "--epochs", 1, "--name", "twin"),
        *("--data-root", tree, "--cache-dir", tmp_path / "cache", "--storage-path", tmp_path / "ray"),
        *("--tracking-uri", uri),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=500) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [(p.returncode, err[-1500:]) for p, (_, err) in zip(procs, outs, strict=True)]
    refused = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode == 2)
    lines = refused.strip().splitlines()
    assert len(lines) == 1 and "a study named 'twin' already exists under" in lines[0], refused[-2000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("twin").experiment_id])
    roles = sorted(r.data.tags[TAG_ROLE] for r in runs)
    assert roles == ["sweep", "trial", "trial"], roles
    assert len(list(Path(tmp_path / "ray" / "twin").glob("experiment_state-*.json"))) == 1
