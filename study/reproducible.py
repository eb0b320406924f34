"""A reproducible parallel search: the same flags, seed and data give the same trials, configs and
per-epoch metrics, at any concurrency; only timings differ.

What makes an asynchronous search depend on timing, and what this module does about each:

- **What the searcher is told, and when.** Ray Tune's ``ConcurrencyLimiter(batch=True)`` already
  waits for a whole batch of trials before the searcher sees any of its results, so every ask of
  the next batch sees the same finished trials. But it tells them in completion order, and a TPE
  study's history is then ordered by timing. ``OrderedBatchLimiter`` tells them in the order they
  were suggested (the Optuna trial numbers).
- **Early stopping.** ASHA compares a trial at a rung with whatever other trials happened to reach
  that rung before it. ``BatchedHalving`` applies ASHA's rule (stop below the ``1 - 1/rf``
  quantile of the rung) against the trials of *earlier batches* only, which had all finished when
  the batch started, so the decision is the same in every run, without pausing anyone. Its first
  batch is never stopped, as ASHA's first trials are not.
- **Seeds.** Each trial's seed is the sweep seed's offset plus its trial number
  (``study.space.DefineByRun``), not a draw.

This module subclasses Ray's, so it imports Ray at its top: import it only where a tuner is built
(``study.sweep.build_tuner``), as the rest of study/ imports Ray inside its functions.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter


def batch_rungs(grace: int, max_t: int, reduction_factor: float) -> list[int]:
    """The epochs at which ASHA decides, for one bracket (ascending): its milestones grace, grace*rf,
    ... below max_t, each decided at the first epoch that reaches it (a factor of 2.5 from grace 1:
    milestones 1, 2.5, 6.25, decided at epochs 1, 3 and 7)."""
    count = int(math.log(max_t / grace) / math.log(reduction_factor) + 1)
    epochs = (math.ceil(grace * reduction_factor**k - 1e-9) for k in range(count))
    return [e for e in epochs if e < max_t]


def rung_cutoff(values: list[float], reduction_factor: float) -> float | None:
    """ASHA's cutoff: the ``1 - 1/rf`` quantile of a rung's recorded values (None when empty)."""
    if not values:
        return None
    return float(np.nanpercentile(values, (1 - 1 / reduction_factor) * 100))


class OrderedBatchLimiter(ConcurrencyLimiter):
    """``ConcurrencyLimiter(searcher, max_concurrent, batch=True)`` that tells a finished batch's
    results to ``searcher`` in the order its trials were suggested, not the order they finished."""

    def __init__(self, searcher, max_concurrent: int):
        super().__init__(searcher, max_concurrent=max_concurrent, batch=True)
        self.suggested: dict[str, int] = {}  # trial id -> the order it was suggested in

    def suggest(self, trial_id: str):
        suggestion = super().suggest(trial_id)
        if trial_id in self.live_trials and trial_id not in self.suggested:
            self.suggested[trial_id] = len(self.suggested)
        return suggestion

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
        if not self._limit_concurrency or trial_id not in self.live_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)
        self.cached_results[trial_id] = (result, error)
        self.num_unfinished_live_trials -= 1
        if self.num_unfinished_live_trials > 0:
            return None
        for tid in sorted(self.cached_results, key=lambda t: self.suggested.get(t, math.inf)):
            res, err = self.cached_results[tid]
            self.searcher.on_trial_complete(tid, result=res, error=err)
            self.live_trials.remove(tid)
        self.cached_results = {}
        self.num_unfinished_live_trials = 0
        return None


class BatchedHalving(FIFOScheduler):
    """Successive halving decided per rung against earlier batches only (see the module's doc).

    Trials are numbered in the order Tune adds them, which, behind an ``OrderedBatchLimiter`` of
    ``batch_size``, is the order they were suggested: trial n is in batch ``n // batch_size``.
    A trial that reaches ``max_t`` epochs is stopped, as ASHA stops it."""

    def __init__(
        self, *, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float, batch_size: int
    ):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.sign = 1.0 if mode == "max" else -1.0
        self.max_t, self.reduction_factor, self.batch_size = max_t, reduction_factor, batch_size
        self.rungs = batch_rungs(grace_period, max_t, reduction_factor)
        self.number: dict[str, int] = {}  # trial id -> the order Tune added it in
        self.recorded: dict[int, dict[int, float]] = {r: {} for r in self.rungs}  # rung -> number -> value
        self.stopped = 0

    def on_trial_add(self, tune_controller, trial):
        self.number.setdefault(trial.trial_id, len(self.number))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        epoch, value = result.get("epoch"), result.get(self._metric)
        if epoch is None or value is None:
            return TrialScheduler.CONTINUE
        if epoch >= self.max_t:
            return TrialScheduler.STOP
        if epoch not in self.recorded:
            return TrialScheduler.CONTINUE
        n = self.number[trial.trial_id]
        rung = self.recorded[epoch]
        earlier = [v for m, v in rung.items() if m // self.batch_size < n // self.batch_size]
        rung[n] = self.sign * float(value)
        cutoff = rung_cutoff(earlier, self.reduction_factor)
        if cutoff is not None and self.sign * float(value) < cutoff:
            self.stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"Using BatchedHalving (reproducible ASHA): num_stopped={self.stopped}, rungs {self.rungs}"


def replay_halving(
    curves: list[list[float]], max_t: int, grace: int, rf: float, batch: int, mode: str = "max"
) -> list[int]:
    """The epochs each trial would run under ``BatchedHalving``, given each trial's full per-epoch
    metric (``curves``, in trial order, ``batch`` trials per batch). Exact for a sweep whose configs
    and seeds do not depend on results (Optuna's random sampler): halving only cuts a curve short.
    A curve shorter than ``max_t`` (a trial that diverged) ends where it ends."""
    scheduler = BatchedHalving(
        metric="metric", mode=mode, max_t=max_t, grace_period=grace, reduction_factor=rf, batch_size=batch
    )
    runs = []
    for n, curve in enumerate(curves):
        trial = SimpleNamespace(trial_id=str(n))
        scheduler.on_trial_add(None, trial)
        for epoch, value in enumerate(curve, start=1):
            decision = scheduler.on_trial_result(None, trial, {"epoch": epoch, "metric": value})
            if decision == TrialScheduler.STOP or epoch == len(curve):
                runs.append(epoch)
                break
    return runs
