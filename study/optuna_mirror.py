"""The sweep's Optuna study, persisted for optuna-dashboard and for `--extend`, kept in step with Tune.

OptunaSearch keeps its study in memory, inside the searcher that Tune snapshots with the
experiment, so a `--resume` (even from a stale snapshot, after a SIGKILL) always finds a study
consistent with the trials Tune restores. This Tune callback copies every trial that finished —
its parameters with their distributions, its objective value(s), its per-epoch val_acc as
intermediate values and its Ray trial id — into the persisted study (an Optuna RDB URL), once:
a trial already there (by its Ray trial id) is not added again, so replays and resumes never
duplicate. Only finished trials are written, so the persisted study holds no RUNNING trial that a
killed driver could leave behind. A write that fails (the database is locked or gone) is logged
and skipped: the sweep never stops for its dashboard copy.
"""

from __future__ import annotations

import logging
import math

from ray import tune

log = logging.getLogger(__name__)
TRIAL_ATTR = "ray_trial_id"


class OptunaStudyMirror(tune.Callback):
    def __init__(self, url: str, study_name: str, metrics: list[str], directions: list[str], distributions: dict):
        self.url, self.study_name = url, study_name
        self.metrics, self.directions, self.distributions = metrics, directions, distributions
        self.curves: dict[str, dict[int, float]] = {}
        self._study = None
        self._known: set[str] = set()

    def __getstate__(self) -> dict:  # Tune pickles its callbacks into the experiment state
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._study, self._known = None, set()

    def study(self):
        import optuna

        if self._study is None:
            self._study = optuna.create_study(
                storage=self.url, study_name=self.study_name, directions=self.directions, load_if_exists=True
            )
            self._known = {t.user_attrs.get(TRIAL_ATTR) for t in self._study.get_trials(deepcopy=False)}
        return self._study

    def setup(self, **info) -> None:
        try:
            self.study()  # the study exists (and the dashboard lists it) from the sweep's start
        except Exception as err:
            log.warning("Optuna study %s at %s not available: %s", self.study_name, self.url, err)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metrics[0])
        if "epoch" in result and isinstance(value, (int, float)) and math.isfinite(value):
            self.curves.setdefault(trial.trial_id, {})[int(result["epoch"])] = float(value)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.write(trial.trial_id, trial.config, trial.last_result or {}, error=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.write(trial.trial_id, trial.config, trial.last_result or {}, error=True)

    def write(self, trial_id: str, config: dict, last: dict, error: bool) -> bool:
        """Add the finished trial to the persisted study unless it is there; True if added."""
        import optuna
        from optuna.trial import TrialState

        try:
            study = self.study()
            if trial_id in self._known:
                return False
            params = {k: config[k] for k in self.distributions if k in config}
            values = [last.get(m) for m in self.metrics]
            ok = not error and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
            curve = self.curves.get(trial_id, {}) if len(self.metrics) == 1 else {}
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.COMPLETE if ok else TrialState.FAIL,
                    params=params,
                    distributions={k: self.distributions[k] for k in params},
                    values=[float(v) for v in values] if ok else None,
                    intermediate_values=curve,
                    user_attrs={TRIAL_ATTR: trial_id},
                )
            )
            self._known.add(trial_id)
            return True
        except Exception as err:  # the dashboard's copy never stops the sweep
            log.warning("could not copy trial %s into the Optuna study %s: %s", trial_id, self.study_name, err)
            return False
