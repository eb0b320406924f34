"""`birdplane rerun`: what one seed's retraining reports and what a confirmed trial's seeds report
as one population (the Ray tasks' own functions, run here); reruns and confirmations (`--top`) of a
real smoke sweep in a real mlflow server."""

import json

import pytest
import torch
from mlflow import MlflowClient

from study.rerun import train_seed, train_seeds
from tests.conftest import correct, run_birdplane
from trainables import loop, population
from trainables.data import load_study_data
from trainables.loop import evaluate, fit, normalise


def test_a_rerun_s_test_numbers_come_from_the_best_epoch_s_weights_and_the_last_ones_beside_them(noisy):
    data, config = noisy.data, noisy.config
    # The same seeded run as the rerun's (fit is bit-identical for a config and seed): its two sets of
    # weights, scored here on the official test split.
    reference = fit(config, data)
    n_test = len(data.test.y)
    best = correct(reference.best_model, config, data.test, data.mean, data.std)
    last = correct(reference.model.state_dict(), config, data.test, data.mean, data.std)
    assert best != last, "the situation this test needs: best and last weights score differently on test"
    outcome = train_seed(config.to_dict(), data)
    assert outcome["best_epoch"] == reference.best_epoch < len(outcome["history"])
    assert round(outcome["test_acc"] * n_test) == best, "test_acc is the best epoch's weights' accuracy"
    assert round(outcome["test_acc_last"] * n_test) == last, "test_acc_last is the last epoch's"


TOLERANCE = {"rel": 1e-4, "abs": 1e-5, "nan_ok": True}  # as tests/test_population.py: batched against one-net kernels


