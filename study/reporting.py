"""`birdplane report`: read a study from MLflow, write figures + HTML, log them to the parent run."""
from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from analysis.report import StudyReport, analyse, make_figures, write_report
from analysis.runs import StudyNotFound, finished, load_histories, load_study
from study import mlflow_store as store
from study.errors import UsageError


def build_report(tracking_uri: str | None, experiment: str, out: Path) -> tuple[StudyReport, list[Path], str]:
    uri = store.resolve_tracking_uri(tracking_uri)
    store.check_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UsageError(f"tracking store {uri} does not exist")
    client = MlflowClient(uri)
    try:
        study = load_study(client, experiment)
    except StudyNotFound as err:
        raise UsageError(str(err)) from None
    trials = finished(study.trials)
    if trials.empty:
        raise UsageError(f"experiment {experiment!r} has no finished trials yet")
    histories = load_histories(client, trials["run_id"])
    report = analyse(experiment, trials, histories, study.space)
    paths = write_report(report, make_figures(report, histories, study.space), out)
    for path in paths:
        client.log_artifact(study.parent_run_id, str(path), artifact_path="report")
    return report, paths, uri
