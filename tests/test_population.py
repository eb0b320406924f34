"""trainables/population.py: K same-shape nets in one batched step, each still its own run.

Pinned semantics: member k's history equals a solo ``fit`` of its config (same seed, same draws)
within float tolerance; stopping a member leaves the others as they were; a population resumed
from its one checkpoint continues exactly; members that cannot share a step are refused."""

import copy
import json
import math

import pytest
import torch

from study.cli import main
from tests.conftest import run_birdplane
from trainables import population
from trainables.config import ConfigError, TrainConfig
from trainables.loop import fit
from trainables.population import PopulationState, StackedOptimizer, check_population, fit_population

FAST = {"hidden_sizes": (32,), "batch_size": 16, "epochs": 3, "threads": 1}
# Each member its own seed, rate, momentum, decay, dropout, schedule and augmentation.
MEMBERS = [
    {"seed": 0, "lr": 0.05, "momentum": 0.9, "dropout": 0.2, "augment": "crop+flip", "schedule": "onecycle"},
    {"seed": 1, "lr": 0.02, "weight_decay": 1e-3},
    {"seed": 2, "lr": 0.03, "momentum": 0.5, "dropout": 0.1, "augment": "flip", "schedule": "cosine", "warmup": 0.1},
]
COMPARED = ("train_loss", "train_eval_loss", "train_acc", "val_loss", "val_acc", "val_ece", "gap", "lr")
COMPARED += ("val_select_loss", "val_select_acc", "val_report_loss", "val_report_acc")  # val's two halves
TOLERANCE = {"rel": 1e-4, "abs": 1e-5}  # float rounding of batched against one-net kernels


def configs_for(optimizer: str, **changes) -> list[TrainConfig]:
    scale = 1.0 if optimizer == "sgd" else 0.1  # Adam's rates are smaller
    return [TrainConfig(**{**FAST, **m, "optimizer": optimizer, "lr": m["lr"] * scale, **changes}) for m in MEMBERS]


