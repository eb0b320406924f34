"""Fast checks of the search side, without Ray running: the Pareto set and what Optuna is told."""

import math

import optuna

from study.runner import pareto_set
from trainables.tune_adapter import reportable


def test_pareto_set_keeps_only_undominated_trials():
    trials = [
        {"val_acc": 0.8, "param_count": 100},
        {"val_acc": 0.85, "param_count": 1000},
        {"val_acc": 0.7, "param_count": 500},
        {"val_acc": 0.8, "param_count": 200},
        {"val_acc": float("nan"), "param_count": 10},
    ]
    assert [(t["val_acc"], t["param_count"]) for t in pareto_set(trials)] == [(0.8, 100), (0.85, 1000)]


def test_a_diverged_result_reaches_optuna_as_a_completed_bad_value():
    from ray.tune.search.optuna import OptunaSearch

    # The study lives in a storage we hold, so it is read back through Optuna's public API.
    storage = optuna.storages.InMemoryStorage()
    searcher = OptunaSearch(
        space={"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)},
        metric="val_loss",
        mode="min",
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=storage,
        study_name="diverged",
    )
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", result=reportable({"val_loss": float("nan"), "val_acc": 0.5, "epoch": 1}))
    (trial,) = optuna.load_study(study_name="diverged", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == math.inf


def _first_suggestions(storage, seeds, name="s") -> list[float]:
    """The first lr the extension's sampler (make_sampler, as build_tuner makes it) draws, per seed."""
    from study.sweep import make_sampler

    out = []
    for seed in seeds:
        study = optuna.create_study(
            storage=storage(),
            study_name=name,
            direction="maximize",
            load_if_exists=True,
            sampler=make_sampler("tpe", seed, startup=2),
        )
        out.append(study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}).params["lr"])
    return out


def test_an_extension_s_sampler_starts_from_every_finished_trial_of_the_persisted_study(tmp_path):
    from study.sweep import warm_start

    url = f"sqlite:///{tmp_path}/optuna.db"
    persisted = optuna.create_study(study_name="s", storage=url, direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    for i in range(30):  # the earlier sweep: the best lr was near 0.01
        x = 10 ** (-4 + 4 * i / 29)
        persisted.add_trial(
            optuna.trial.create_trial(params={"lr": x}, distributions={"lr": lr}, value=-abs(math.log10(x) + 2))
        )
    persisted.add_trial(
        optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={"lr": 0.5}, distributions={"lr": lr})
    )
    warm = _first_suggestions(lambda: warm_start(url, "s", ["maximize"]), range(10))
    cold = _first_suggestions(lambda: optuna.storages.InMemoryStorage(), range(10))
    # Warm-started, TPE draws around the earlier best from its first trial; cold, it draws at random.
    assert sorted(round(math.log10(x) + 2) for x in warm) == [0] * 10, f"not centred on lr 0.01: {warm}"
    assert warm != cold, "an extension's first suggestions are those of a sampler that saw no earlier trial"
    memory = optuna.load_study(study_name="s", storage=warm_start(url, "s", ["maximize"]))
    assert [t.state.name for t in memory.trials] == ["COMPLETE"] * 30, "finished trials only"
