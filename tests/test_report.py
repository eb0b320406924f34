"""`birdplane report` on a real sweep logged to a real mlflow server."""
import pytest
from mlflow import MlflowClient

from analysis.report import FIGURE_FILES
from study.cli import main

pytestmark = pytest.mark.slow


def test_report_writes_every_figure_and_the_html_and_logs_them_to_the_parent(smoke_sweep, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["report", "--experiment", smoke_sweep["name"], "--tracking-uri", smoke_sweep["uri"], "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for name in (*FIGURE_FILES, "report.html"):
        assert (out / name).stat().st_size > 1000, name
        assert (out / name).read_bytes()[:4] in (b"\x89PNG", b"<!do")
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURE_FILES), "self-contained: figures inlined"
    client = MlflowClient(smoke_sweep["uri"])
    logged = {a.path for a in client.list_artifacts(smoke_sweep["summary"]["parent_run_id"], "report")}
    assert logged == {f"report/{n}" for n in (*FIGURE_FILES, "report.html")}
    assert "Pareto set" in printed and "param_count" in printed and f"review: open {smoke_sweep['uri']}" in printed
    best = max(t["val_acc"] for t in smoke_sweep["summary"]["trials"])
    assert f"best val_acc {best:.4f}" in printed


@pytest.mark.parametrize("case", ["missing-experiment", "dead-server", "no-trials"])
def test_report_refuses_what_it_cannot_report(case, smoke_sweep, tmp_path, capsys):
    uri, experiment = smoke_sweep["uri"], smoke_sweep["name"]
    if case == "missing-experiment":
        experiment = "no-such-study"
    elif case == "dead-server":
        from tests.servers import free_port
        uri = f"http://127.0.0.1:{free_port()}"
    else:
        MlflowClient(uri).create_experiment("empty-study")
        experiment = "empty-study"
    out = tmp_path / "out"
    assert main(["report", "--experiment", experiment, "--tracking-uri", uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and not out.exists()