def assert_same_history(got: list[dict], want: list[dict], exact: bool = False) -> None:
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for g, w in zip(got, want, strict=True):
        for key in COMPARED:
            if exact:
                assert g[key] == w[key] or (math.isnan(g[key]) and math.isnan(w[key])), (g["epoch"], key)
            else:
                assert g[key] == pytest.approx(w[key], **TOLERANCE), (g["epoch"], key)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_each_member_trains_as_its_solo_fit_would(tiny_data, optimizer):
    configs = configs_for(optimizer)
    members = fit_population(configs, tiny_data)
    for config, member in zip(configs, members, strict=True):
        solo = fit(config, tiny_data)
        assert member.status == solo.status == "completed"
        assert member.param_count == solo.param_count and member.best_epoch == solo.best_epoch
        assert_same_history(member.history, solo.history)
        for (name, p), q in zip(member.model.state_dict().items(), solo.model.state_dict().values(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_members_with_label_noise_train_on_the_solo_run_s_flipped_labels(tiny_data):
    configs = configs_for("sgd", label_noise=0.3, epochs=2)
    clean = fit_population(configs_for("sgd", epochs=2), tiny_data)
    for config, member, plain in zip(configs, fit_population(configs, tiny_data), clean, strict=True):
        assert_same_history(member.history, fit(config, tiny_data).history)
        assert member.history[-1]["train_acc"] != plain.history[-1]["train_acc"], "the labels were not flipped"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_members_stepped_by_one_baddbmm_per_layer_the_gpus_kernel_also_train_as_solo(tiny_data, monkeypatch, optimizer):
    monkeypatch.setattr(population, "MEMBERWISE_DEVICES", ())  # baddbmm on the CPU too
    configs = configs_for(optimizer, epochs=2)
    for config, member in zip(configs, fit_population(configs, tiny_data), strict=True):
        assert_same_history(member.history, fit(config, tiny_data).history)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("budget", [1, "two"])  # one member a group; groups of two and one
def test_members_trained_group_by_group_on_the_cpu_train_exactly_as_in_one_step(
    tiny_data, monkeypatch, optimizer, budget
):
    configs = configs_for(optimizer, epochs=3)
    stop = lambda m: [1] if m.get(1, {}).get("epoch") == 1 else []  # noqa: E731  (the groups re-made after)
    together, together_cut = fit_population(configs, tiny_data), fit_population(configs, tiny_data, stop=stop)
    pop = population.Population(configs, tiny_data)
    assert pop.groups == [slice(0, 3)], "small members on the CPU: one group"
    member = pop.member_bytes()
    assert member == 4 * (3 if optimizer == "sgd" else 5) * together[0].param_count
    monkeypatch.setattr(population, "CPU_GROUP_BYTES", 1 if budget == 1 else 2 * member)
    assert population.Population(configs, tiny_data).groups == (
        [slice(0, 1), slice(1, 2), slice(2, 3)] if budget == 1 else [slice(0, 2), slice(2, 3)]
    )
    grouped, grouped_cut = fit_population(configs, tiny_data), fit_population(configs, tiny_data, stop=stop)
    for a, b in zip(grouped, together, strict=True):
        assert_same_history(a.history, b.history, exact=True)
        for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
            assert torch.equal(p, q)
    assert [r.status for r in grouped_cut] == ["completed", "stopped", "completed"]
    for a, b in zip(grouped_cut, together_cut, strict=True):
        assert_same_history(a.history, b.history, exact=True)


def test_each_group_trains_its_whole_epoch_before_the_next_and_evaluates_by_group(tiny_data, monkeypatch):
    configs = configs_for("sgd", epochs=1)
    member = population.Population(configs, tiny_data).member_bytes()
    monkeypatch.setattr(population, "CPU_GROUP_BYTES", 2 * member)  # groups of two and one
    pop = population.Population(configs, tiny_data)
    steps, calls, evaluated = math.ceil(pop.n / pop.batch_size), [], []
    update, evaluate = pop.update, pop._evaluate
    monkeypatch.setattr(pop, "update", lambda index, rows=None: (calls.append(rows), update(index, rows)))
    monkeypatch.setattr(pop, "_evaluate", lambda x, y, rows: (evaluated.append(rows), evaluate(x, y, rows))[1])
    pop.run_epoch()
    assert calls == [slice(0, 2)] * steps + [slice(2, 3)] * steps
    assert evaluated == [slice(0, 2), slice(2, 3)] * 4  # train, val and val's two halves


def test_members_step_together_off_the_memberwise_devices_whatever_their_size(tiny_data, monkeypatch):
    monkeypatch.setattr(population, "MEMBERWISE_DEVICES", ())  # one baddbmm for all, as on a GPU
    monkeypatch.setattr(population, "CPU_GROUP_BYTES", 1)
    assert population.Population(configs_for("sgd"), tiny_data).groups == [slice(0, 3)]


def test_member_groups_fill_the_budget_in_equal_groups_and_never_split_off_the_gpu():
    from trainables.population import member_groups

    assert member_groups(16, 10, True, budget=100) == [slice(0, 8), slice(8, 16)]  # 10 a group at most: 2 of 8
    assert member_groups(16, 10, True, budget=10**9) == [slice(0, 16)]
    assert member_groups(5, 10, True, budget=1) == [slice(i, i + 1) for i in range(5)]  # at least one member
    assert member_groups(7, 10, True, budget=30) == [slice(0, 2), slice(2, 5), slice(5, 7)]
    assert member_groups(16, 10, False, budget=1) == [slice(0, 16)], "one kernel for every member on a GPU"
    assert member_groups(0, 10, True) == [slice(0, 0)]


def test_the_stacked_optimizer_moves_each_member_as_torch_optim_would():
    torch.manual_seed(0)
    k = 3
    lr, momentum, decay = [0.1, 0.01, 0.05], [0.0, 0.9, 0.5], [0.0, 1e-2, 5e-4]
    for kind, make in (
        ("sgd", lambda p, i: torch.optim.SGD([p], lr=lr[i], momentum=momentum[i], weight_decay=decay[i])),
        ("adam", lambda p, i: torch.optim.Adam([p], lr=lr[i], weight_decay=decay[i])),
        ("adamw", lambda p, i: torch.optim.AdamW([p], lr=lr[i], weight_decay=decay[i])),
    ):
        stacked = [torch.randn(k, 7, 5, requires_grad=True), torch.randn(k, 1, 5, requires_grad=True)]
        solo = [[t[i].detach().clone().requires_grad_() for t in stacked] for i in range(k)]
        optimizers = [[make(p, i) for p in solo[i]] for i in range(k)]

        def column(values):
            return torch.tensor(values).view(-1, 1, 1)

        ours = StackedOptimizer(kind, stacked, column(lr), column(momentum), column(decay))
        for _ in range(5):
            grads = [torch.randn_like(t) for t in stacked]
            for t, g in zip(stacked, grads, strict=True):
                t.grad = g.clone()
            ours.step()
            for i in range(k):
                for j, p in enumerate(solo[i]):
                    p.grad = grads[j][i].clone()
                    optimizers[i][j].step()
        for i in range(k):
            for j, p in enumerate(solo[i]):
                torch.testing.assert_close(stacked[j][i], p, rtol=1e-6, atol=1e-7, msg=f"{kind} member {i}")


def test_stopping_a_member_leaves_the_others_histories_unchanged(tiny_data):
    configs = configs_for("sgd", epochs=4)
    full = fit_population(configs, tiny_data)
    cut = fit_population(configs, tiny_data, stop=lambda m: [1] if m.get(1, {}).get("epoch") == 2 else [])
    assert [r.status for r in cut] == ["completed", "stopped", "completed"]
    assert len(cut[1].history) == 2
    assert_same_history(cut[1].history, full[1].history[:2], exact=True)
    for i in (0, 2):
        assert_same_history(cut[i].history, full[i].history, exact=True)
        for p, q in zip(cut[i].model.parameters(), full[i].model.parameters(), strict=True):
            assert torch.equal(p, q)


def test_a_diverging_member_stops_as_diverged_and_the_others_go_on(tiny_data):
    configs = configs_for("sgd", epochs=3)
    blown = [configs[0], configs[1].replace(lr=1e12), configs[2]]
    members = fit_population(blown, tiny_data)
    assert members[1].status == "diverged" and len(members[1].history) < 3
    assert not math.isfinite(members[1].history[-1]["train_loss"])
    full = fit_population(configs, tiny_data)
    for i in (0, 2):
        assert members[i].status == "completed"
        assert_same_history(members[i].history, full[i].history, exact=True)


def test_a_population_resumed_from_its_checkpoint_continues_exactly(tiny_data, tmp_path):
    configs = configs_for("adamw", epochs=4)
    path = tmp_path / "population.pt"

    def save_at_two(metrics, snapshot):
        if next(iter(metrics.values()))["epoch"] == 2:
            snapshot().save(path)

    def stop_at_one(metrics):  # a member stopped before the checkpoint stays stopped
        return [2] if next(iter(metrics.values()))["epoch"] == 1 else []

    first = fit_population(configs, tiny_data, on_epoch_end=save_at_two, stop=stop_at_one)
    state = PopulationState.load(path)
    assert state.epoch == 2 and state.active == [0, 1]
    resumed = fit_population(configs, tiny_data, resume=state)
    for a, b in zip(first, resumed, strict=True):
        assert a.status == b.status and a.best_epoch == b.best_epoch
        assert_same_history(b.history, a.history, exact=True)
        for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
            assert torch.equal(p, q)
    assert [r.status for r in resumed] == ["completed", "completed", "stopped"]
    assert len(resumed[2].history) == 1

    snapshots = []
    fit_population(configs, tiny_data, on_epoch_end=lambda m, snap: snapshots.append(snap()), stop=list)
    after_all = fit_population(configs, tiny_data, resume=snapshots[-1])  # the snapshot holds the stops
    assert [len(r.history) for r in after_all] == [1, 1, 1] and {r.status for r in after_all} == {"stopped"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hidden_sizes": (16,)}, "hidden_sizes"),
        ({"activation": "relu"}, "activation"),
        ({"loss": "ce"}, "loss"),
        ({"batch_size": 32}, "batch_size"),
        ({"epochs": 5}, "epochs"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"label_noise": 0.2}, "label_noise"),
    ],
)
def test_members_that_cannot_share_one_step_are_refused_naming_the_field(change, field):
    configs = [TrainConfig(**FAST), TrainConfig(**{**FAST, "seed": 1, **change})]
    with pytest.raises(ConfigError, match=rf"^population: members must share {field}; member 1 has"):
        check_population(configs)
    with pytest.raises(ConfigError, match="at least one member"):
        check_population([])
    check_population([TrainConfig(**FAST), TrainConfig(**FAST, seed=1, lr=0.3, dropout=0.2, augment="crop")])


