"""``sweep --seeds-per-trial K``: each trial trains its recipe with K seeds as one population and is
scored by their mean; each seed is a run nested under its trial's run (real Ray, real MLflow, a
real Optuna study on disk)."""

from __future__ import annotations

import math

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from ray.tune import ExperimentAnalysis

from analysis.export import study_tables
from analysis.record import ROLE_TRIAL, ROLE_TRIAL_SEED, TAG_MEMBER, TAG_PARENT, TAG_ROLE, TAG_TRIAL
from analysis.runs import read_json_artifact
from tests.conftest import SMOKE_SPACE, last_json, make_image_tree, run_birdplane
from trainables.seeds import SEED_SD

K = 3


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeded")
    # Overlapping classes and a validation split of 40: seeds of one recipe reach different accuracies.
    tree = make_image_tree(root / "images", per_class=200, test_per_class=4, classes=("airplane", "bird"), jitter=80)
    (root / "space.yaml").write_text(yaml.safe_dump({**SMOKE_SPACE, "loss": {"choices": ["nll", "bce"]}}))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    proc = run_birdplane(
        # ASHA on (its first rung at epoch 1; reproducible batches of 2): some trials stop early.
        *("sweep", "--smoke", "--num-samples", 4, "--epochs", 3, "--seeds-per-trial", K, "--max-concurrent", 2),
        *("--space", root / "space.yaml", "--data-root", tree, "--cache-dir", root / "cache", "--name", "seeded"),
        *("--storage-path", root / "ray", "--tracking-uri", uri, "--json"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"summary": last_json(proc.stdout), "uri": uri, "root": root}


def runs_by_role(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("seeded").experiment_id
    runs = client.search_runs([experiment], max_results=500)
    trials = {r.data.tags[TAG_TRIAL]: r for r in runs if r.data.tags.get(TAG_ROLE) == ROLE_TRIAL}
    seeds = [r for r in runs if r.data.tags.get(TAG_ROLE) == ROLE_TRIAL_SEED]
    return client, trials, seeds


def val_curve(client, run_id: str, key: str = "val_acc") -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


# One worker runs the module in order (the module's sweep is built once; the sync test comes last).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.xdist_group("seeded-sweep")]


def epochs_of(client, run) -> list[int]:
    return sorted(val_curve(client, run.info.run_id))


def test_each_seed_is_a_finished_run_nested_under_its_trial_s_run(seeded):
    client, trials, seeds = runs_by_role(seeded["uri"])
    assert len(trials) == 4 and len(seeds) == 4 * K
    for trial_id, trial in trials.items():
        mine = [r for r in seeds if r.data.tags[TAG_TRIAL] == trial_id]
        assert sorted(r.data.tags[TAG_MEMBER] for r in mine) == [str(k) for k in range(K)]
        assert {r.data.tags[TAG_PARENT] for r in mine} == {trial.info.run_id}, "nested under the trial's run"
        first = int(trial.data.params["seed"])
        assert sorted(int(r.data.params["seed"]) for r in mine) == list(range(first, first + K))
        for r in mine:  # the recipe, seed apart, trained as long as its trial
            same = {k: v for k, v in r.data.params.items() if k != "seed" and not k.startswith("search.")}
            assert same == {k: trial.data.params[k] for k in same}
            assert r.info.status == "FINISHED" and r.data.tags["outcome"] == trial.data.tags["outcome"]
            assert epochs_of(client, r) == epochs_of(client, trial)
            assert "model.pt" in [a.path for a in client.list_artifacts(r.info.run_id)]


def test_a_trial_s_run_holds_its_seeds_mean_and_sd_at_every_epoch(seeded):
    client, trials, seeds = runs_by_role(seeded["uri"])
    spread = 0
    for trial_id, trial in trials.items():
        curves = [val_curve(client, r.info.run_id) for r in seeds if r.data.tags[TAG_TRIAL] == trial_id]
        mean, sd = val_curve(client, trial.info.run_id), val_curve(client, trial.info.run_id, "val_acc_sd")
        assert sorted(mean) == sorted(sd) == sorted(curves[0]) and mean
        for epoch in mean:
            values = [c[epoch] for c in curves]
            m = sum(values) / K
            assert mean[epoch] == pytest.approx(m, abs=1e-12)
            assert sd[epoch] == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in values) / (K - 1)), abs=1e-9)
            spread += max(values) != min(values)
    assert spread > 0, "the seeds never differed: the test cannot tell a mean from one seed"


def test_a_trial_the_scheduler_stopped_closes_as_stopped_early_with_its_mean_s_summary(seeded):
    """The trial's own run is closed from its population checkpoint (its seeds' mean history)."""
    client, trials, _ = runs_by_role(seeded["uri"])
    outcomes = {t: r.data.tags["outcome"] for t, r in trials.items()}
    assert sorted(outcomes.values()).count("stopped_early") >= 1, outcomes  # the situation the test needs
    assert set(outcomes.values()) <= {"completed", "stopped_early"}
    by_id = {t["trial_id"]: t for t in seeded["summary"]["trials"]}
    for trial_id, run in trials.items():
        mean = val_curve(client, run.info.run_id)
        assert outcomes[trial_id] == ("completed" if max(mean) == 3 else "stopped_early")
        assert run.data.metrics["epochs_run"] == max(mean)
        assert run.data.metrics["best_val_acc"] == max(mean.values())
        resolved = read_json_artifact(client, run.info.run_id, "config.json")
        assert resolved["normalisation"]["classes"] == ["airplane", "bird"]
        assert resolved["search"]["seeds"] == [int(run.data.params["seed"]) + k for k in range(K)]
        sd = val_curve(client, run.info.run_id, "val_acc_sd")
        assert by_id[trial_id]["val_acc_sd"] == pytest.approx(sd[max(sd)], abs=1e-12)


