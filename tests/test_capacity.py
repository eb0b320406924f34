"""`birdplane capacity` end to end: synthetic data, real Ray, a real mlflow server; and its bad inputs."""

import dataclasses
import json
import signal
import time

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from study.cli import main
from tests.conftest import last_json, make_image_tree, run_birdplane
from tests.test_faults import epochs_of, finish, kill_after_results, output, ray_results, results_reported, start


@pytest.fixture(scope="module")
def capacity_tree(tmp_path_factory):
    return make_image_tree(
        tmp_path_factory.mktemp("capacity-images"),
        per_class=40,
        test_per_class=5,
        classes=("airplane", "bird"),
        jitter=80,
    )


def runs_of(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("birdplane.role") == "capacity"]
    children = [r for r in runs if r.data.tags.get("birdplane.role") == "trial"]
    return client, parents, children


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_capacity_study_runs_every_cell_seed_and_value_once_with_its_tags(capacity_tree, mlflow_server, tmp_path):
    proc = run_birdplane(
        "capacity",
        "--widths",
        "8,32",
        "--depths",
        "1,2",
        "--seeds",
        2,
        "--epochs",
        2,
        "--regulariser",
        "augment=none,flip",
        "--data-root",
        capacity_tree,
        "--cache-dir",
        tmp_path / "cache",
        "--name",
        "cap",
        "--storage-path",
        tmp_path / "ray",
        "--tracking-uri",
        mlflow_server.url,
        "--population",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    client, parents, children = runs_of(mlflow_server.url, "cap")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == len(summary["trials"]) == 2 * 2 * 2 * 2
    # One Ray trial per cell (augment is no shared field): its 2 seeds x 2 values, each its own run.
    populations = {}
    for run in children:
        populations.setdefault(run.data.tags["ray_trial_id"], []).append(run)
    assert len(populations) == 4, populations.keys()
    for members in populations.values():
        assert sorted(r.data.tags["birdplane.member"] for r in members) == ["0", "1", "2", "3"]
        assert len({r.data.tags["birdplane.cell"] for r in members}) == 1
    assert {t["run_id"] for t in summary["trials"]} == {r.info.run_id for r in children}
    keys = set()
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id and run.info.status == "FINISHED"
        assert tags["birdplane.design"] == "widths 8,32 x depths 1,2 x 2 seeds x augment=none,flip, 2 epochs"
        assert tags["birdplane.cell"] == "[" + params["hidden_sizes"] + "]"
        assert tags["birdplane.regulariser"] == f"augment={params['augment']}"
        assert params["seed"] == tags["seed"]  # seeds 0 and 1 from --seed 0
        assert tags["outcome"] == "completed" and run.data.metrics["epochs_run"] == 2
        # Everything but size and seed is the chapter's recipe.
        assert (params["activation"], params["loss"], params["optimizer"], params["lr"], params["batch_size"]) == (
            "tanh",
            "nll",
            "sgd",
            "0.01",
            "64",
        )
        keys.add((tags["birdplane.cell"], tags["seed"], tags["birdplane.regulariser"]))
    assert len(keys) == 16, "one run per cell x seed x value"
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {
        "design.json",
        "recipe.json",
        "search_space.json",
    }
    # The report draws one capacity curve per regulariser value, from seed means.
    out = tmp_path / "report"
    from study.reporting import build_report

    report, _, _ = build_report(mlflow_server.url, "cap", out)
    assert set(report.sizes["group"]) == {"augment=none", "augment=flip"} and (report.sizes["seeds"] == 2).all()
    assert len(report.sizes) == 8 and report.left_out.empty
    # Trends are fitted per regulariser value and depth, never pooled across them.
    assert set(report.trends) == {f"augment={a}, depth {d}" for a in ("none", "flip") for d in (1, 2)}
    assert all(t["gap"]["trials"] == 4 and t["gap"]["sizes"] == 2 for t in report.trends.values())


# Tags that name the study or the Ray trial a run belongs to, not the run: they differ between studies.
PER_STUDY = {"mlflow.parentRunId", "ray_trial_id", "birdplane.sweep", "birdplane.node", "birdplane.member"}
TIMING = ("epoch_seconds", "samples_per_second")  # how fast, not what was learned


def logged(client, run) -> dict:
    """What a run says of its training: name, status, params, tags (those that name no study),
    config.json, artefacts, and every metric's (step, value) history but the timings."""
    with open(client.download_artifacts(run.info.run_id, "config.json")) as f:
        config = yaml.safe_load(f)
    metrics = {}
    for name in set(run.data.metrics) - set(TIMING):
        history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        metrics[name] = [(m.step, m.value) for m in history]
    return {
        "name": run.info.run_name,
        "status": run.info.status,
        "params": run.data.params,
        "tags": {k: v for k, v in run.data.tags.items() if k not in PER_STUDY},
        "config.json": config,
        "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
        "metrics": metrics,
    }


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_population_study_logs_each_member_as_the_solo_study_logs_its_run_and_reports_the_same(
    capacity_tree, tmp_path
):
    from study.manifest import read

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Members that differ in augmentation and rate; lr 2e38 diverges in its first epoch (1e12 only grows the loss here).
    design = ["--widths", "8", "--depths", "1", "--seeds", 1, "--epochs", 2, "--regulariser", "augment=none,flip"]
    design += ["--tune", "lr=0.01,2e38"]
    found = {}
    for mode in ("population", "no-population"):
        proc = run_birdplane(
            *("capacity", *design, "--data-root", capacity_tree, "--cache-dir", tmp_path / "cache", "--name", mode),
            *("--storage-path", tmp_path / "ray", "--tracking-uri", uri, "--max-concurrent", 1, f"--{mode}", "--json"),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert read(str(tmp_path / "ray" / mode)).options["population"] is (mode == "population"), "in the manifest"
        client, _, children = runs_of(uri, mode)
        found[mode] = {(r.data.tags["birdplane.tune"], r.data.tags["birdplane.regulariser"]): r for r in children}
    population, solo = found["population"], found["no-population"]
    assert len(solo) == len(population) == 4 and sorted(solo) == sorted(population)
    assert len({r.data.tags["ray_trial_id"] for r in population.values()}) == 1, "the cell is one Ray trial"
    assert len({r.data.tags["ray_trial_id"] for r in solo.values()}) == 4
    for key, run in solo.items():
        want, got = logged(client, run), logged(client, population[key])
        diverged = key[0] == "lr=2e+38"
        assert got["status"] == "FINISHED" and got["tags"]["outcome"] == ("diverged" if diverged else "completed")
        assert len(got["metrics"]["val_acc"]) == (1 if diverged else 2), "a diverged member stops, as a solo run"
        for part in ("name", "status", "params", "tags", "config.json", "artifacts"):
            assert got[part] == want[part], (key, part, got[part], want[part])
        assert sorted(got["metrics"]) == sorted(want["metrics"]), key
        for name, history in want["metrics"].items():
            assert [s for s, _ in got["metrics"][name]] == [s for s, _ in history], (key, name)
            values = [v for _, v in history]
            if diverged and name.endswith("_acc") or diverged and name in ("gap", "val_ece"):
                # Accuracies of a net whose weights overflowed (inf, NaN) are not set by its recipe:
                # which logit wins among inf and NaN depends on the GEMM kernel's order (the
                # population's memberwise step against the solo Linear). Measured on 2026-12-06's
                # machine: 0.625-0.75 in the population against 0.5 solo, at 9b2ca05 as well.
                continue  # logged at the same steps (above), its values not comparable
            assert [v for _, v in got["metrics"][name]] == pytest.approx(values, rel=1e-4, abs=1e-5, nan_ok=True), (
                key,
                name,
            )
    # Nothing in the report changes: the same tables, up to the metrics' float tolerance.
    run_key = {r.info.run_id: str(k) for runs in found.values() for k, r in runs.items()}
    assert_same_report(uri, "population", "no-population", run_key, tmp_path)


def assert_same_report(uri: str, one: str, other: str, run_key: dict, folder) -> None:
    """`report`'s tables of two studies are equal, a run named by ``run_key`` (not by its ids), its
    timings left out, numbers within float tolerance."""
    from study.reporting import build_report

    reports = [build_report(uri, name, folder / f"report-{name}")[0] for name in (one, other)]
    for table in ("trials", "sizes", "overfitting"):
        a, b = (getattr(r, table).copy() for r in reports)
        for t in (a, b):
            if "run_id" in t:
                t["run"] = t["run_id"].map(run_key)
        ids = ("run_id", "trial_id", "start_time", "end_time", "node", "experiment", "study")
        a, b = (t.drop(columns=[c for c in t if c in ids or "second" in c]) for t in (a, b))
        assert len(a) and list(a.columns) == list(b.columns), table
        sort = ["run"] if "run" in a else [c for c in a.columns if a[c].dtype == object][:3]
        a, b = a.sort_values(sort).reset_index(drop=True), b.sort_values(sort).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-5, obj=table)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_tuned_study_runs_every_cell_seed_and_lr_once_tagged_with_its_lr_and_whether_it_was_kept(
    capacity_tree, tmp_path
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_birdplane(
        *("capacity", "--widths", "4,16", "--depths", "1", "--seeds", 2, "--epochs", 2),
        *("--tune", "lr=0.01,0.1", "--regulariser", "label_noise=0,0.2"),
        *("--data-root", capacity_tree, "--cache-dir", tmp_path / "cache", "--name", "tuned"),
        *("--storage-path", tmp_path / "ray", "--tracking-uri", uri, "--json"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parents, children = runs_of(uri, "tuned")
    assert len(parents) == 1 and len(children) == 2 * 2 * 2 * 2
    keys, kept = set(), {}
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert tags["birdplane.tune"] == f"lr={float(params['lr'])}"
        assert tags["birdplane.regulariser"] == f"label_noise={float(params['label_noise'])}"
        assert tags["birdplane.selected"] in ("true", "false")
        assert {"val_select_acc", "val_report_acc"} <= set(run.data.metrics)
        keys.add((tags["birdplane.cell"], tags["birdplane.regulariser"], tags["seed"], params["lr"]))
        cell = (tags["birdplane.cell"], tags["birdplane.regulariser"])
        if tags["birdplane.selected"] == "true":
            kept.setdefault(cell, set()).add((params["lr"], tags["seed"]))
    assert len(keys) == 16, "one run per (cell, noise, seed, lr)"
    assert len(kept) == 4 and all(len({lr for lr, _ in v}) == 1 and len(v) == 2 for v in kept.values()), kept
    from study.reporting import build_report

    report, paths, _ = build_report(uri, "tuned", tmp_path / "report")
    assert report.tuning is not None and int(report.tuning["chosen"].sum()) == 4
    chosen = {(r.group, r.hidden_sizes): str(r.value) for r in report.tuning[report.tuning["chosen"]].itertuples()}
    assert chosen == {(g, c): next(iter(v))[0] for (c, g), v in kept.items()}, "the tags say what the report chose"
    assert set(report.sizes["group"]) == {"label_noise=0.0", "label_noise=0.2"} and (report.sizes["seeds"] == 2).all()
    assert report.threshold == 2 * 72 and {"epochwise.png", "tuning.png"} <= {p.name for p in paths}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_interrupted_and_a_killed_population_study_resume_every_member_from_its_checkpoint(mlflow_server, tmp_path):
    """Ctrl+C, then a SIGKILL of the driver: each --resume continues every population trial from its
    one checkpoint, and every member's run holds each epoch once."""
    tree = make_image_tree(tmp_path / "images", per_class=200, test_per_class=5, classes=("airplane", "bird"))
    common = [
        "--widths",
        "1024,2048",
        "--depths",
        "2",
        "--seeds",
        2,
        "--epochs",
        5,
        "--data-root",
        tree,
        "--cache-dir",
        tmp_path / "cache",
        "--name",
        "capres",
        "--storage-path",
        tmp_path / "ray",
        "--tracking-uri",
        mlflow_server.url,
        "--max-concurrent",
        1,
    ]
    # Output to a file (a full pipe would block the study); Tune snapshots (and flushes result.json)
    # at every step, so the counts below are where the trials are.
    snapshots = {"TUNE_GLOBAL_CHECKPOINT_S": "0"}
    proc = start(["capacity", *common, "--population"], env=snapshots)
    experiment = tmp_path / "ray" / "capres"
    deadline = time.monotonic() + 300
    while results_reported(experiment) < 3 and time.monotonic() < deadline:  # the first population at epoch 3
        assert proc.poll() is None, output(proc)[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out = finish(proc, 120)
    assert proc.returncode == 130 and "--resume" in out, out[-2000:]
    # The manifest keeps the study's mode: a resume that says otherwise is refused, in one line.
    refused = run_birdplane("capacity", *common, "--resume", "--no-population")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "birdplane: error: --resume: study 'capres' was started with --population; resume it so (or without the flag)"
    ], refused.stderr[-2000:]

    proc = start(["capacity", *common, "--resume"], env=snapshots)
    kill_after_results(proc, experiment, 7)  # SIGKILL: the second population at epoch 2
    proc.wait(timeout=60)
    before = {t: epochs_of(rows) for t, rows in ray_results(experiment).items()}
    assert len(before) == 2 and any(e[-1] < 5 for e in before.values()), before

    resumed = run_birdplane("capacity", *common, "--resume", "--json", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(last_json(resumed.stdout)["trials"]) == 4
    after = {t: epochs_of(rows) for t, rows in ray_results(experiment).items()}
    assert len(after) == 2, "one Ray trial per cell"
    for trial, epochs in before.items():
        assert after[trial].count(1) == 1 and after[trial][-1] == 5, (trial, epochs, after[trial])
    client, parents, children = runs_of(mlflow_server.url, "capres")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert len({(r.data.tags["birdplane.cell"], r.data.tags["seed"]) for r in children}) == 4
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2, 3, 4, 5]
        assert run.data.tags["outcome"] == "completed" and "model.pt" in {
            a.path for a in client.list_artifacts(run.info.run_id)
        }


def _recipe(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


CASES = [
    (["--widths", "16,0"], "--widths"),
    (["--widths", "a,b"], "--widths"),
    (["--depths", "2,2"], "--depths"),
    (["--seeds", "0"], "--seeds"),
    (["--epochs", "0"], "--epochs"),
    (["--regulariser", "colour=red,blue"], "--regulariser"),
    (["--regulariser", "augment=crop+flip"], "at least two values"),
    (["--regulariser", "dropout=0,1.0"], "dropout"),
    (["--regulariser", "weight_decay=0,lots"], "weight_decay"),
    (["--recipe", "missing.yaml"], "does not exist"),
    (["--recipe", "RECIPE:hidden_sizes: [8]\n"], "set by the study"),
    (["--recipe", "RECIPE:lr: -1\n"], "lr"),
    (["--recipe", "RECIPE:colour: red\n"], "colour"),
    (["--from-run", "0123456789abcdef"], "--from-run"),
    (["--design", "missing.yaml"], "does not exist"),
    (["--name", "../x"], "--name"),
    (["--resume", "--name", "never"], "no capacity named"),
    (["--label-noise", "0.5"], "--label-noise must be in [0, 0.5)"),
    (["--label-noise", "-0.1"], "--label-noise must be in [0, 0.5)"),
    (["--regulariser", "label_noise=0,0.5"], "label_noise: must be in [0, 0.5)"),
    (["--label-noise", "0.1", "--regulariser", "label_noise=0,0.2"], "already an axis"),
    (["--tune", "hidden_sizes=8,16"], "--tune hidden_sizes: the size"),
    (["--tune", "seed=1,2"], "--tune seed: set by the study"),
    (["--tune", "epochs=5,10"], "--tune epochs: set by the study"),
    (["--tune", "lr="], "--tune lr: give at least two values"),
    (["--tune", "lr=,"], "--tune lr: give at least two values"),
    (["--tune", "lr=0.01,lots"], "--tune lr: 'lots' is not a float"),
    (["--tune", "lr=0.01,-1"], "lr: must be > 0"),
    (["--tune", "augment=none,flip", "--regulariser", "augment=none,crop"], "already the regulariser"),
    (["--widths", ",".join(map(str, range(1, 21))), "--depths", "1,2,3", "--seeds", "20"], "pass --large"),
]


@pytest.mark.parametrize("flags,needle", CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_bad_capacity_input_is_one_line_exit_2_with_nothing_written(capacity_tree, tmp_path, flags, needle, capsys):
    flags = [(_recipe(tmp_path, f[len("RECIPE:") :]) if f.startswith("RECIPE:") else f) for f in flags]
    db, storage = tmp_path / "m.db", tmp_path / "ray"
    argv = [
        "capacity",
        "--data-root",
        str(capacity_tree),
        "--cache-dir",
        str(tmp_path / "c"),
        "--storage-path",
        str(storage),
        "--tracking-uri",
        f"sqlite:///{db}",
        *flags,
    ]
    if "--from-run" in flags:  # a store that exists, without that run
        import mlflow

        mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
        capsys.readouterr()  # the store's creation logs
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not storage.exists() and not (tmp_path / "c").exists()


def test_a_design_file_and_a_recipe_file_make_the_plan(capacity_tree, tmp_path, capsys):
    design = tmp_path / "design.yaml"
    design.write_text(
        yaml.safe_dump(
            {"widths": [32, 128], "depths": [1], "seeds": 4, "epochs": 30, "regulariser": {"weight_decay": [0, 0.001]}}
        )
    )
    recipe = _recipe(tmp_path, "optimizer: adamw\nlr: 0.001\nactivation: relu\nschedule: onecycle\n")
    assert (
        main(
            [
                "capacity",
                "--check",
                "--json",
                "--design",
                str(design),
                "--recipe",
                recipe,
                "--seeds",
                "3",
                "--data-root",
                str(capacity_tree),
                "--storage-path",
                str(tmp_path / "ray"),
            ]
        )
        == 0
    )
    plan = __import__("json").loads(capsys.readouterr().out)
    assert plan["design"] == {
        "widths": [32, 128],
        "depths": [1],
        "seeds": 3,
        "epochs": 30,
        "regulariser": "weight_decay",
        "values": [0.0, 0.001],
        "tune": None,
        "tune_values": [],
    }
    assert plan["runs"] == 2 * 1 * 3 * 2
    assert (plan["recipe"]["optimizer"], plan["recipe"]["lr"], plan["recipe"]["schedule"], plan["recipe"]["loss"]) == (
        "adamw",
        0.001,
        "onecycle",
        "nll",
    )
    assert not (tmp_path / "ray").exists()


def test_the_shipped_design_and_recipe_files_make_a_valid_plan(capacity_tree, tmp_path, capsys):
    from tests.conftest import REPO

    assert (
        main(
            [
                "capacity",
                "--check",
                "--json",
                "--design",
                str(REPO / "configs" / "capacity-design.yaml"),
                "--recipe",
                str(REPO / "configs" / "recipe-adamw.yaml"),
                "--data-root",
                str(capacity_tree),
                "--storage-path",
                str(tmp_path / "ray"),
            ]
        )
        == 0
    )
    plan = __import__("json").loads(capsys.readouterr().out)
    assert plan["runs"] == 7 * 2 * 5 * 2 and plan["design"]["regulariser"] == "augment"
    assert plan["recipe"]["optimizer"] == "adamw" and plan["recipe"]["schedule"] == "onecycle"


def test_check_prints_the_run_count_and_cost_and_a_large_design_needs_large(capacity_tree, tmp_path, capsys):
    from tests.conftest import REPO

    argv = [
        "capacity",
        "--check",
        "--design",
        str(REPO / "configs" / "capacity-definitive.yaml"),
        "--data-root",
        str(capacity_tree),
        "--storage-path",
        str(tmp_path / "ray"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "5,760 runs, over the 1,000-run limit" in err[0] and "CPU-hours" in err[0], err
    assert main([*argv, "--large", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["runs"] == 16 * 3 * 10 * 3 * 4 == plan["cost"]["runs"]
    assert plan["design"]["tune"] == "lr" and plan["design"]["tune_values"] == [0.003, 0.01, 0.03, 0.1]
    assert plan["design"]["regulariser"] == "label_noise" and plan["design"]["values"] == [0.0, 0.1, 0.2]
    assert plan["cost"]["cpu_hours"] > 500 and 1 < plan["cost"]["gpu_hours"] < plan["cost"]["cpu_hours"] / 50
    assert main([*argv, "--large"]) == 0
    text = capsys.readouterr().out
    assert "= 5760 runs" in text and "CPU-hours here" in text and "GPU-hours" in text
    assert not (tmp_path / "ray").exists()


def test_the_cost_grows_with_every_axis_of_the_design():
    from study.capacity import Grid, cost_estimate
    from trainables.config import DataConfig

    data = DataConfig()
    base = cost_estimate(Grid(widths=(1, 64), depths=(1,), seeds=2, epochs=10), data)
    assert base["n_train"] == 9000
    for bigger in (
        Grid(widths=(1, 64), depths=(1,), seeds=4, epochs=10),
        Grid(widths=(1, 64), depths=(1,), seeds=2, epochs=20),
        Grid(widths=(1, 64), depths=(1,), seeds=2, epochs=10, tune="lr", tune_values=(0.01, 0.1)),
    ):
        assert cost_estimate(bigger, data)["cpu_hours"] == pytest.approx(2 * base["cpu_hours"])
    wider = cost_estimate(Grid(widths=(1, 1024), depths=(1,), seeds=2, epochs=10), data)
    assert wider["cpu_hours"] > 3 * base["cpu_hours"]


SHARED = [
    "--name",
    "same",
    "--storage-path",
    "/tmp/nowhere",
    "--tracking-uri",
    "sqlite:///x.db",
    "--experiment",
    "e",
    "--address",
    "auto",
    "--cpus-per-trial",
    "2",
    "--gpus-per-trial",
    "0.5",
    "--max-concurrent",
    "3",
    "--seed",
    "4",
    "--checkpoint-every",
    "5",
    "--smoke",
    "--resume",
]


def test_sweep_and_capacity_read_the_shared_study_flags_into_the_same_study_options():
    import dataclasses

    from study.cli import build_parser, study_options, sweep_options
    from study.runner import StudyOptions

    sweep = sweep_options(build_parser().parse_args(["sweep", *SHARED]))
    capacity = study_options(build_parser().parse_args(["capacity", *SHARED]), "capacity")
    shared = {f.name: getattr(sweep, f.name) for f in dataclasses.fields(StudyOptions)}
    assert shared == {**capacity, "max_failures": StudyOptions.max_failures}
    assert capacity == {
        "name": "same",
        "storage_path": "/tmp/nowhere",
        "tracking_uri": "sqlite:///x.db",
        "experiment": "e",
        "resume": True,
        "address": "auto",
        "cpus_per_trial": 2,
        "gpus_per_trial": 0.5,
        "max_concurrent": 3,
        "seed": 4,
        "checkpoint_every": 5,
        "smoke": True,
    }


@pytest.mark.parametrize("command", ["sweep", "capacity"])
def test_resume_without_a_name_is_refused_the_same_way_by_both_kinds_of_study(command, capsys):
    assert main([command, "--resume", "--check"]) == 2
    assert capsys.readouterr().err.strip() == "birdplane: error: --resume needs --name of the study to continue"


def test_the_sweep_and_the_capacity_grid_are_designs_of_the_study_runner():
    from study.capacity import Capacity
    from study.runner import Design
    from study.sweep import Sweep

    assert isinstance(Sweep(), Design) and isinstance(Capacity(), Design)
    assert (Sweep().kind, Capacity().kind) == ("sweep", "capacity"), "the manifest's kinds stay what they were"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_capacity_recipe_can_come_from_a_sweep_trial(smoke_sweep, capsys):
    from study.cli import main as cli

    best = max(smoke_sweep["summary"]["trials"], key=lambda t: t["val_acc"])
    assert (
        cli(
            [
                "capacity",
                "--check",
                "--json",
                "--from-run",
                best["run_id"],
                "--tracking-uri",
                smoke_sweep["uri"],
                "--data-root",
                str(smoke_sweep["data_root"]),
                "--storage-path",
                str(smoke_sweep["folder"] / "cap"),
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    for key in ("lr", "batch_size", "loss", "optimizer", "activation", "weight_decay", "augment"):
        assert plan["recipe"][key] == best["config"][key], key
    assert "hidden_sizes" not in plan["recipe"] and "seed" not in plan["recipe"]
    assert plan["recipe_source"] == f"run {best['run_id']}"


def test_a_population_is_every_run_of_a_cell_that_shares_the_step_and_label_noise_splits_it():
    from study.capacity import CapacitySpec, Grid, PopulationOf, chapter_recipe, design_points, populations

    grid = Grid(widths=(8, 32), depths=(1,), seeds=2, epochs=2, regulariser="label_noise", values=(0.0, 0.2))
    grid = dataclasses.replace(grid, tune="lr", tune_values=(0.01, 0.1))
    points = design_points(CapacitySpec(grid, chapter_recipe(), "chapter"), 0, 1, "cpu")
    groups = populations(points)
    # 2 cells x 2 noise shares (the members train on one set of labels); seeds x lr inside each.
    assert [len(g) for g in groups] == [4, 4, 4, 4] and sorted(i for g in groups for i in g) == list(range(16))
    for group in groups:
        members = [points[i] for i in group]
        assert len({(m["cell"], m["regulariser"]) for m in members}) == 1
        assert {(m["seed"], m["tune"]) for m in members} == {(s, lr) for s in (0, 1) for lr in (0.01, 0.1)}
    assert points[groups[0][0]]["cell"] == "[32]", "the largest cell first"
    resolve = PopulationOf(tuple(points), tuple(groups))
    assert resolve({"population": 2}) == {"members": [points[i] for i in groups[2]]}


def test_the_default_grid_spans_the_interpolation_threshold_with_five_seeds():
    """Issue 19: the default grid starts below n x classes parameters (the chapter's split: 9,000
    training images, 2 classes) at both depths and ends well past it, with 5 seeds a cell."""
    from analysis.power import interpolation_threshold
    from study.capacity import Grid
    from trainables.model import count_params

    grid, threshold = Grid(), interpolation_threshold(9000, 2)
    for depth in grid.depths:
        sizes = sorted(count_params(3072, [w] * depth, 2) for w in grid.widths)
        below = [s for s in sizes if s < threshold]
        assert len(below) >= 2, f"depth {depth}: {sizes}"
        assert sizes[-1] > 30 * threshold, f"depth {depth}: {sizes}"
    assert grid.seeds >= 5
