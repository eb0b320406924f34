"""`birdplane report`: read a study from MLflow, write figures + HTML, log them to the parent run."""
from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from analysis.report import StudyReport, analyse, make_figures, write_report
import pandas as pd

from analysis.runs import Study, StudyNotFound, finished, left_out, load_histories, load_study
from study import preflight
from study.errors import UsageError


def open_study(tracking_uri: str | None, experiment: str) -> tuple[MlflowClient, Study, pd.DataFrame, str]:
    """(client, the experiment's latest study, its finished trials, the URI); UsageError with one
    line when the store, the experiment, the study or any finished trial is missing."""
    uri = preflight.resolve_tracking_uri(tracking_uri)
    preflight.check_tracking_uri(uri)
    preflight.check_store_exists(uri)
    client = MlflowClient(uri)
    try:
        study = load_study(client, experiment)
    except StudyNotFound as err:
        raise UsageError(str(err)) from None
    trials = finished(study.trials)
    if trials.empty:
        raise UsageError(f"experiment {experiment!r} has no finished trials yet")
    return client, study, trials, uri


def build_report(tracking_uri: str | None, experiment: str, out: Path,
                 include_short: bool = False) -> tuple[StudyReport, list[Path], str]:
    client, study, trials, uri = open_study(tracking_uri, experiment)
    histories = load_histories(client, trials["run_id"])
    confirmations = finished(study.confirmations) if study.confirmations is not None else None
    report = analyse(experiment, trials, histories, study.space, left_out(study.trials), kind=study.kind,
                     include_short=include_short, confirmations=confirmations)
    paths = write_report(report, make_figures(report, histories, study.space), out)
    for path in paths:
        client.log_artifact(study.parent_run_id, str(path), artifact_path="report")
    return report, paths, uri
