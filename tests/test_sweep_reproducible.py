"""A seeded sweep gives the same search: two reproducible sweeps (real Ray, concurrency 2, early
stopping on) and their extensions give identical trial tables; only timings differ."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow import MlflowClient

from analysis.export import search_digest, search_tables
from study.reproducible import replay_halving
from tests.conftest import make_image_tree, run_birdplane
from tests.test_sweep import small_space

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NAMES = ("rep", "rep-ext1")


def trial_table(uri: str, experiment: str):
    return search_tables(MlflowClient(uri), experiment)


def sweep(root, tree, name: str, *extra):
    uri = f"sqlite:///{root / 'mlflow.db'}"
    common = ["--data-root", tree, "--cache-dir", root / "cache", "--storage-path", root / "ray"]
    common += ["--tracking-uri", uri, "--max-concurrent", 2, "--cpus-per-trial", 1]
    proc = run_birdplane(
        "sweep",
        "--name",
        name,
        "--num-samples",
        6,
        "--space",
        small_space(root, epochs=4),
        "--grace-epochs",
        1,
        "--seed",
        3,
        *common,
        *extra,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return uri, common


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    # Overlapping classes (colour jitter), so recipes reach different accuracies and halving cuts some.
    return make_image_tree(
        tmp_path_factory.mktemp("repro-images"), per_class=60, test_per_class=5, classes=("airplane", "bird"), jitter=80
    )


def search_and_extend(tree, tmp_path, k: int):
    """One run of the whole search: a sweep, then its extension; the trial tables after each."""
    root = tmp_path / f"run{k}"
    root.mkdir()
    # The default on a local Ray is reproducible: the first run relies on it, the second says it.
    # A reduction factor other than the default: the extension must keep the sweep's.
    uri, common = sweep(root, tree, "rep", "--reduction-factor", 2.5, *(["--reproducible"] if k else []))
    first = trial_table(uri, "rep")
    ext = run_birdplane("sweep", "--name", "rep", "--extend", 2, *common)
    assert ext.returncode == 0, ext.stderr[-3000:]
    both = trial_table(uri, "rep")
    options = [json.loads((root / "ray" / n / "birdplane.json").read_text())["options"] for n in NAMES]
    assert [o["reproducible"] for o in options] == [True, True], "the manifests do not record the reproducible mode"
    assert [o["reduction_factor"] for o in options] == [2.5, 2.5], "the extension did not keep the reduction factor"
    return (search_digest(*first), search_digest(*both)), both


def test_two_reproducible_sweeps_and_their_extensions_give_identical_trial_tables(tree, tmp_path):
    # The two runs go side by side, so each one's trials finish in an order that the other's load
    # shifts: timing differs between them more than between two runs one after the other.
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda k: search_and_extend(tree, tmp_path, k), range(2)))
    digests, tables = zip(*runs, strict=True)
    table, per_epoch = tables[0]
    # The situation where timing could show: early stopping cut some trials, the others ran the budget.
    assert len(table) == 8 and table["epochs_run"].nunique() > 1, table[["seed", "epochs_run"]]
    assert len(per_epoch) == table["epochs_run"].sum()
    for k, what in enumerate(("trial table", "per-epoch metrics")):
        same_shape = tables[0][k].columns.equals(tables[1][k].columns) and len(tables[0][k]) == len(tables[1][k])
        diff = tables[0][k].compare(tables[1][k]) if same_shape else "(other columns or rows)"
        assert tables[0][k].to_csv(index=False) == tables[1][k].to_csv(index=False), (
            f"the same seed gave another search ({what}):\n{diff}"
        )
    assert digests[0] == digests[1]


def test_halving_replayed_on_a_no_stopping_sweep_is_what_the_halving_sweep_runs(tree, tmp_path):
    """benchmarks/halving_replay.py's premise: under Optuna's random sampler a trial's config and
    seed do not depend on results, so BatchedHalving replayed on the curves of a sweep without early
    stopping gives, trial for trial, the epochs and metrics of the same sweep with halving."""
    (tmp_path / "full").mkdir()
    (tmp_path / "cut").mkdir()
    full_uri, _ = sweep(tmp_path / "full", tree, "full", "--sampler", "random", "--scheduler", "none")
    cut_uri, _ = sweep(tmp_path / "cut", tree, "cut", "--sampler", "random", "--reduction-factor", 2)
    full, full_epochs = trial_table(full_uri, "full")
    cut, cut_epochs = trial_table(cut_uri, "cut")
    assert list(full["seed"]) == list(cut["seed"]) and set(full["epochs_run"]) == {4}, full[["seed", "epochs_run"]]
    curves = [list(full_epochs[full_epochs["seed"] == s].sort_values("epoch")["val_acc"]) for s in full["seed"]]
    replayed = replay_halving(curves, max_t=4, grace=1, rf=2, batch=2)
    assert replayed == list(cut["epochs_run"]), "the replay stopped other trials than the halving sweep did"
    assert 4 in replayed and min(replayed) < 4, "the situation cannot show: halving cut no trial, or every trial"
    # Halving cuts the curves short and changes nothing else in them.
    truncated = full_epochs.merge(cut[["seed", "epochs_run"]], on="seed")
    truncated = truncated[truncated["epoch"] <= truncated["epochs_run"]].drop(columns="epochs_run")
    columns = ["seed", "epoch", "val_acc", "train_loss", "val_loss"]
    assert truncated[columns].reset_index(drop=True).equals(cut_epochs[columns].reset_index(drop=True))
