"""Successive halving replayed on full learning curves: what ASHA's reduction factor and grace do to
a sweep's best val_acc, its full-budget trials and its cost.

    birdplane sweep --sampler random --scheduler none --seed 0 --name full-random-0 \
        --tracking-uri sqlite:///full/mlflow.db --storage-path full/ray          # every trial to the budget
    python benchmarks/halving_replay.py --tracking-uri sqlite:///full/mlflow.db --name full-random-0

The sweep trains every trial to the budget, with no early stopping. Its sampler is random, so a
trial's config and training seed depend on its trial number alone, never on the results. Halving
only cuts a curve short; it does not change the curve. Each (reduction factor, grace) is replayed by
feeding the stored curves, in trial order, to the reproducible mode's own scheduler
(``study.reproducible.BatchedHalving``). The replay reproduces exactly what
``birdplane sweep --sampler random --reduction-factor RF --grace-epochs G`` would have run and found.
``--orders K`` also replays K random orders of the same trials: other draws of a random search.

The asynchronous mode (``--no-reproducible``, the default on a cluster) is simulated too. Ray's own
``ASHAScheduler`` gets the same curves. The arrival order comes from a clock: ``--slots`` trials run
at once, each epoch taking the time the trial logged for it (``epoch_seconds``). A real run's arrival
order moves with the machine's load, so those columns are an estimate; the reproducible ones are exact.

TPE's configs depend on the results it is told, so a replay of TPE is not exact. The stored curves
measure the scheduler alone, and the searcher comparison measures the searchers.

Per setting, the replay prints:
- the trials run to the full budget, and how many of them are on the val_acc-against-parameters
  frontier (fewer parameters and higher val_acc than any other full-budget trial);
- the best final val_acc, and the regret against no early stopping;
- the epochs spent, as a share of the no-stopping sweep's.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
from types import SimpleNamespace

from mlflow import MlflowClient
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from analysis.runs import finished, load_histories, load_study
from study.reproducible import batch_rungs, replay_halving


def simulate_async(curves, seconds, max_t: int, grace: int, rf: float, slots: int) -> list[int]:
    """The epochs each trial runs under Ray's asynchronous ASHA when ``slots`` trials run at once,
    started in trial order, each epoch taking its logged seconds."""
    scheduler = ASHAScheduler(
        time_attr="epoch", metric="val_acc", mode="max", max_t=max_t, grace_period=grace, reduction_factor=rf
    )
    trials = [SimpleNamespace(trial_id=str(n)) for n in range(len(curves))]
    runs, events, waiting = [0] * len(curves), [], list(range(len(curves)))[::-1]

    def start(now: float) -> None:
        n = waiting.pop()
        scheduler.on_trial_add(None, trials[n])
        heapq.heappush(events, (now + seconds[n][0], n, 1))

    for _ in range(min(slots, len(curves))):
        start(0.0)
    while events:
        now, n, epoch = heapq.heappop(events)
        result = {"epoch": epoch, "val_acc": curves[n][epoch - 1]}
        decision = scheduler.on_trial_result(None, trials[n], result)
        if decision == TrialScheduler.STOP or epoch == len(curves[n]):
            scheduler.on_trial_complete(None, trials[n], result)
            runs[n] = epoch
            if waiting:
                start(now)
        else:
            heapq.heappush(events, (now + seconds[n][epoch], n, epoch + 1))
    return runs


def frontier_size(points: list[tuple[int, float]]) -> int:
    """How many of (param_count, val_acc) no other point beats: as few parameters or fewer and a
    val_acc as high or higher, one of them strictly."""
    return sum(not any((q[0] <= p[0] and q[1] >= p[1]) and q != p for q in points) for p in points)


def outcome(curves, params, max_t, grace, rf, batch, seconds=None) -> dict:
    """One setting's sweep: the reproducible mode's halving (exact) or, given ``seconds``, the
    asynchronous mode's (simulated on a clock, ``batch`` trials at once)."""
    if seconds is None:
        runs = replay_halving(curves, max_t, grace, rf, batch)
    else:
        runs = simulate_async(curves, seconds, max_t, grace, rf, batch)
    finals = [c[e - 1] for c, e in zip(curves, runs, strict=True)]
    full = [i for i, e in enumerate(runs) if e == max_t]
    return {
        "full": len(full),
        "frontier": frontier_size([(params[i], finals[i]) for i in full]),
        "best": max(finals),
        "epochs": sum(runs),
    }


