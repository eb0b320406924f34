"""MLflow logging of a sweep from the driver: one parent run, one nested child run per trial.

A population trial (a capacity study's cell: ``{'members': [point, ...]}``) has one child run per
member, keyed by the trial id and the member's index (``birdplane.member``) and written exactly as a
solo trial's run (params, tags, name, per-epoch metrics, config.json, model.pt).
A sweep trial of several seeds (``{'train': ..., 'seeds': [...]}``, ``sweep --seeds-per-trial``)
has its own run, which holds the seeds' mean record per epoch (no model: the seeds have theirs), and
one run per seed nested under it (role ``trial_seed``, keyed as a member), written as a solo run.

A Ray Tune callback turns trial events into MLflow calls and hands them to a background thread,
so Tune's event loop never waits on the tracking server. Calls run in order; a failed call (the
server went away) is retried with back-off and never dropped. Trials need no MLflow access.
How this stays consistent with Ray's own record is mapped in ``study/records.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

from mlflow import MlflowClient
from ray import tune

from analysis.record import (
    CONFIG_ARTIFACT,
    EPOCH_METRICS,
    ROLE_SWEEP,
    ROLE_TRIAL,
    ROLE_TRIAL_SEED,
    SEED_METRICS,
    TAG_MEMBER,
    TAG_NODE,
    TAG_PARENT,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_STUDY,
    TAG_TRIAL,
    readable_name,
)
from study import records as store
from study.errors import UsageError
from trainables.bundle import bundle_args
from trainables.checkpoint import TrainState
from trainables.population import PopulationState
from trainables.seeds import population_mean_history
from trainables.tune_adapter import read_checkpoint

log = logging.getLogger(__name__)


class Outbox:
    """Runs queued calls in order on one thread; retries the head call until it succeeds."""

    def __init__(self, max_backoff: float = 10.0):
        self._queue: deque[Callable[[], None]] = deque()
        self._cv = threading.Condition()
        self._busy = False
        self.max_backoff = max_backoff
        self.failures = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._work, name="birdplane-mlflow", daemon=True)
        self._thread.start()

    def put(self, call: Callable[[], None]) -> None:
        with self._cv:
            self._queue.append(call)
            self._cv.notify_all()

    def drain(self, timeout: float) -> int:
        """Wait until every call has run or ``timeout`` passed; returns how many are left."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cv.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            return len(self._queue) + int(self._busy)

    def _work(self) -> None:
        backoff = 0.5
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                call = self._queue[0]
                self._busy = True
            try:
                call()
            except Exception as err:  # the server is away, or answered with an error: keep and retry
                self.failures += 1
                self.last_error = f"{type(err).__name__}: {err}"
                log.warning("MLflow call failed (will retry in %.1fs): %s", backoff, self.last_error)
                with self._cv:
                    self._busy = False
                time.sleep(backoff)
                backoff = min(self.max_backoff, backoff * 2)
                continue
            backoff = 0.5
            with self._cv:
                self._queue.popleft()
                self._busy = False
                self._cv.notify_all()


def trial_outcome(planned: int | None, last_result: dict, error: bool) -> str:
    """How a trial ended: failed, diverged, stopped before its ``planned`` epochs, or completed."""
    if error:
        return "failed"
    if last_result.get("status") == "diverged":
        return "diverged"
    epoch = last_result.get("epoch", 0)
    return "stopped_early" if planned is not None and epoch < planned else "completed"


def members_of(config: dict | None) -> list | None:
    """A population trial's member points (None: a solo trial)."""
    members = (config or {}).get("members")
    return members if isinstance(members, list) else None


def seed_points(config: dict | None) -> list[dict]:
    """A sweep trial of several seeds: one solo config per seed, the runs nested under the trial's
    (none for any other trial)."""
    seeds, train = (config or {}).get("seeds"), (config or {}).get("train")
    if not isinstance(seeds, list) or not isinstance(train, dict):
        return []
    return [{"train": {**train, "seed": int(s)}} for s in seeds]


