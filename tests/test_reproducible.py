"""The reproducible search's two pieces, on the real Ray and Optuna objects: a batch's results reach
Optuna in trial order whatever order they finish in, and successive halving decides against earlier
batches only, so its decisions do not depend on arrival order."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import optuna
import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from study.reproducible import BatchedHalving, OrderedBatchLimiter, batch_rungs, replay_halving, rung_cutoff


def space(trial):
    trial.suggest_float("x", 0.0, 1.0)


def limited_searcher(batch: int) -> OrderedBatchLimiter:
    searcher = OptunaSearch(space=space, metric="val_acc", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))
    return OrderedBatchLimiter(searcher, max_concurrent=batch)


@pytest.mark.parametrize("finish_order", [(2, 0, 1), (1, 2, 0), (0, 1, 2)])
def test_a_batch_s_results_reach_optuna_in_trial_order_whatever_order_they_finish_in(finish_order):
    limiter = limited_searcher(3)
    ids = [f"t{k}" for k in (7, 3, 5)]  # Tune's ids are random: the suggestion order is what counts
    for tid in ids:
        assert limiter.suggest(tid) is not None
    assert limiter.suggest("t9") is None, "a 4th trial was suggested before the batch of 3 finished"
    study = limiter.searcher._ot_study
    told = []
    for k in finish_order:
        limiter.on_trial_complete(ids[k], result={"val_acc": 0.5 + k / 10})
        told.append([t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    assert told[:-1] == [[]] * (len(ids) - 1), "results reached Optuna before the whole batch had finished"
    complete = sorted(
        (t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.datetime_complete
    )
    assert [t.number for t in complete] == [0, 1, 2], "told to Optuna in completion order, not trial order"
    assert [t.value for t in complete] == [0.5, 0.6, 0.7], "a trial's value went to another trial"
    assert limiter.suggest("t9") is not None, "the next batch did not start once the batch was told"


def test_the_plain_limiter_tells_in_completion_order_so_the_test_above_can_fail():
    from ray.tune.search import ConcurrencyLimiter

    searcher = OptunaSearch(space=space, metric="val_acc", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))
    limiter = ConcurrencyLimiter(searcher, max_concurrent=3, batch=True)
    for tid in ("a", "b", "c"):
        limiter.suggest(tid)
    for tid in ("c", "a", "b"):
        limiter.on_trial_complete(tid, result={"val_acc": 0.5})
    done = sorted(searcher._ot_study.trials, key=lambda t: t.datetime_complete)
    assert [t.number for t in done] == [2, 0, 1]


def test_the_rungs_and_cutoff_are_asha_s():
    cases = [(4, 40, 3), (1, 2, 3), (1, 27, 3), (2, 100, 4), (1, 1000, 2), (1, 40, 2.5), (4, 40, 1.5), (3, 50, 1.7)]
    for grace, max_t, rf in cases:
        asha = AsyncHyperBandScheduler(grace_period=grace, max_t=max_t, reduction_factor=rf, metric="m", mode="max")
        milestones = sorted(m for m, _ in asha._brackets[0]._rungs)
        # Epochs are whole: ASHA decides a milestone at the first epoch that reaches it (1, 2.5, 6.25 -> 1, 3, 7).
        expected = [math.ceil(m - 1e-9) for m in milestones if math.ceil(m - 1e-9) < max_t]
        assert batch_rungs(grace, max_t, rf) == expected, (grace, max_t, rf)
        values = {str(i): float(v) for i, v in enumerate([0.3, 0.9, 0.5, 0.7, 0.1])}
        assert rung_cutoff(list(values.values()), rf) == pytest.approx(asha._brackets[0].cutoff(values))
    assert rung_cutoff([], 3) is None


def decisions(order: list[tuple[int, int, float]], batch_size: int = 2) -> dict:
    """Feed (trial number, epoch, val_acc) results to a fresh BatchedHalving in the given arrival order;
    the decision for each (trial, epoch)."""
    sched = BatchedHalving(
        metric="val_acc", mode="max", max_t=9, grace_period=1, reduction_factor=3, batch_size=batch_size
    )
    trials = [SimpleNamespace(trial_id=f"id{n}") for n in range(6)]
    for t in trials:
        sched.on_trial_add(None, t)
    return {(n, e): sched.on_trial_result(None, trials[n], {"epoch": e, "val_acc": v}) for n, e, v in order}


def test_halving_decisions_do_not_depend_on_the_arrival_order_within_a_batch():
    # batch 0 = trials 0, 1 (all finish before batch 1 starts); batch 1 = trials 2, 3; batch 2 = 4, 5.
    first = [(0, 1, 0.80), (1, 1, 0.60), (0, 3, 0.85), (1, 3, 0.65)]
    second = [(2, 1, 0.70), (3, 1, 0.50), (2, 3, 0.90), (3, 3, 0.55)]
    third = [(4, 1, 0.79), (5, 1, 0.81)]
    outcomes = set()
    for a, b in itertools.product(itertools.permutations(second), itertools.permutations(third)):
        outcomes.add(tuple(sorted(decisions(first + list(a) + list(b)).items())))
    assert len(outcomes) == 1, "the same results in another arrival order gave other decisions"
    got = dict(next(iter(outcomes)))
    assert {k: v for k, v in got.items() if k[0] < 2} == dict.fromkeys(((0, 1), (1, 1), (0, 3), (1, 3)), "CONTINUE")
    # Batch 1 at epoch 1 against batch 0's {0.80, 0.60}: cutoff = the 2/3 quantile = 0.733.
    assert got[(2, 1)] == TrialScheduler.STOP and got[(3, 1)] == TrialScheduler.STOP
    # Batch 2 against batches 0 and 1 at epoch 1 {0.8, 0.6, 0.7, 0.5}: cutoff 0.74.
    assert got[(4, 1)] == TrialScheduler.CONTINUE and got[(5, 1)] == TrialScheduler.CONTINUE


def test_a_trial_at_the_budget_is_stopped_and_results_without_the_metric_continue():
    got = decisions([(0, 9, 0.5)])
    assert got[(0, 9)] == TrialScheduler.STOP
    sched = BatchedHalving(metric="val_acc", mode="min", max_t=9, grace_period=1, reduction_factor=3, batch_size=1)
    t0, t1 = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    sched.on_trial_add(None, t0)
    sched.on_trial_add(None, t1)
    assert sched.on_trial_result(None, t0, {"epoch": 1}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, t0, {"epoch": 1, "val_acc": 0.2}) == TrialScheduler.CONTINUE
    # mode min: a higher loss than batch 0's is cut, a lower one is kept.
    assert sched.on_trial_result(None, t1, {"epoch": 1, "val_acc": 0.3}) == TrialScheduler.STOP


def test_ray_s_random_search_with_asha_is_refused_in_reproducible_mode_and_allowed_without(tmp_path):
    from tests.conftest import make_image_tree, run_birdplane

    tree = make_image_tree(tmp_path / "img", per_class=4, test_per_class=1, classes=("airplane", "bird"))
    common = ["sweep", "--check", "--search", "random", "--data-root", tree, "--storage-path", tmp_path / "ray"]
    common += ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--cache-dir", tmp_path / "cache"]
    refused = run_birdplane(*common)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "birdplane: error: --search random with --scheduler asha is not reproducible (Ray's random search does not "
        "batch): use --sampler random (Optuna's, reproducible), --scheduler none, or --no-reproducible"
    ], refused.stderr
    assert run_birdplane(*common, "--no-reproducible").returncode == 0
    assert run_birdplane(*common, "--scheduler", "none").returncode == 0


def test_replayed_halving_cuts_each_curve_where_the_scheduler_stops_it():
    # max_t 9, grace 1, rf 3: rungs at epochs 1 and 3; batches of 2.
    curves = [
        [0.80, 0.82, 0.85, 0.86, 0.86, 0.87, 0.87, 0.88, 0.88],  # batch 0: never cut
        [0.60, 0.62, 0.65],  # batch 0, diverged after epoch 3: ends there
        [0.70, 0.80, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90],  # below 0.733 at epoch 1: cut
        [0.75, 0.76, 0.70, 0.71, 0.72, 0.73, 0.74, 0.75, 0.76],  # passes epoch 1, cut at 3 (cutoff 0.783)
        [0.81, 0.82, 0.86, 0.87, 0.88, 0.89, 0.90, 0.91, 0.92],  # passes both rungs: the full budget
        [0.50, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90],
    ]
    assert replay_halving(curves, max_t=9, grace=1, rf=3, batch=2) == [9, 3, 1, 3, 9, 1]
    # One batch of all six: nothing is ever compared, every curve runs out.
    assert replay_halving(curves, max_t=9, grace=1, rf=3, batch=6) == [9, 3, 9, 9, 9, 9]
    # Loss curves (mode min) are cut from above: the same curves negated give the same decisions.
    negated = [[-v for v in c] for c in curves]
    assert replay_halving(negated, max_t=9, grace=1, rf=3, batch=2, mode="min") == [9, 3, 1, 3, 9, 1]
    # A larger factor keeps fewer: rf 9 has a single rung at epoch 1 and cuts below its 8/9 quantile.
    assert replay_halving(curves, max_t=9, grace=1, rf=9, batch=2) == [9, 3, 1, 1, 9, 1]


@pytest.fixture()
def prepared(tmp_path):
    from study.sweep import SweepOptions, prepare
    from tests.conftest import make_image_tree
    from trainables.config import DataConfig

    tree = make_image_tree(tmp_path / "img", per_class=4, test_per_class=1, classes=("airplane", "bird"))
    data = DataConfig(root=str(tree), cache_dir=str(tmp_path / "cache"))

    def prep(**options):
        options = {
            "name": "s",
            "storage_path": str(tmp_path / "ray"),
            "tracking_uri": f"sqlite:///{tmp_path / 'm.db'}",
            **options,
        }
        return prepare(SweepOptions(**options), data)

    return prep


def test_either_mode_s_scheduler_halves_by_the_sweep_s_factor_from_its_grace(prepared):
    from study.sweep import make_scheduler

    for reproducible in (True, False):
        prep = prepared(epochs=20, grace_epochs=2, reduction_factor=2.5, reproducible=reproducible)
        scheduler = make_scheduler(prep, concurrency=3)
        if reproducible:
            assert isinstance(scheduler, BatchedHalving)
            assert (scheduler.rungs, scheduler.reduction_factor, scheduler.batch_size) == ([2, 5, 13], 2.5, 3)
        else:
            assert isinstance(scheduler, AsyncHyperBandScheduler)
            bracket = scheduler._brackets[0]
            assert (sorted(m for m, _ in bracket._rungs), bracket.rf) == ([2, 5, 12.5], 2.5)
    assert make_scheduler(prepared(epochs=20, scheduler="none"), concurrency=2) is None


def test_the_default_sweep_halves_by_3_at_epochs_4_12_and_36(prepared):
    """What the README and docs/usage.md say of the default sweep (40 epochs)."""
    from study.sweep import make_scheduler

    scheduler = make_scheduler(prepared(epochs=40), concurrency=2)
    assert (scheduler.rungs, scheduler.reduction_factor) == ([4, 12, 36], 3)