def study_curves(uri: str, name: str):
    """The sweep's per-epoch val_acc and epoch seconds, and its parameter counts, in trial order (by
    training seed); and its epoch budget."""
    client = MlflowClient(uri)
    trials = finished(load_study(client, name).trials).sort_values("seed")
    histories = load_histories(client, list(trials["run_id"]), metrics=("val_acc", "epoch_seconds"))
    per_run = [histories[histories["run_id"] == r].sort_values("epoch") for r in trials["run_id"]]
    curves = [list(h["val_acc"]) for h in per_run]
    seconds = [list(h["epoch_seconds"]) for h in per_run]
    return curves, seconds, [int(p) for p in trials["param_count"]], int(trials["epochs"].max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--name", required=True, help="a sweep run with --sampler random --scheduler none")
    p.add_argument("--factors", default="2,3,4", help="reduction factors to replay")
    p.add_argument("--graces", default="1,2,4,8", help="grace periods to replay")
    p.add_argument("--batch", type=int, default=2, help="the reproducible mode's batch: the sweep's concurrency")
    p.add_argument("--orders", type=int, default=200, help="random trial orders replayed beside the sweep's own")
    a = p.parse_args()
    curves, seconds, params, max_t = study_curves(a.tracking_uri, a.name)
    full_budget = [c for c in curves if len(c) == max_t]
    no_stop, no_stop_best = sum(len(c) for c in curves), max(c[-1] for c in curves)
    print(
        f"{a.name}: {len(curves)} trials, {len(full_budget)} ran all {max_t} epochs; best final val_acc "
        f"{no_stop_best:.4f}; {no_stop} epochs without early stopping"
    )
    rng = random.Random(0)
    orders = [rng.sample(range(len(curves)), len(curves)) for _ in range(a.orders)]
    for mode in ("reproducible", "async"):
        print(
            f"\n{mode} ({'exact replay' if mode == 'reproducible' else 'simulated on the logged epoch times'}, "
            f"{a.batch} at a time): the sweep's own trial order | mean [min, max] over {a.orders} random orders"
        )
        print(
            f"{'rf':>4} {'grace':>5} {'rungs':>12} | {'full':>4} {'front':>5} {'best':>6} {'epochs':>6} | "
            f"{'full-budget trials':>18} {'frontier':>8} {'best val_acc':>21} {'regret':>7} {'epochs':>6}"
        )
        for rf in (float(f) for f in a.factors.split(",")):
            for grace in (int(g) for g in a.graces.split(",")):
                if grace >= max_t:
                    continue

                def run(order, rf=rf, grace=grace, mode=mode):
                    timing = [seconds[i] for i in order] if mode == "async" else None
                    return outcome(
                        [curves[i] for i in order], [params[i] for i in order], max_t, grace, rf, a.batch, timing
                    )

                own, many = run(range(len(curves))), [run(o) for o in orders]

                def spread(key, fmt, many=many):
                    values = [m[key] for m in many]
                    return f"{statistics.fmean(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"

                regret = no_stop_best - statistics.fmean(m["best"] for m in many)
                share = statistics.fmean(m["epochs"] for m in many) / no_stop
                rungs = ",".join(str(r) for r in batch_rungs(grace, max_t, rf))
                frontier = statistics.fmean(m["frontier"] for m in many)
                print(
                    f"{rf:>4g} {grace:>5} {rungs:>12} | {own['full']:>4} {own['frontier']:>5} {own['best']:>6.4f} "
                    f"{own['epochs'] / no_stop:>6.0%} | {spread('full', '.1f'):>18} {frontier:>8.1f} "
                    f"{spread('best', '.4f'):>21} {regret:>7.4f} {share:>6.0%}"
                )


if __name__ == "__main__":
    main()