def test_a_checkpoint_is_written_all_or_nothing(tiny_data, tmp_path):
    states = []
    fit_population(configs_for("sgd", epochs=1), tiny_data, on_epoch_end=lambda m, snap: states.append(snap()))
    path = tmp_path / "population.pt"
    path.write_bytes(b"old")
    broken = copy.copy(states[0])
    broken.params = [lambda: None]  # torch.save cannot pickle it: it fails part-way
    with pytest.raises(AttributeError, match="pickle"):
        broken.save(path)
    assert path.read_bytes() == b"old" and not list(tmp_path.glob(".population.pt*")), "no half file, no temp left"
    states[0].save(path)
    assert PopulationState.load(path).epoch == 1


# ---------------------------------------------------------------- on a GPU (skipped without CUDA)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_graphed_and_eager_populations_give_the_same_history_and_shrinking_captures_again(tiny_data):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    configs = configs_for("adamw", epochs=4, device="cuda")

    def stop_one(metrics):
        return [1] if metrics.get(1, {}).get("epoch") == 2 else []

    graphed = fit_population(configs, tiny_data, stop=stop_one)
    eager = fit_population([c.replace(graphs="off") for c in configs], tiny_data, stop=stop_one)
    assert graphed[0].steps == "graphed (CUDA graphs)" and eager[0].steps == "eager (CUDA graphs turned off)"
    assert [r.status for r in graphed] == [r.status for r in eager] == ["completed", "stopped", "completed"]
    for g, e in zip(graphed, eager, strict=True):
        assert_same_history(g.history, e.history)
        for p, q in zip(g.model.parameters(), e.model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@cuda
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_on_a_gpu_members_without_dropout_train_as_their_solo_fits(tiny_data, optimizer):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    configs = configs_for(optimizer, device="cuda", dropout=0.0)  # CUDA's fused dropout draws its own masks
    for config, member in zip(configs, fit_population(configs, tiny_data), strict=True):
        assert_same_history(member.history, fit(config, tiny_data).history)


# ---------------------------------------------------------------- birdplane train --seeds

TRAIN = ["--hidden", "16", "--epochs", "2", "--batch-size", "16", "--threads", "1", "--dropout", "0.2"]
TIMING = ("seconds",)


def test_train_seeds_prints_per_seed_the_summary_of_its_own_train_run(image_tree, cache_dir, capsys):
    proc = run_birdplane("train", "--data-root", image_tree, *TRAIN, "--seeds", "0,1,2,3", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and proc.stderr.count("epoch ") == 8
    for seed, line in zip(range(4), lines, strict=True):
        member = json.loads(line)
        assert main(["train", "--data-root", str(image_tree), *TRAIN, "--seed", str(seed), "--json"]) == 0
        solo = json.loads(capsys.readouterr().out)
        assert member["config"] == solo["config"] and member["config"]["seed"] == seed
        for key in solo:
            if key in ("train_loss", "train_acc", "val_loss", "val_acc", "gap", "best_val_acc"):
                assert member[key] == pytest.approx(solo[key], **TOLERANCE), (seed, key)
            elif key not in TIMING:
                assert member[key] == solo[key], (seed, key)


def test_train_seeds_without_json_prints_one_line_per_seed(image_tree, cache_dir, capsys):
    assert main(["train", "--data-root", str(image_tree), *TRAIN, "--seeds", "3,5"]) == 0
    summaries = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("seed 3  ")]
    summaries = [line for line in summaries if not line.startswith("seed 5  ")]
    assert len(summaries) == 2
    assert summaries[0].startswith("seed 3: completed: 2 epochs") and summaries[1].startswith("seed 5: completed")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seeds", "0,1,1"], "seed 1 is given twice"),
        (["--seeds", "0,,2"], "'' is not a seed"),
        (["--seeds", ""], "'' is not a seed"),
        (["--seeds", "0,x"], "'x' is not a seed"),
        (["--seeds", "0,-1"], "'-1' is not a seed"),
        (["--seeds", "0,1", "--seed", "3"], "not allowed with argument"),
    ],
)
def test_bad_seeds_are_refused_with_one_line_and_exit_2(image_tree, cache_dir, capsys, flags, message):
    assert main(["train", "--data-root", str(image_tree), *TRAIN, *flags]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("birdplane: error: ") and message in lines[0], err
    assert not cache_dir.exists(), "refused before any data was loaded"


def test_a_checkpoint_s_member_is_the_solo_run_s_state_of_that_member(tiny_data, tmp_path):
    """What the MLflow logger closes a member's run from (its history, last and best weights in the
    solo net's layout), for a member still in the stack and for one that left it (diverged)."""
    configs = configs_for("sgd", epochs=2, dropout=0.1)  # dropout: the solo net's layers are not 0, 1, 2
    configs = [configs[0], configs[1].replace(lr=1e12), configs[2]]
    saved = {}
    results = fit_population(configs, tiny_data, on_epoch_end=lambda m, snapshot: saved.update(last=snapshot()))
    saved["last"].with_data({"classes": ["a", "b"]}).save(tmp_path / "population.pt")
    state = PopulationState.load(tmp_path / "population.pt")
    assert results[1].status == "diverged" and 1 not in state.active, "member 1 left the stack"
    for k, result in enumerate(results):
        member = state.member(k)
        assert member.config == configs[k].to_dict() and member.data == {"classes": ["a", "b"]}
        assert_same_history(member.history, result.history, exact=True)
        assert member.epoch == result.history[-1]["epoch"]
        assert member.best_epoch == result.best_epoch
        solo = result.model.state_dict()
        assert list(member.model) == list(solo), "the solo net's keys, in order"
        for name, tensor in solo.items():  # a diverged member's weights are NaN: equal as NaN
            torch.testing.assert_close(member.model[name], tensor, rtol=0, atol=0, equal_nan=True, msg=name)
        for name, tensor in result.best_model.items():
            torch.testing.assert_close(member.best_model[name].cpu(), tensor.cpu(), rtol=0, atol=0, equal_nan=True)


def test_a_checkpoint_s_member_of_a_one_output_bce_net_reads_as_its_solo_state(tiny_data, tmp_path):
    """bce nets end in one output unit for their two classes: a member still in the stack is read
    back into the solo net's layout (closing a sweep trial's seed runs needs it)."""
    configs = [c.replace(loss="bce") for c in configs_for("sgd", epochs=1)]
    saved = {}
    results = fit_population(configs, tiny_data, on_epoch_end=lambda m, snapshot: saved.update(last=snapshot()))
    for k, result in enumerate(results):
        member = saved["last"].member(k)
        assert list(member.model) == list(result.model.state_dict()), "the solo bce net's keys"
        assert member.model[list(member.model)[-1]].shape == (1,), "one output unit"