def test_a_confirmed_trial_s_seeds_train_in_one_population_each_as_its_solo_retraining(noisy, monkeypatch):
    data, config = noisy.data, noisy.config
    # Three seeds of the trial, and a fourth member whose rate makes it diverge (a population's
    # members share only SHARED_FIELDS; the seeds of a trial share everything but the seed).
    members = [config.replace(seed=s).to_dict() for s in (7, 8, 9)] + [config.replace(seed=10, lr=1e12).to_dict()]
    solo = [train_seed(m, data, with_test=False) for m in members]
    assert [o["status"] for o in solo] == ["completed"] * 3 + ["diverged"], "the situation this test needs"
    assert any(o["best_epoch"] < len(o["history"]) for o in solo[:3]), "and a best epoch that is not the last"
    calls = []

    def counted(configs, *args, **kwargs):
        calls.append([c.seed for c in configs])
        return fit_population(configs, *args, **kwargs)

    fit_population = population.fit_population
    monkeypatch.setattr(population, "fit_population", counted)
    monkeypatch.setattr(loop, "fit", lambda *a, **k: pytest.fail("a solo fit inside the population's task"))
    outcomes = train_seeds(members, data)
    assert calls == [[7, 8, 9, 10]], "one population for all the members"
    assert len(outcomes) == len(solo)
    for member, alone in zip(outcomes, solo, strict=True):
        seed = member["config"]["seed"]
        assert member["population"] == 4
        assert member["config"] == alone["config"] and member["meta"] == alone["meta"]
        assert (member["status"], member["best_epoch"], member["param_count"]) == (
            alone["status"],
            alone["best_epoch"],
            alone["param_count"],
        ), seed
        assert [r["epoch"] for r in member["history"]] == [r["epoch"] for r in alone["history"]], seed
        for got, want in zip(member["history"], alone["history"], strict=True):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                assert got[key] == pytest.approx(want[key], **TOLERANCE), (seed, got["epoch"], key)
        # The model bundle: the best epoch's weights first, the last epoch's beside them.
        assert {k: v for k, v in member["bundle"].items() if "state" not in k} == {
            k: v for k, v in alone["bundle"].items() if "state" not in k
        }, seed
        for key in ("state_dict", "last_state"):
            assert (key in member["bundle"]) == (key in alone["bundle"]), (seed, key)
            for name, weight in member["bundle"].get(key, {}).items():
                torch.testing.assert_close(
                    weight, alone["bundle"][key][name], rtol=1e-4, atol=1e-5, equal_nan=True, msg=f"{seed} {key} {name}"
                )


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_rerun_reproduces_the_same_seed_trial_exactly_and_adds_test_numbers(smoke_sweep, tmp_path):
    proc = run_birdplane(
        "rerun",
        "--experiment",
        smoke_sweep["name"],
        "--tracking-uri",
        smoke_sweep["uri"],
        "--seeds",
        2,
        "--register",
        "birdplane-smoke",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    best = max(smoke_sweep["summary"]["trials"], key=lambda t: (t["val_acc"], -t["param_count"]))
    assert summary["trial_metric"] == pytest.approx(best["val_acc"])
    client = MlflowClient(smoke_sweep["uri"])

    # The same-seed rerun (the first seed is the trial's own) against the trial, compared here.
    def curves(run_id):
        return {
            key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in ("train_loss", "train_acc", "val_loss", "val_acc")
        }

    trial_curves, rerun_curves = curves(summary["trial_run_id"]), curves(summary["runs"][0]["run_id"])
    assert trial_curves["val_acc"] and trial_curves == rerun_curves
    assert summary["reproduced"] is True
    # Like for like: the trial's own seed reproduces it, so only the other seed is independent.
    final, best_row = summary["like_for_like"]
    assert (final["metric"], best_row["metric"]) == ("final", "best")
    trial_val = [v for _, v in trial_curves["val_acc"]]
    assert best_row["sweep"] == best_row["own_seed"] == pytest.approx(max(trial_val))
    assert final["sweep"] == final["own_seed"] == pytest.approx(sum(trial_val[-5:]) / len(trial_val[-5:]))
    assert final["independent_seeds"] == best_row["independent_seeds"] == 1
    other = [v for _, v in curves(summary["runs"][1]["run_id"])["val_acc"]]
    assert best_row["independent_mean"] == pytest.approx(max(other))
    assert best_row["luck"] == pytest.approx(max(trial_val) - max(other))
    assert curves(summary["runs"][1]["run_id"]) != trial_curves, "another seed gives another history"
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["birdplane.role"] == "rerun" and parent.data.tags["rerun_of"] == summary["trial_run_id"]
    assert "test_acc_mean" in parent.data.metrics
    for run in summary["runs"]:
        child = client.get_run(run["run_id"])
        assert child.data.tags["rerun_of"] == summary["trial_run_id"]
        assert child.data.tags["mlflow.parentRunId"] == summary["parent_run_id"]
        assert 0 <= child.data.metrics["test_acc"] <= 1 and "test_loss" in child.data.metrics
        registered = {"model"} if run is summary["runs"][0] else set()  # --register's folder: model/model.pt
        assert {a.path for a in client.list_artifacts(run["run_id"])} == {"config.json", "model.pt"} | registered
        assert [m.step for m in client.get_metric_history(run["run_id"], "val_acc")] == list(
            range(1, int(child.data.metrics["epochs_run"]) + 1)
        )
    # The saved model holds the best-val epoch's weights: they give exactly the logged test_acc.
    import mlflow.artifacts

    from trainables.bundle import load_bundle
    from trainables.config import DataConfig as _DataConfig

    first = client.get_run(summary["runs"][0]["run_id"])
    path = mlflow.artifacts.download_artifacts(
        summary["model_uri"], tracking_uri=smoke_sweep["uri"], dst_path=str(tmp_path / "model")
    )
    bundle = load_bundle(path)
    assert bundle.epoch == int(first.data.metrics["best_epoch"]) == summary["runs"][0]["best_epoch"]
    cfg = _DataConfig.from_dict(
        json.loads(
            open(
                mlflow.artifacts.download_artifacts(
                    f"runs:/{first.info.run_id}/config.json",
                    tracking_uri=smoke_sweep["uri"],
                    dst_path=str(tmp_path / "config"),
                )
            ).read()
        )["data"]
    )
    data = load_study_data(cfg, include_test=True)
    x = normalise(data.test.x, bundle.mean, bundle.std, torch.device("cpu"))
    assert evaluate(bundle.model, x, data.test.y, bundle.loss)["acc"] == first.data.metrics["test_acc"]
    # The model URI it prints works with predict.
    tree = smoke_sweep["data_root"]
    out = run_birdplane(
        "predict",
        "--model",
        summary["model_uri"],
        "--tracking-uri",
        smoke_sweep["uri"],
        tree / "test" / "bird",
        "--json",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    by_run = json.loads(out.stdout)
    assert len(by_run) == 10
    # --register: version 1 of the name, the @champion alias on it, both usable by predict (the same file).
    assert summary["registered"] == {
        "name": "birdplane-smoke",
        "version": 1,
        "uri": "models:/birdplane-smoke/1",
        "alias_uri": "models:/birdplane-smoke@champion",
    }
    version = client.get_model_version("birdplane-smoke", "1")
    assert version.run_id == first.info.run_id
    assert str(client.get_model_version_by_alias("birdplane-smoke", "champion").version) == "1"
    for uri in ("models:/birdplane-smoke/1", "models:/birdplane-smoke@champion"):
        registered = run_birdplane(
            "predict", "--model", uri, "--tracking-uri", smoke_sweep["uri"], tree / "test" / "bird", "--json"
        )
        assert registered.returncode == 0, registered.stderr[-2000:]
        assert json.loads(registered.stdout) == by_run


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_confirmation_retrains_the_top_trials_at_the_full_budget_as_child_runs_of_the_study(smoke_sweep, tmp_path):
    uri, name = smoke_sweep["uri"], smoke_sweep["name"]
    proc = run_birdplane("rerun", "--experiment", name, "--tracking-uri", uri, "--top", 2, "--seeds", 2, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    ranked = sorted(smoke_sweep["summary"]["trials"], key=lambda t: (-t["val_acc"], t["param_count"]))
    assert [t["trial_id"] for t in summary["trials"]] == [t["trial_id"] for t in ranked[:2]]
    assert summary["epochs"] == 2 and summary["parent_run_id"] == smoke_sweep["summary"]["parent_run_id"]
    client = MlflowClient(uri)
    for trial in summary["trials"]:
        assert len(trial["runs"]) == 2
        for run in trial["runs"]:
            r = client.get_run(run["run_id"])
            assert r.data.tags["birdplane.role"] == "confirm" and r.data.tags["confirms"] == trial["run_id"]
            assert r.data.tags["mlflow.parentRunId"] == summary["parent_run_id"]
            assert r.data.metrics["epochs_run"] == 2 and "test_acc" not in r.data.metrics, "validation only"
            assert r.data.tags["birdplane.population"] == "2", "the trial's 2 seeds trained as one population"
        rows = {row["metric"]: row for row in trial["like_for_like"]}
        assert set(rows) == {"final", "best"} and rows["best"]["independent_seeds"] == 1, "the own seed kept apart"
        assert rows["best"]["own_seed"] == pytest.approx(trial["runs"][0]["best_val_acc"])
        assert rows["best"]["independent_mean"] == pytest.approx(trial["runs"][1]["best_val_acc"])
    # The report puts the confirmed, equal-budget numbers beside the sweep's.
    from study.reporting import build_report

    report, _, _ = build_report(uri, name, tmp_path / "r")
    confirmed = report.confirmations.set_index("confirms")
    for trial in summary["trials"]:
        row = confirmed.loc[trial["run_id"]]
        assert row["seeds"] == 2 and row["best_val_acc"] == pytest.approx(trial["best_val_acc_mean"])
    assert len(report.trials) == len(smoke_sweep["summary"]["trials"]), "confirmations are not trials"


def test_retrainings_of_a_trial_of_several_seeds_start_after_them_and_of_a_solo_trial_at_its_seed():
    from study.rerun import first_new_seed

    assert first_new_seed({"seed": "12"}, 12) == 12, "the own seed first: it reproduces the trial"
    assert first_new_seed({"seed": "12", "search.seeds": "12,13,14"}, 12) == 15, "independent of the selection"
    assert first_new_seed({"search.seeds": "7"}, 7) == 7