def member_key(trial_id: str, member) -> str:
    """The logger's key of a member's run ("TRIALID/K"); a solo trial's run is keyed by its id."""
    return trial_id if member is None else f"{trial_id}/{member}"


def split_key(key: str) -> tuple[str, int | None]:
    trial_id, _, member = key.partition("/")
    return trial_id, (int(member) if member else None)


def member_records(rows: list[dict], member: int) -> list[dict]:
    """Member ``member``'s records, one an epoch, from a population trial's rows as Ray's results
    hold them (``members/K/<metric>`` columns; a retired member's last record repeats: kept once),
    each with the row's node."""
    prefix, by_epoch = f"members/{member}/", {}
    for row in rows:
        record = {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)}
        epoch = record.get("epoch")
        if isinstance(epoch, (int, float)) and epoch == epoch:  # not NaN (a member absent from a row)
            by_epoch[int(epoch)] = {**record, "epoch": int(epoch), "node_id": row.get("node_id")}
    return [by_epoch[e] for e in sorted(by_epoch)]


# The logger the driver holds for each experiment folder (see MlflowTrialLogger.__reduce__).
_ACTIVE: dict[str, MlflowTrialLogger] = {}


def study_status(interrupted: bool, trial_statuses: list[str]) -> str:
    """How a study's parent run ends, live or after `sync`: KILLED while trials are unfinished (a
    --resume adopts it again), FAILED when it has trials and every one failed (Tune's ERROR; its
    command exits 1: study.cli.exit_code), else FINISHED."""
    if interrupted:
        return "KILLED"
    if trial_statuses and all(status == "ERROR" for status in trial_statuses):
        return "FAILED"
    return "FINISHED"


def _revive(key: str, state: dict) -> MlflowTrialLogger:
    active = _ACTIVE.get(key)
    if active is not None:
        return active
    logger = MlflowTrialLogger.__new__(MlflowTrialLogger)
    logger.__setstate__(state)
    return logger


