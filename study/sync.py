"""`birdplane sync`: replay a study's Ray Tune results into MLflow, adding only what is missing.

Ray's experiment folder is the source of truth (results per epoch, checkpoints, trial status);
MLflow is brought up to date from it through the same idempotent calls the live callback makes.
Used after an MLflow outage, and at the start of every --resume (a driver killed with SIGKILL
can leave finished trials whose MLflow runs were never closed).
"""

from __future__ import annotations

import logging
import math

from mlflow import MlflowClient

from analysis.record import ROLE_ORPHAN, ROLE_TRIAL, TAG_OUTCOME, TAG_PARENT, TAG_ROLE, TAG_TRIAL
from analysis.runs import search_runs
from study import manifest
from study import records as store
from study.namelock import claimed
from study.preflight import bound_mlflow_http, check_tracking_uri, resolve_tracking_uri
from study.tracking import MlflowTrialLogger, study_status

log = logging.getLogger(__name__)


def _records(frame) -> list[dict]:
    if frame is None or frame.empty or "epoch" not in frame:
        return []
    rows = frame.to_dict("records")
    by_epoch = {}
    for row in rows:  # a retried trial may report an epoch twice: keep the last
        if isinstance(row.get("epoch"), (int, float)) and not math.isnan(row["epoch"]):
            by_epoch[int(row["epoch"])] = {**row, "epoch": int(row["epoch"])}
    return [by_epoch[e] for e in sorted(by_epoch)]


def replay(logger: MlflowTrialLogger, experiment_path: str, resuming: bool = False) -> dict:
    """Bring every trial's MLflow run up to date; returns counts of what was done.

    Unfinished trials' runs are marked KILLED, unless a resume is about to continue them.
    """
    from study.disk import analysis as read_analysis

    analysis = read_analysis(experiment_path, logger.study_name)  # a truncated snapshot: the last good one, or one line
    frames = analysis.trial_dataframes
    # Trials by what was done to their runs; runs_closed counts runs (a population trial has several).
    counts = {"trials": 0, "closed": 0, "open": 0, "unchanged": 0, "runs_closed": 0, "statuses": []}
    for trial in analysis.trials:
        counts["trials"] += 1
        counts["statuses"].append(trial.status)
        outcomes = logger.reconcile_runs(
            trial.trial_id,
            logger.full_config(trial.config),
            _records(frames.get(trial.trial_id)),
            trial.checkpoint,
            trial.status,
            resuming,
        )
        counts[next((o for o in ("closed", "open") if o in outcomes), "unchanged")] += 1
        counts["runs_closed"] += outcomes.count("closed")
    client = MlflowClient(logger.tracking_uri)
    retired, kept = retire_orphans(client, logger, {t.trial_id for t in analysis.trials})
    for run_id, trial_id, status in retired:  # a --resume tells these on stderr; `sync` prints them
        log.warning("retired run %s of trial %s (%s, unknown to Ray's saved state)", run_id, trial_id, status)
    for run_id, trial_id, _ in kept:
        log.warning("kept run %s of trial %s (finished, unknown to Ray's saved state) as an orphan", run_id, trial_id)
    return {**counts, "orphaned": len(retired) + len(kept), "retired": retired, "kept": kept}


def retire_orphans(client: MlflowClient, logger: MlflowTrialLogger, known: set[str]) -> tuple[list, list]:
    """Child runs of trials that Ray's saved state does not know (created after its last snapshot,
    before the driver died; the resumed searcher makes new trials instead), so that the study holds
    exactly one run per trial. Returns (retired, kept), each a list of (run id, trial id, status).

    A run that never finished (RUNNING, KILLED, FAILED) is tagged outcome=orphaned, ended KILLED and
    soft-deleted (mlflow gc or the UI can restore it). A FINISHED run holds completed results and is
    never deleted: its role becomes ``orphan`` (analysis reads role=trial only), and it stays, under
    the parent run, for anyone to look at. A trial of several seeds' seed runs go with it."""
    query = f"tags.`{TAG_PARENT}` = '{logger.parent_run_id}' and tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'"
    runs = search_runs(client, logger.experiment_id, query)
    retired, kept = [], []
    for run in runs:
        trial_id, status = run.data.tags.get(TAG_TRIAL), run.info.status
        if trial_id in known:
            continue
        # A trial of several seeds: its seeds' runs, nested under its run, share its fate.
        nested = search_runs(client, logger.experiment_id, f"tags.`{TAG_PARENT}` = '{run.info.run_id}'")
        if status == "FINISHED":
            for r in (run, *nested):
                store.set_tags(client, r.info.run_id, {TAG_ROLE: ROLE_ORPHAN})
            kept.append((run.info.run_id, trial_id, status))
            continue
        for r in (*nested, run):
            store.set_tags(client, r.info.run_id, {TAG_OUTCOME: "orphaned"})
            if r.info.status == "RUNNING":
                store.finish_run(client, r.info.run_id, status="KILLED")
            client.delete_run(r.info.run_id)
        retired.append((run.info.run_id, trial_id, status))
    return retired, kept


def load_logger(experiment_path: str, tracking_uri: str | None) -> MlflowTrialLogger:
    """A logger for the study at ``experiment_path``, rebuilt from birdplane's manifest there."""
    record = manifest.read(experiment_path)
    uri = resolve_tracking_uri(tracking_uri) if tracking_uri else record.tracking_uri
    check_tracking_uri(uri)
    # An extension's trials belong to the sweep it extends (same parent run).
    name = record.options.get("extends") or record.name
    return MlflowTrialLogger(
        uri,
        record.experiment,
        name,
        parent_params={},
        parent_artifacts={},
        data_config=record.data,
        key=experiment_path,
        role=record.kind,
        resolve=resolver_for(record),
    )


def resolver_for(record: manifest.Manifest):
    """The trial config -> full config map the study's driver used (None: Tune's configs are full)."""
    if record.kind == "capacity":
        from study.capacity import resolver_from_manifest

        return resolver_from_manifest(record)
    return None


def sync_study(experiment_path: str, tracking_uri: str | None = None) -> dict:
    """`birdplane sync`: replay everything, then end the parent run as the live driver does:
    KILLED while trials are unfinished, FAILED when every trial failed, else FINISHED."""
    bound_mlflow_http()
    logger = load_logger(experiment_path, tracking_uri)
    # Not while a driver runs the study: it would end the runs that driver is still writing.
    with claimed(experiment_path, manifest.read(experiment_path).name, resume=True):
        logger.open_parent()
        logger.adopt_parent_source()
        counts = replay(logger, experiment_path)
        status = study_status(bool(counts["open"]), counts["statuses"])
        store.finish_run(MlflowClient(logger.tracking_uri), logger.parent_run_id, status=status)
    return {**counts, "parent_run_id": logger.parent_run_id, "tracking_uri": logger.tracking_uri}
