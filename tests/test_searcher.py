"""Fast checks of the search side, without Ray running: the Pareto set and what Optuna is told."""
import math

import optuna

from study.runner import pareto_set
from trainables.tune_adapter import reportable


def test_pareto_set_keeps_only_undominated_trials():
    trials = [{"val_acc": 0.8, "param_count": 100}, {"val_acc": 0.85, "param_count": 1000},
              {"val_acc": 0.7, "param_count": 500}, {"val_acc": 0.8, "param_count": 200},
              {"val_acc": float("nan"), "param_count": 10}]
    assert [(t["val_acc"], t["param_count"]) for t in pareto_set(trials)] == [(0.8, 100), (0.85, 1000)]


def test_a_diverged_result_reaches_optuna_as_a_completed_bad_value():
    from ray.tune.search.optuna import OptunaSearch

    # The study lives in a storage we hold, so it is read back through Optuna's public API.
    storage = optuna.storages.InMemoryStorage()
    searcher = OptunaSearch(space={"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)},
                            metric="val_loss", mode="min", sampler=optuna.samplers.RandomSampler(seed=0),
                            storage=storage, study_name="diverged")
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", result=reportable({"val_loss": float("nan"), "val_acc": 0.5, "epoch": 1}))
    (trial,) = optuna.load_study(study_name="diverged", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == math.inf