class MlflowTrialLogger(tune.Callback):
    """Parent run for the sweep, one child run per trial, per-epoch metrics in batches.

    ``key`` names the experiment folder. Tune pickles its callbacks into the experiment state and
    unpickles them on ``Tuner.restore``: a logger the driver ``activate``d for the same folder is
    used in place of the unpickled copy, so the driver keeps a handle on the callback Tune calls
    without reaching into Tune's private state.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        study_name: str,
        parent_params: dict,
        parent_artifacts: dict[str, dict],
        data_config: dict,
        key: str = "",
        drain_timeout: float | None = None,
        role: str = ROLE_SWEEP,
        resolve=None,
        after_close: Callable | None = None,
    ):
        self.key = key
        # after_close(checkpoint): called in order once a completed trial's run holds its model
        # (the runner slims the trial's checkpoints then: nothing will resume it).
        self.after_close = after_close
        self.resolve = resolve  # trial config -> full config (a capacity grid's point index -> its point)
        self.role = role  # the parent run's role: a sweep or a capacity study
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.study_name = study_name
        self.parent_params = parent_params
        self.parent_artifacts = parent_artifacts
        self.data_config = data_config
        # How long the end of a sweep waits for MLflow to take what is queued (an outage).
        self.drain_timeout = (
            drain_timeout if drain_timeout is not None else float(os.environ.get("BIRDPLANE_MLFLOW_DRAIN_S", "300"))
        )
        self._init_runtime()

    # The callback is pickled into Tune's experiment state (tuner.pkl) and rebuilt on --resume.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __reduce__(self):
        return _revive, (self.key, self.__getstate__())

    def activate(self) -> MlflowTrialLogger:
        _ACTIVE[self.key] = self
        return self

    def _init_runtime(self) -> None:
        self._client: MlflowClient | None = None
        self._outbox: Outbox | None = None
        self._runs: dict[str, str] = {}  # trial id (a member: member_key) -> run id
        self._read: tuple = (None, None)  # the last checkpoint read to close runs: (path, state)
        self._last_step: dict[str, int] = {}
        self._last_result: dict[str, dict] = {}
        self._experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.last_undelivered = 0
        self.interrupted = False
        self._started: set[str] = set()
        self._closed: set[str] = set()
        self._skipped: frozenset[str] = frozenset()
        self._seeded: set[str] = set()  # trials of several seeds (their seeds' runs nest under theirs)

    def skip(self, trial_ids) -> None:
        """Trials an earlier driver completed in MLflow (a --resume): Tune's events for them are
        ignored, so their runs are not reopened or closed again."""
        self._skipped = frozenset(trial_ids)

    @property
    def runs(self) -> dict[str, str]:
        return dict(self._runs)

    # ---------------------------------------------------------------- set-up, synchronous
    def open_parent(self) -> str:
        """Create or adopt the sweep's parent run; called before Ray starts trials so errors surface."""
        if self.parent_run_id is None:
            self._client = store.open_client(self.tracking_uri)
            self._experiment_id = store.ensure_experiment(self._client, self.experiment)
            key = {TAG_STUDY: self.study_name, TAG_ROLE: getattr(self, "role", ROLE_SWEEP)}
            role = getattr(self, "role", ROLE_SWEEP)
            self.parent_run_id, created = store.ensure_run(
                self._client, self._experiment_id, key, self.study_name, store.source_tags(f"birdplane {role}")
            )
            if created:
                self._settle_twin_parents(key)
            store.log_params(self._client, self.parent_run_id, self.parent_params)
            if created:
                for name, payload in self.parent_artifacts.items():
                    store.log_dict(self._client, self.parent_run_id, payload, name)
            if created or not self._client.get_run(self.parent_run_id).inputs.dataset_inputs:
                store.log_dataset(self._client, self.parent_run_id, self.data_config)
            self._outbox = Outbox()
        return self.parent_run_id

    def _settle_twin_parents(self, key: dict) -> None:
        """Two starts of one study that both found no parent run created one each: the earlier run
        (by start time, then id) is the study's, and the later start deletes its own and stops."""
        runs = self._client.search_runs(
            [self._experiment_id],
            filter_string=" and ".join(f"tags.`{k}` = '{v}'" for k, v in key.items()),
            max_results=10,
        )
        first = min(runs, key=lambda r: (r.info.start_time, r.info.run_id), default=None)
        if first is not None and first.info.run_id != self.parent_run_id:
            self._client.delete_run(self.parent_run_id)
            raise UsageError(
                f"study {self.study_name!r} was started twice at once: MLflow parent run {first.info.run_id} "
                "is the other start's; pass another --name"
            )

    def source_tags(self) -> dict[str, str]:
        """The trial runs' source tags: the study's (its parent run's, where ``sync`` read them)."""
        source = getattr(self, "source", None)
        return dict(source) if source else store.source_tags(f"birdplane {getattr(self, 'role', ROLE_SWEEP)}")

    def adopt_parent_source(self) -> None:
        """Take the trial runs' source tags from the parent run (``sync``: the runs it creates name
        the checkout that trained them, not the one that replays them)."""
        tags = self._client.get_run(self.parent_run_id).data.tags
        self.source = {k: v for k, v in tags.items() if k.startswith("mlflow.source.") or k == "mlflow.user"}

    def setup(self, **info) -> None:
        self.open_parent()

    # ---------------------------------------------------------------- Tune events -> queued calls
    def _enqueue(self, call: Callable[[], None]) -> None:
        assert self._outbox is not None, "open_parent() first"
        self._outbox.put(call)

    def full_config(self, config: dict) -> dict:
        resolve = getattr(self, "resolve", None)
        return resolve(dict(config)) if resolve is not None else dict(config)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if trial.trial_id in self._skipped:
            return
        trial_id, config = trial.trial_id, self.full_config(trial.config)
        self._started.add(trial_id)
        members = members_of(config)
        if members is None:
            self._enqueue(lambda: self._open_child(trial_id, config))
            members = seed_points(config)  # a trial of several seeds: its seeds' runs, nested under it
            if members:
                self._seeded.add(trial_id)
        for k, point in enumerate(members):
            self._enqueue(lambda k=k, point=point: self._open_child(trial_id, point, member=k))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        trial_id = trial.trial_id
        if trial_id in self._skipped:
            return
        node = result.get("node_id")
        moved = node and (self._last_result.get(trial_id) or {}).get("node_id") != node  # first result, or moved
        self._last_result[trial_id] = dict(result)
        members = result.get("members")
        # A population's result: every member's latest record (an epoch already logged is not logged again).
        per_run = {trial_id: result}
        if isinstance(members, dict):
            per_run = {member_key(trial_id, k): r for k, r in members.items()}
            if trial_id in self._seeded:  # a trial of seeds: its own run holds the seeds' mean
                per_run = {trial_id: result, **per_run}
        for key, r in per_run.items():
            record = {k: r[k] for k in ("epoch", *EPOCH_METRICS, *SEED_METRICS) if k in r}
            extra = {"param_count": r.get("param_count")}
            if moved:
                self._enqueue(lambda key=key: store.set_tags(self._client, self._child_id(key), {TAG_NODE: node}))
            self._enqueue(lambda key=key, record=record, extra=extra: self._log_epoch(key, record, extra))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._close(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._close(trial, error=True)

    def _close(self, trial, error: bool) -> None:
        trial_id, checkpoint = trial.trial_id, trial.checkpoint
        if trial_id in self._skipped:
            return
        self._closed.add(trial_id)
        last = self._last_result.get(trial_id) or dict(trial.last_result or {})
        config = self.full_config(trial.config)
        members = members_of(config)
        seeds = seed_points(config) if members is None else []
        if seeds:
            self._seeded.add(trial_id)
        for k, point in enumerate(members or seeds):  # a trial of seeds: its seeds' runs before its own
            key, m = member_key(trial_id, k), dict((last.get("members") or {}).get(str(k)) or {})
            self._enqueue(lambda key=key, point=point, m=m: self._close_child(key, point, checkpoint, m, error))
        if members is None:
            self._enqueue(lambda: self._close_child(trial_id, config, checkpoint, last, error))
        after = getattr(self, "after_close", None)
        if after is not None and not error:
            self._enqueue(lambda: after(checkpoint))

    def on_experiment_end(self, trials, **info) -> None:
        # Tune also ends the experiment on Ctrl+C: then the unfinished trials' runs and the parent
        # are marked KILLED, and a --resume adopts them again (they return to RUNNING).
        # Tune marks trials it stops at the end TERMINATED too, so what counts is whether this
        # session saw the trial complete or fail.
        unfinished = [tid for tid in self._started if tid not in self._closed]
        self.interrupted = bool(unfinished)
        for trial_id in unfinished:
            self._enqueue(lambda trial_id=trial_id: self._kill_child(trial_id))
        self.finish(study_status(bool(unfinished), [t.status for t in trials]))

    def _kill_child(self, trial_id: str) -> None:
        for key, run_id in list(self._runs.items()):  # a population trial's: each member's run
            if split_key(key)[0] == trial_id:
                store.finish_run(self._client, run_id, status="KILLED")

    def finish(self, status: str = "FINISHED") -> int:
        """End the parent run once every queued call is through; returns calls left undelivered."""
        if self._outbox is None:
            return 0
        parent = self.parent_run_id
        self._enqueue(lambda: store.finish_run(self._client, parent, status=status))
        left = self._outbox.drain(self.drain_timeout)
        self.last_undelivered = left
        if left:
            log.error(
                "%d MLflow calls could not be delivered (last error: %s); run `birdplane sync`",
                left,
                self._outbox.last_error,
            )
        return left

    # ---------------------------------------------------------------- the calls themselves
    def _child_id(self, key: str) -> str:
        if key not in self._runs:
            trial_id, member = split_key(key)
            self._open_child(trial_id, None, member=member)
        return self._runs[key]

    def _open_child(self, trial_id: str, config: dict | None, reopen: bool = True, member: int | None = None) -> bool:
        """Find or create the trial's run (a population trial's: member ``member``'s) and give it the
        config's params, tags and name; returns whether an existing run lacked its config (opened
        from a placeholder, or by an older sync)."""
        client = self._client
        nested = member is not None and trial_id in self._seeded  # a seed's run: under its trial's
        if nested and trial_id not in self._runs:
            self._open_child(trial_id, None, reopen=reopen)
        parent = self._runs[trial_id] if nested else self.parent_run_id
        key = {TAG_PARENT: parent, TAG_TRIAL: trial_id}
        if member is not None:
            key[TAG_MEMBER] = str(member)
        # A trial Tune created but never started holds placeholders (not dicts) where its sampled
        # values will go: its run gets those values when the trial starts.
        extra = (config or {}).get("tags")
        extra = extra if isinstance(extra, dict) else {}
        train = (config or {}).get("train")
        tags = {
            TAG_ROLE: ROLE_TRIAL_SEED if nested else ROLE_TRIAL,
            TAG_STUDY: self.study_name,
            **extra,
            **self.source_tags(),
        }
        name = readable_name(train) if isinstance(train, dict) else f"trial_{trial_id}"
        run_id, created = store.ensure_run(client, self._experiment_id, key, name, tags, reopen=reopen)
        lacked = False
        if created:
            store.log_dataset(client, run_id, self.data_config)
        elif isinstance(train, dict):  # a run opened earlier without its config (a placeholder, a replay)
            lacked = "hidden_sizes" not in client.get_run(run_id).data.params
            store.set_tags(client, run_id, {**extra, TAG_RUN_NAME: name})
        if isinstance(train, dict):
            searched = {k: v for k, v in config.items() if k not in ("train", "tags")}
            store.log_params(
                client,
                run_id,
                {
                    **train,
                    "depth": len(train.get("hidden_sizes", [])),
                    **{f"search.{k}": v for k, v in searched.items()},
                },
            )
        run_key = member_key(trial_id, member)
        self._runs[run_key] = run_id
        self._last_step[run_key] = store.last_logged_step(client, run_id)
        return lacked

    def _log_epoch(self, trial_id: str, record: dict, extra: dict) -> None:
        self._log_records(trial_id, [record], extra.get("param_count"))

    def _log_records(self, trial_id: str, records: list[dict], param_count) -> None:
        """Epochs not yet in the run, in one batch; param_count once, with the first epoch."""
        run_id = self._child_id(trial_id)
        if self._last_step.get(trial_id, -1) < 0 and param_count is not None:
            store.log_metrics(self._client, run_id, {"param_count": param_count}, step=0)
        self._last_step[trial_id] = store.log_epochs(self._client, run_id, records, self._last_step.get(trial_id, -1))

    # ---------------------------------------------------------------- replay from Ray's results
    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    def reconcile(
        self, trial_id: str, config: dict, records: list[dict], checkpoint, status: str, resuming: bool
    ) -> str:
        """Bring one trial's run in line with Ray's record of it, synchronously (sync, --resume).

        Returns "closed" (a finished trial's run was completed now), "open" (the trial is
        unfinished) or "unchanged". An adopted run keeps its status unless this changes it.
        A population trial's members are reconciled one by one, each from its own records.
        """
        outcomes = self.reconcile_runs(trial_id, config, records, checkpoint, status, resuming)
        return next((o for o in ("closed", "open") if o in outcomes), "unchanged")

    def reconcile_runs(
        self, trial_id: str, config: dict, records: list[dict], checkpoint, status: str, resuming: bool
    ) -> list[str]:
        """``reconcile``, with one outcome per run: a solo trial's, or each member's."""
        members = members_of(config)
        if members is None:
            seeds = seed_points(config)  # a trial of seeds: its seeds' runs, then its own
            if seeds:
                self._seeded.add(trial_id)
            return [
                *(
                    self._reconcile_run(trial_id, k, point, member_records(records, k), checkpoint, status, resuming)
                    for k, point in enumerate(seeds)
                ),
                self._reconcile_run(trial_id, None, config, records, checkpoint, status, resuming),
            ]
        return [
            self._reconcile_run(trial_id, k, point, member_records(records, k), checkpoint, status, resuming)
            for k, point in enumerate(members)
        ]

    def _reconcile_run(
        self, trial_id: str, member, config: dict, records: list[dict], checkpoint, status: str, resuming: bool
    ) -> str:
        lacked = self._open_child(trial_id, config, reopen=False, member=member)
        key = member_key(trial_id, member)
        run_id = self._runs[key]
        if records:
            self._log_records(key, records, records[-1].get("param_count"))
            node = records[-1].get("node_id")
            if isinstance(node, str) and node:  # the node it ran on last, as the live logger tags it
                store.set_tags(self._client, run_id, {TAG_NODE: node})
        run_status = self._client.get_run(run_id).info.status
        if status in ("TERMINATED", "ERROR"):
            if run_status in ("FINISHED", "FAILED"):
                if lacked:  # closed without its config (an older sync): config.json written again
                    resolved = self._resolved(config, read_checkpoint(checkpoint))
                    store.log_dict(self._client, run_id, resolved, CONFIG_ARTIFACT)
                return "unchanged"
            self._close_child(key, config, checkpoint, records[-1] if records else {}, status == "ERROR")
            return "closed"
        if not resuming and run_status == "RUNNING":
            store.finish_run(self._client, run_id, status="KILLED")
        return "open"

    def _state(self, checkpoint, key: str) -> TrainState | None:
        """The run's final state: the trial's checkpoint, or its member's part of a population's
        (read once for all members)."""
        path = getattr(checkpoint, "path", None)
        if path is None or self._read[0] != path:
            self._read = (path, read_checkpoint(checkpoint))
        state = self._read[1]
        if isinstance(state, PopulationState):
            member = split_key(key)[1]
            return state.member(member) if member is not None else state  # a trial of seeds: the whole
        return state

    def _close_child(self, trial_id: str, config: dict, checkpoint, last: dict, error: bool) -> None:
        if trial_id not in self._runs:  # a trial that failed before it started (its actor never came up)
            trial, member = split_key(trial_id)
            self._open_child(trial, config, member=member)
        run_id = self._runs[trial_id]
        state = self._state(checkpoint, trial_id)
        if isinstance(state, PopulationState):  # a trial of seeds' own run: their mean, no model of its own
            history, model = population_mean_history(state), None
            planned = (config.get("train") or {}).get("epochs")
        elif state is not None:
            history, planned = state.history, state.config.get("epochs")
            model = bundle_args(state.config, state.data, state.model, state.epoch, state.best_model, state.best_epoch)
        else:
            history, model, planned = [], None, None
        # Epochs that reached the checkpoint but not MLflow (e.g. reported before a driver crash)
        # are logged here too.
        self._last_step[trial_id] = store.write_finished_run(
            self._client,
            run_id,
            history=history,
            after_step=self._last_step.get(trial_id, -1),
            param_count=last.get("param_count"),
            outcome=trial_outcome(planned, last, error),
            resolved_config=self._resolved(config, state),
            model=model,
            ok=not error,
        )

    def _resolved(self, config: dict, state: TrainState | None) -> dict:
        """The run's config.json: the trial's full config, its data and its normalisation."""
        return {
            "train": config.get("train"),
            "search": {k: v for k, v in config.items() if k not in ("train", "tags")},
            "data": self.data_config,
            "normalisation": state.data if state else None,
        }
