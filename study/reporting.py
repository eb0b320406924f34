"""`birdplane report`: read a study from MLflow, write figures + HTML, log them to the parent run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from analysis.power import interpolation_threshold
from analysis.report import StudyReport, analyse, make_figures, write_report
from analysis.runs import Study, StudyNotFound, finished, left_out, load_histories, load_study, read_json_artifact
from study import preflight
from study.errors import UsageError
from study.outputs import check_out_folder, write_error


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


def build_report(
    tracking_uri: str | None, experiment: str, out: Path, include_short: bool = False
) -> tuple[StudyReport, list[Path], str]:
    check_out_folder(out)
    report, histories, client, study, uri = analyse_study(tracking_uri, experiment, include_short)
    try:
        paths = write_report(report, make_figures(report, histories, study.space), out)
    except OSError as err:
        raise write_error("--out", out, err) from None
    for path in paths:
        client.log_artifact(study.parent_run_id, str(path), artifact_path="report")
    return report, paths, uri


def analyse_study(tracking_uri: str | None, experiment: str, include_short: bool = False):
    """(the study's report, its per-epoch histories, the client, the study, the URI)."""
    client, study, trials, uri = open_study(tracking_uri, experiment)
    histories = load_histories(client, trials["run_id"])
    confirmations = finished(study.confirmations) if study.confirmations is not None else None
    # The validation split's size widens each size's interval by the split's own sampling noise.
    data = read_json_artifact(client, study.parent_run_id, "data.json") or {}
    n_val = data.get("val_size")
    report = analyse(
        experiment,
        trials,
        histories,
        study.space,
        left_out(study.trials),
        kind=study.kind,
        include_short=include_short,
        confirmations=confirmations,
        n_val=n_val,
        threshold=interpolation_threshold(data.get("train_size"), len(data.get("classes") or ())),
    )
    return report, histories, client, study, uri


def build_comparison(
    tracking_uri: str | None, experiments: list[str], out: Path, include_short: bool = False
) -> tuple[list, list[Path], str]:
    """``report --experiment A --experiment B ...``: every study analysed as its own report would be,
    then overlaid on one page (analysis/compare.py)."""
    from analysis.compare import write_comparison

    repeated = sorted({e for e in experiments if experiments.count(e) > 1})
    if repeated:
        raise UsageError(f"--experiment {repeated[0]!r} is given twice")
    check_out_folder(out)
    reports, uri = [], None
    for experiment in experiments:  # every study is checked before anything is written
        report, _, _, _, uri = analyse_study(tracking_uri, experiment, include_short)
        reports.append(report)
    try:
        return reports, write_comparison(reports, out), uri
    except OSError as err:
        raise write_error("--out", out, err) from None