def test_the_value_optuna_and_the_scheduler_get_is_the_seeds_mean(seeded):
    client, trials, seeds = runs_by_role(seeded["uri"])
    # What Ray's scheduler saw: each result's val_acc, beside every seed's latest record in that result.
    analysis = ExperimentAnalysis(str(seeded["root"] / "ray" / "seeded"))
    for trial_id, frame in analysis.trial_dataframes.items():
        for _, row in frame.iterrows():
            members = [row[f"members/{k}/val_acc"] for k in range(K)]
            assert row["val_acc"] == pytest.approx(sum(members) / K, abs=1e-12)
        curve = val_curve(client, trials[trial_id].info.run_id)
        assert frame["val_acc"].tolist() == [curve[e] for e in sorted(curve)]
    # What Optuna was told: the last mean, trial by trial (its persisted study, beside the MLflow store).
    study = optuna.load_study(study_name="seeded", storage=f"sqlite:///{seeded['root'] / 'optuna.db'}")
    told = sorted(t.value for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    last = [val_curve(client, t.info.run_id) for t in trials.values()]
    assert told == pytest.approx(sorted(c[max(c)] for c in last), abs=1e-12)
    assert sorted(t["val_acc"] for t in seeded["summary"]["trials"]) == pytest.approx(told, abs=1e-12)


def test_the_study_s_tables_count_trials_not_seeds(seeded):
    client = MlflowClient(seeded["uri"])
    trials, curves = study_tables(client, "seeded")
    assert len(trials) == 4 and curves["run_id"].nunique() == 4
    # Each trial's curve holds its seeds' sd beside their mean, as its run logged it.
    for run_id, frame in curves.groupby("run_id"):
        logged = {m.step: m.value for m in client.get_metric_history(run_id, SEED_SD)}
        assert dict(zip(frame["epoch"], frame[SEED_SD], strict=True)) == logged and logged


def test_an_extension_or_a_resume_keeps_the_sweep_s_seeds_per_trial_and_another_k_is_refused(seeded):
    from study.errors import UsageError
    from study.sweep import SweepOptions, prepare, prepare_extension

    storage = str(seeded["root"] / "ray")
    ext = prepare_extension(SweepOptions(name="seeded", storage_path=storage), None, 1)
    assert ext.options.seeds_per_trial == K and ext.options.extends == "seeded"
    assert prepare_extension(SweepOptions(name="seeded", storage_path=storage, seeds_per_trial=K), None, 1)
    for other in (1, K + 1):
        with pytest.raises(UsageError, match=f"scores each trial over {K} seed"):
            prepare_extension(SweepOptions(name="seeded", storage_path=storage, seeds_per_trial=other), None, 1)
    resumed = prepare(SweepOptions(name="seeded", storage_path=storage, resume=True), ext.data)
    assert resumed.options.seeds_per_trial == K


def test_a_rerun_of_a_trial_of_seeds_retrains_on_the_seeds_after_its_own_and_claims_no_reproduction(seeded):
    client, trials, _ = runs_by_role(seeded["uri"])
    proc = run_birdplane(
        *("rerun", "--experiment", "seeded", "--seeds", 2, "--tracking-uri", seeded["uri"], "--json"),
        *("--data-root", seeded["root"] / "images"),
        env={"BIRDPLANE_CACHE": str(seeded["root"] / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    best = trials[summary["trial_id"]]
    first = int(best.data.params["seed"])
    assert summary["seeds"] == [first + K, first + K + 1], "independent of the seeds that selected it"
    assert summary["reproduced"] is None


def _as_logged(uri: str) -> dict:
    """Every trial's and seed's run as the study holds it, keyed by (trial id, member), ids aside."""
    client, trials, seeds = runs_by_role(uri)
    parent_of = {r.info.run_id: (r.data.tags[TAG_TRIAL], None) for r in trials.values()}
    out = {}
    for r in [*trials.values(), *seeds]:
        tags = r.data.tags
        out[(tags[TAG_TRIAL], tags.get(TAG_MEMBER))] = {
            "status": r.info.status,
            "role": tags[TAG_ROLE],
            "nested_under": parent_of.get(tags[TAG_PARENT], "the study"),
            "name": tags["mlflow.runName"],
            "outcome": tags.get("outcome"),
            "params": dict(r.data.params),
            "val_acc": val_curve(client, r.info.run_id),
            "val_acc_sd": val_curve(client, r.info.run_id, "val_acc_sd"),
            "train_loss": val_curve(client, r.info.run_id, "train_loss"),
            "summary": {k: v for k, v in r.data.metrics.items() if k in ("best_val_acc", "epochs_run", "param_count")},
        }
    return out


def test_sync_rebuilds_a_trial_s_run_and_its_seeds_runs_as_the_live_logger_wrote_them(seeded):
    """The runs lost (deleted from the store), `sync` replays them from Ray's record alone."""
    live = _as_logged(seeded["uri"])
    client, trials, seeds = runs_by_role(seeded["uri"])
    for run in [*trials.values(), *seeds]:
        client.delete_run(run.info.run_id)
    assert _as_logged(seeded["uri"]) == {}
    proc = run_birdplane("sync", "--name", "seeded", "--storage-path", seeded["root"] / "ray")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{4 * (K + 1)} runs completed" in proc.stdout, proc.stdout
    assert _as_logged(seeded["uri"]) == live
