"""A researcher's workflow end to end, on synthetic data with real Ray, a real mlflow server and a
real optuna-dashboard: the persisted Optuna study, extending a finished sweep, comparing studies,
exporting tidy tables and what MLflow's UI shows."""

import json
import shutil
import subprocess
import sys
import time
import urllib.request

import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import REPO, SMOKE_SPACE, last_json, make_image_tree, run_birdplane
from tests.servers import free_port, stop_group

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _optuna_study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def _states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


@pytest.fixture(scope="module")
def extended(mlflow_server, tmp_path_factory):
    """A 3-trial sweep "wf"; then a trial left RUNNING in its Optuna study (as a killed driver
    leaves one); then `--extend 2` with a wider lr range."""
    folder = tmp_path_factory.mktemp("workflow")
    tree = make_image_tree(folder / "images", per_class=40, test_per_class=10, classes=("airplane", "bird"), jitter=80)
    (folder / "space.yaml").write_text(yaml.safe_dump(SMOKE_SPACE))
    wider = {**SMOKE_SPACE, "lr": {"low": 1e-4, "high": 0.3, "log": True}}
    (folder / "wider.yaml").write_text(yaml.safe_dump(wider))
    common = ["--storage-path", folder / "ray", "--json"]
    first = run_birdplane(
        "sweep",
        "--smoke",
        "--num-samples",
        3,
        "--scheduler",
        "none",
        "--space",
        folder / "space.yaml",
        "--data-root",
        tree,
        "--cache-dir",
        folder / "cache",
        "--name",
        "wf",
        "--tracking-uri",
        mlflow_server.url,
        *common,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    # The default Optuna storage: beside the MLflow store; for a tracking server, in the Ray storage folder.
    url = f"sqlite:///{folder / 'ray' / 'optuna.db'}"
    before = _states(_optuna_study(url, "wf"))
    _optuna_study(url, "wf").ask()  # a trial a killed driver would leave RUNNING
    ext = run_birdplane("sweep", "--name", "wf", "--extend", 2, "--space", folder / "wider.yaml", *common)
    assert ext.returncode == 0, ext.stderr[-3000:]
    return {
        "folder": folder,
        "url": url,
        "uri": mlflow_server.url,
        "first": last_json(first.stdout),
        "ext": last_json(ext.stdout),
        "before": before,
        "tree": tree,
    }


def _children(client: MlflowClient, experiment: str, parent: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=100)


def test_a_sweep_persists_its_optuna_study_beside_the_store_with_every_trial_finished(smoke_sweep):
    study = _optuna_study(f"sqlite:///{smoke_sweep['folder'] / 'ray' / 'optuna.db'}", smoke_sweep["name"])
    assert _states(study) == ["COMPLETE"] * 5
    values = sorted(t.values[0] for t in study.trials)
    assert values == sorted(t["val_acc"] for t in smoke_sweep["summary"]["trials"])


def test_extend_continues_the_optuna_study_and_the_mlflow_parent_run(extended):
    client = MlflowClient(extended["uri"])
    first, ext = extended["first"], extended["ext"]
    assert extended["before"] == ["COMPLETE"] * 3
    # One Optuna study: the 3 earlier trials, the stale one failed (not RUNNING forever), 2 new ones
    # numbered after them: the sampler saw every earlier trial.
    study = _optuna_study(extended["url"], "wf")
    assert _states(study) == ["COMPLETE"] * 3 + ["FAIL"] + ["COMPLETE"] * 2
    new_lrs = sorted(t.params["lr"] for t in study.trials[4:])
    assert all(1e-4 <= lr <= 0.3 for lr in new_lrs)
    # The searcher itself (not only the persisted copy) started from the 3 finished trials: in its own
    # study the new trials are numbers 3 and 4, and a trial's seed is the sweep's base seed + its number.
    assert sorted(t["config"]["seed"] % 100_000 for t in ext["trials"]) == [3, 4], [t["config"] for t in ext["trials"]]
    # The same parent run, which now holds 5 trial runs and is FINISHED again, with the study's headline.
    assert ext["parent_run_id"] == first["parent_run_id"] and len(ext["trials"]) == 2
    children = [r for r in _children(client, "wf", first["parent_run_id"]) if r.data.tags["birdplane.role"] == "trial"]
    assert len(children) == 5
    assert {r.info.run_id for r in children} >= {t["run_id"] for t in ext["trials"]}
    parent = client.get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_completed"] == 5
    assert parent.data.metrics["study_best_val_acc"] == max(r.data.metrics["val_acc"] for r in children)
    # Its own Tune experiment, whose manifest names the sweep it extends.
    manifest = json.loads((extended["folder"] / "ray" / "wf-ext1" / "birdplane.json").read_text())
    assert manifest["options"]["extends"] == "wf" and manifest["parent_run_id"] == first["parent_run_id"]


def test_extend_refuses_what_it_cannot_do_in_one_line_and_writes_nothing(extended, tmp_path):
    folder = extended["folder"]
    narrow = {**SMOKE_SPACE, "lr": {"low": 1e-2, "high": 0.1, "log": True}}
    (tmp_path / "narrow.yaml").write_text(yaml.safe_dump(narrow))
    more_choices = {**SMOKE_SPACE, "batch_size": {"choices": [16, 32, 64]}}
    (tmp_path / "choices.yaml").write_text(yaml.safe_dump(more_choices))
    storage = ["--storage-path", folder / "ray"]
    cases = [
        (["--name", "nosuch", "--extend", 2, *storage], "--extend: no sweep named 'nosuch'"),
        (["--name", "wf", "--extend", 0, *storage], "--extend must be >= 1, got 0"),
        (["--name", "wf", "--extend", 2, "--num-samples", 3, *storage], "drop --num-samples"),
        (["--name", "wf", "--extend", 2, "--space", tmp_path / "narrow.yaml", *storage], "changes lr from"),
        (["--name", "wf", "--extend", 2, "--space", tmp_path / "choices.yaml", *storage], "changes batch_size from"),
        (["--name", "wf-ext1", "--extend", 2, *storage], "is itself an extension; extend 'wf'"),
    ]
    listing = sorted(p.name for p in (folder / "ray").iterdir())
    trials = len(_optuna_study(extended["url"], "wf").trials)
    for args, message in cases:
        proc = run_birdplane("sweep", *args)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("birdplane: error:") and message in lines[0], (args, lines)
    check = run_birdplane("sweep", "--name", "wf", "--extend", 3, *storage, "--check")
    assert check.returncode == 0 and "ok: sweep 'wf-ext2', 3 trials of up to 2 epochs" in check.stdout, check.stdout
    assert sorted(p.name for p in (folder / "ray").iterdir()) == listing
    assert len(_optuna_study(extended["url"], "wf").trials) == trials


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.read()


def test_optuna_dashboard_serves_the_persisted_study_live(extended, tmp_path):
    pytest.importorskip("optuna_dashboard", reason="the dashboard extra: pip install -e '.[dashboard]'")
    port = free_port()
    # The `optuna-dashboard` console script of this environment (its entry point, run by this Python).
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from optuna_dashboard._cli import main; sys.exit(main())",
            extended["url"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = json.loads(_get(f"{base}/api/studies"))["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.3)
        (summary,) = [s for s in studies if s["study_name"] == "wf"]
        detail = json.loads(_get(f"{base}/api/studies/{summary['study_id']}"))
        assert [t["state"] for t in detail["trials"]] == ["Complete"] * 3 + ["Fail"] + ["Complete"] * 2
        assert b"<title>Optuna Dashboard</title>" in _get(f"{base}/dashboard")
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium:  # the page as a browser renders it (the README's screenshot is taken the same way)
            dom = subprocess.run(
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--virtual-time-budget=15000",
                    "--dump-dom",
                    f"{base}/dashboard/studies/{summary['study_id']}",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
            assert f"wf (id={summary['study_id']})" in dom and "History" in dom and "Hyperparameter Importance" in dom
            assert "Best Trial (number=" in dom
    finally:
        stop_group(proc)


def test_report_compares_studies_on_one_page(extended, smoke_sweep, tmp_path):
    client = MlflowClient(extended["uri"])
    out = tmp_path / "cmp"
    proc = run_birdplane(
        "report",
        "--experiment",
        "wf",
        "--experiment",
        smoke_sweep["name"],
        "--tracking-uri",
        extended["uri"],
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {
        "compare.html",
        "compare_capacity.png",
        "compare_gap.png",
        "compare_best.csv",
        "compare_trends.csv",
    }
    best = pd.read_csv(out / "compare_best.csv")
    assert list(best["experiment"]) == ["wf", smoke_sweep["name"]]
    for row in best.itertuples():
        exp = client.get_experiment_by_name(row.experiment)
        runs = client.search_runs([exp.experiment_id], "tags.`birdplane.role` = 'trial'", max_results=100)
        assert row.trials == len(runs)
        assert row.best_val_acc == pytest.approx(max(r.data.metrics["val_acc"] for r in runs))
    page = (out / "compare.html").read_text()
    assert "wf" in page and smoke_sweep["name"] in page and page.count("data:image/png;base64") == 2
    # Bad input: one line, exit 2, nothing written.
    for args, message in (
        (["--experiment", "wf", "--experiment", "nosuch"], "experiment 'nosuch' does not exist"),
        (["--experiment", "wf", "--experiment", "wf"], "--experiment 'wf' is given twice"),
    ):
        bad = run_birdplane("report", *args, "--tracking-uri", extended["uri"], "--out", tmp_path / "bad")
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1 and message in lines[0], lines
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_writes_one_row_per_trial_and_one_per_trial_epoch(smoke_sweep, tmp_path, suffix):
    out = tmp_path / f"smoke{suffix}"
    proc = run_birdplane(
        "export", "--experiment", smoke_sweep["name"], "--tracking-uri", smoke_sweep["uri"], "--out", out
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    read = pd.read_csv if suffix == ".csv" else pd.read_parquet
    trials, curves = read(out), read(tmp_path / f"smoke.curves{suffix}")
    summary = smoke_sweep["summary"]["trials"]
    assert sorted(trials["run_id"]) == sorted(t["run_id"] for t in summary)
    for column in (
        "experiment",
        "study_run_id",
        "trial_id",
        "run_id",
        "outcome",
        "epochs",
        "ran_all_epochs",
        "seed",
        "node",
        "lr",
        "batch_size",
        "loss",
        "hidden_sizes",
        "depth",
        "param_count",
        "val_acc",
        "train_acc",
        "best_val_acc",
        "epochs_run",
    ):
        assert column in trials.columns, column
    by_run = {t["run_id"]: t for t in summary}
    for row in trials.itertuples():
        assert row.val_acc == pytest.approx(by_run[row.run_id]["val_acc"])
        assert row.node == by_run[row.run_id]["node_id"] and row.epochs == 2 and bool(row.ran_all_epochs)
        assert row.trial_id == by_run[row.run_id]["trial_id"]
    assert len(curves) == sum(t["epochs"] for t in summary)
    assert set(curves.columns) >= {"run_id", "trial_id", "epoch", "train_loss", "val_acc", "lr"}
    last = curves.sort_values("epoch").groupby("run_id").tail(1).set_index("run_id")["val_acc"]
    assert all(last[r] == pytest.approx(by_run[r]["val_acc"]) for r in by_run)


def test_export_refuses_bad_input_in_one_line_and_writes_nothing(smoke_sweep, tmp_path):
    cases = [
        (["--experiment", "nosuch", "--out", tmp_path / "x.csv"], "experiment 'nosuch' does not exist"),
        (["--experiment", smoke_sweep["name"], "--out", tmp_path / "x.xlsx"], "unknown format '.xlsx'"),
        (["--experiment", smoke_sweep["name"], "--out", tmp_path / "no" / "x.csv"], "does not exist"),
    ]
    for args, message in cases:
        proc = run_birdplane("export", *args, "--tracking-uri", smoke_sweep["uri"])
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_the_mlflow_ui_gets_readable_runs_sources_datasets_and_the_study_headline(smoke_sweep):
    client = MlflowClient(smoke_sweep["uri"])
    exp = client.get_experiment_by_name(smoke_sweep["name"])
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the training runs, not GenAI
    parent_id = smoke_sweep["summary"]["parent_run_id"]
    parent = client.get_run(parent_id)
    trials = smoke_sweep["summary"]["trials"]
    assert parent.data.metrics["trials_completed"] == 5
    assert parent.data.metrics["trials_stopped"] == parent.data.metrics["trials_diverged"] == 0
    assert parent.data.metrics["study_best_val_acc"] == pytest.approx(max(t["val_acc"] for t in trials))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for t in trials:
        run = client.get_run(t["run_id"])
        c = t["config"]
        assert run.info.run_name == (
            f"[{','.join(map(str, c['hidden_sizes']))}] {c['activation']} {c['loss']} {c['optimizer']}"
        )
        assert run.data.tags["mlflow.source.git.commit"] == commit
        assert run.data.tags["mlflow.source.name"] == "birdplane sweep"
        assert run.data.tags["birdplane.node"] == t["node_id"]
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.name == "cifar10-airplane-bird"
        assert json.loads(dataset.dataset.source)["uri"] == str(smoke_sweep["data_root"])
        assert [(tag.key, tag.value) for tag in dataset.tags] == [("mlflow.data.context", "training")]
    assert parent.data.tags["mlflow.source.git.commit"] == commit


def test_rerun_register_refuses_a_bad_model_name_before_training(smoke_sweep):
    client = MlflowClient(smoke_sweep["uri"])
    exp = client.get_experiment_by_name(smoke_sweep["name"])
    before = len(client.search_runs([exp.experiment_id], max_results=1000))
    for name, message in (("bad/name", "--register 'bad/name': use letters"), ("x@y", "--register 'x@y': use letters")):
        proc = run_birdplane(
            "rerun", "--experiment", smoke_sweep["name"], "--tracking-uri", smoke_sweep["uri"], "--register", name
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], lines
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == before  # nothing trained or logged
    proc = run_birdplane(
        "rerun",
        "--experiment",
        smoke_sweep["name"],
        "--tracking-uri",
        smoke_sweep["uri"],
        "--top",
        1,
        "--register",
        "m",
    )
    assert proc.returncode == 2 and "--register goes with a rerun of one trial" in proc.stderr


def test_an_extension_of_a_sweep_from_before_the_reduction_factor_flag_halves_by_3(extended):
    """A manifest written before --reduction-factor existed has no such option: that sweep's ASHA
    halved by 3, and its extension must too, whatever the default or the command line says."""
    from study.sweep import SweepOptions, prepare_extension

    ray_dir = extended["folder"] / "ray"
    manifest = json.loads((ray_dir / "wf" / "birdplane.json").read_text())
    assert manifest["options"].pop("reduction_factor") == 3.0
    (ray_dir / "old-wf").mkdir()
    (ray_dir / "old-wf" / "birdplane.json").write_text(json.dumps({**manifest, "name": "old-wf"}))
    ext = prepare_extension(SweepOptions(name="old-wf", storage_path=str(ray_dir), reduction_factor=2.0), None, 1)
    assert ext.options.reduction_factor == 3.0 and ext.options.name == "old-wf-ext1"
