"""`birdplane report` on a real sweep logged to a real mlflow server."""

import pytest
from mlflow import MlflowClient

from analysis.report import FIGURE_FILES
from study.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def test_report_writes_every_figure_and_the_html_and_logs_them_to_the_parent(smoke_sweep, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(
        ["report", "--experiment", smoke_sweep["name"], "--tracking-uri", smoke_sweep["uri"], "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0
    for name in (*FIGURE_FILES, "report.html"):
        assert (out / name).stat().st_size > 1000, name
        assert (out / name).read_bytes()[:4] in (b"\x89PNG", b"<!do")
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURE_FILES), "self-contained: figures inlined"
    client = MlflowClient(smoke_sweep["uri"])
    logged = {a.path for a in client.list_artifacts(smoke_sweep["summary"]["parent_run_id"], "report")}
    assert logged == {f"report/{n}" for n in (*FIGURE_FILES, "report.html", "capacity_table.csv")}
    assert "Pareto set" in printed and "param_count" in printed
    # The link opens the experiment's runs in the UI's "Model training" view, not its GenAI pages.
    experiment_id = client.get_experiment_by_name(smoke_sweep["name"]).experiment_id
    assert f"review: open {smoke_sweep['uri']}/#/experiments/{experiment_id}?workflowType=machine_learning" in printed
    # Trials ASHA stopped before the 2-epoch budget are left out, and counted.
    trials = smoke_sweep["summary"]["trials"]
    full = [t for t in trials if t["epochs"] == 2]
    short = len(trials) - len(full)
    assert f"best val_acc {max(t['val_acc'] for t in full):.4f}" in printed
    assert (
        f"{short} trials left out: {short} stopped before the 2-epoch budget" if short else "no trial left out"
    ) in printed
    assert (out / "capacity_table.csv").read_text().startswith("group,depth,hidden_sizes,param_count,seeds,")


def test_the_report_ranks_importances_and_draws_one_bar_each(smoke_sweep, tmp_path):
    from analysis import figures
    from study.reporting import build_report

    report, _, _ = build_report(smoke_sweep["uri"], smoke_sweep["name"], tmp_path / "r")
    assert report.importances, "fANOVA importances of the searched dimensions"
    assert set(report.importances) <= {"depth", "width_0", "batch_size", "lr", "loss"}
    assert sum(report.importances.values()) == pytest.approx(1.0)
    figure = figures.importance_figure(report.importances)
    assert len(figure.axes[0].patches) == len(report.importances)


def _study_with(client, name: str, children: list[tuple[str, dict]]):
    """A sweep as MLflow holds it mid-way: a parent run and trial runs in the given states."""
    from analysis import record

    experiment_id = client.create_experiment(name)
    parent = client.create_run(experiment_id, tags={record.TAG_ROLE: record.ROLE_SWEEP, record.TAG_STUDY: name})
    client.log_dict(
        parent.info.run_id, {"depth": 1, "width": {"low": 8, "high": 64, "log": True}, "epochs": 2}, "search_space.json"
    )
    for i, (status, metrics) in enumerate(children):
        run = client.create_run(
            experiment_id,
            tags={record.TAG_ROLE: record.ROLE_TRIAL, record.TAG_TRIAL: f"t{i}", record.TAG_PARENT: parent.info.run_id},
        )
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value, step=1)
        client.log_param(run.info.run_id, "hidden_sizes", str(8 * (i + 1)))
        client.log_param(run.info.run_id, "loss", "nll")
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status=status)
    return parent.info.run_id


def test_the_report_says_which_trials_it_left_out_and_why(mlflow_server, tmp_path, capsys):
    client = MlflowClient(mlflow_server.url)
    done = {"val_acc": 0.7, "train_acc": 0.8, "gap": 0.1, "val_loss": 0.5, "train_loss": 0.4, "epochs_run": 2}
    _study_with(
        client,
        "left-out",
        [
            ("FINISHED", {**done, "param_count": 1000}),
            ("FINISHED", {**done, "val_acc": 0.75, "param_count": 2000}),
            ("FINISHED", {**done, "val_acc": 0.72, "param_count": 4000}),
            # stopped by ASHA after 1 of 2 epochs, with a val_acc that would top the study
            ("FINISHED", {**done, "val_acc": 0.9, "param_count": 500, "epochs_run": 1}),
            ("RUNNING", {}),
            ("FAILED", {}),
        ],
    )
    out = tmp_path / "out"
    assert main(["report", "--experiment", "left-out", "--tracking-uri", mlflow_server.url, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        "3 trials at the 2-epoch budget (3 trials left out: 1 run RUNNING, 1 run FAILED, "
        "1 stopped before the 2-epoch budget), best val_acc 0.7500"
    ) in printed
    assert "3 trials left out" in (out / "report.html").read_text()
    assert "500" not in (out / "capacity_table.csv").read_text(), "the short trial is not in the per-size table"
    assert (
        main(
            [
                "report",
                "--experiment",
                "left-out",
                "--tracking-uri",
                mlflow_server.url,
                "--out",
                str(out),
                "--include-short",
            ]
        )
        == 0
    )
    assert "4 trials at any budget (--include-short" in capsys.readouterr().out


REFUSALS = {
    "missing-experiment": "experiment 'no-such-study' does not exist",
    "dead-server": "does not answer",
    "no-sweep": "experiment 'empty-study' holds no birdplane sweep",
    "no-finished-trials": "experiment 'in-progress' has no finished trials yet",
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_report_refuses_what_it_cannot_report(case, smoke_sweep, tmp_path, capsys):
    uri, experiment = smoke_sweep["uri"], smoke_sweep["name"]
    client = MlflowClient(uri)
    if case == "missing-experiment":
        experiment = "no-such-study"
    elif case == "dead-server":
        from tests.servers import free_port

        uri = f"http://127.0.0.1:{free_port()}"
    elif case == "no-sweep":
        client.create_experiment("empty-study")
        experiment = "empty-study"
    else:  # a sweep whose only trial is still running
        _study_with(client, "in-progress", [("RUNNING", {})])
        experiment = "in-progress"
    out = tmp_path / "out"
    assert main(["report", "--experiment", experiment, "--tracking-uri", uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and REFUSALS[case] in err[0], err
    assert err[0].startswith("birdplane: error: ") and not out.exists()
