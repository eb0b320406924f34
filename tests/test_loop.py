import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from tests.conftest import correct, eval_mode_logits
from trainables.checkpoint import TrainState
from trainables.config import TrainConfig
from trainables.loop import fit
from trainables.steps import ShuffledBatchSampler, make_loader, random_crop, random_flip

FAST = dict(hidden_sizes=(32,), epochs=4, batch_size=16, lr=0.05, threads=1, device="cpu")


def test_training_reduces_the_loss_and_learns_the_classes(tiny_data):
    result = fit(TrainConfig(**{**FAST, "epochs": 8}), tiny_data)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert result.history[-1]["train_acc"] > 0.9
    assert result.status == "completed"


def test_same_config_and_seed_give_a_bit_identical_history(tiny_data):
    def strip(history):
        return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "samples_per_second")} for r in history]

    a = fit(TrainConfig(**FAST, augment="crop+flip"), tiny_data)
    b = fit(TrainConfig(**FAST, augment="crop+flip"), tiny_data)
    c = fit(TrainConfig(**FAST, augment="crop+flip", seed=1), tiny_data)
    assert strip(a.history) == strip(b.history)
    assert strip(a.history) != strip(c.history)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=False):
        assert torch.equal(p, q)


def test_resuming_from_a_snapshot_continues_exactly_where_it_stopped(tiny_data, tmp_path):
    snapshots = {}
    config = TrainConfig(**{**FAST, "augment": "crop", "optimizer": "adam", "lr": 1e-3})
    full = fit(config, tiny_data, on_epoch_end=lambda m, snap: snapshots.__setitem__(m["epoch"], snap()))
    # Round-trip through the file format (torch.load with weights_only=True), as a checkpoint on disk would.
    path = tmp_path / "state.pt"
    snapshots[2].save(path)
    resumed = fit(config, tiny_data, resume=TrainState.load(path))

    def strip(history):
        return [(r["epoch"], r["train_loss"], r["val_acc"]) for r in history]

    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert strip(resumed.history) == strip(full.history)
    # What the snapshot says of itself: its epoch, its config and its history so far.
    state = snapshots[2]
    assert state.epoch == 2 and state.config == config.to_dict() and len(state.history) == 2


def test_metrics_are_consistent(tiny_data):
    result = fit(TrainConfig(**FAST), tiny_data)
    for r in result.history:
        assert r["gap"] == pytest.approx(r["train_acc"] - r["val_acc"])
        assert 0 <= r["val_acc"] <= 1
        # the training images over the training part of the epoch, which is within the epoch
        assert r["samples_per_second"] >= len(tiny_data.train) / r["epoch_seconds"]
    s = result.summary()
    best = max(result.history, key=lambda r: r["val_acc"])
    assert s["best_val_acc"] == best["val_acc"] and s["epochs"] == 4


def test_train_acc_is_measured_on_the_whole_training_split_in_eval_mode(tiny_data):
    from trainables.loop import evaluate, normalise
    from trainables.losses import ChapterLoss

    result = fit(TrainConfig(**{**FAST, "epochs": 1}), tiny_data)
    x = normalise(tiny_data.train.x, tiny_data.mean, tiny_data.std, torch.device("cpu"))
    expected = evaluate(result.model, x, tiny_data.train.y, ChapterLoss("nll", 2))
    assert result.history[-1]["train_acc"] == expected["acc"]


def test_zero_epochs_train_nothing_and_the_untrained_net_is_evaluated_apart(tiny_data):
    from trainables.loop import evaluate_untrained

    result = fit(TrainConfig(**{**FAST, "epochs": 0}), tiny_data)
    assert result.history == [] and result.summary()["epochs"] == 0
    untrained = evaluate_untrained(TrainConfig(**FAST), tiny_data)
    assert untrained["param_count"] == 3072 * 32 + 32 + 32 * 2 + 2
    assert 0 <= untrained["val_acc"] <= 1 and "train_loss" not in untrained, "an eval loss is not a training loss"


def test_a_nan_loss_ends_the_run_as_diverged_without_raising(tiny_data):
    seen = []
    result = fit(
        TrainConfig(**{**FAST, "lr": 1e30, "loss": "ce", "activation": "relu", "epochs": 10}),
        tiny_data,
        on_epoch_end=lambda m, _: seen.append(m["status"]),
    )
    assert result.status == "diverged"
    assert len(result.history) < 10 and not math.isfinite(result.history[-1]["train_loss"])
    assert seen[-1] == "diverged" and result.summary()["status"] == "diverged"


@pytest.mark.parametrize("loss", ["nll", "ce", "mse", "bce"])
def test_every_loss_trains(tiny_data, loss):
    result = fit(TrainConfig(**{**FAST, "loss": loss, "lr": 0.1}), tiny_data)
    assert result.history[-1]["train_acc"] > 0.75


def test_loader_yields_a_fresh_permutation_of_whole_batches_each_epoch():
    x, y = torch.arange(10).float().view(10, 1), torch.arange(10)
    loader = make_loader(x, y, ShuffledBatchSampler(10, 4, torch.Generator().manual_seed(0)))
    epoch1 = [yb for _, yb in loader]
    epoch2 = [yb for _, yb in loader]
    assert [len(b) for b in epoch1] == [4, 4, 2]
    assert sorted(torch.cat(epoch1).tolist()) == list(range(10))
    assert torch.cat(epoch1).tolist() != torch.cat(epoch2).tolist()


def test_batched_random_crop_matches_torchvision_crop_of_the_padded_image():
    x = torch.randn(16, 3, 32, 32)
    g = torch.Generator().manual_seed(7)
    out = random_crop(x, 4, g)
    g = torch.Generator().manual_seed(7)
    tops = torch.randint(0, 9, (16,), generator=g)
    lefts = torch.randint(0, 9, (16,), generator=g)
    for i in range(16):
        ref = TF.crop(TF.pad(x[i], [4]), int(tops[i]), int(lefts[i]), 32, 32)
        assert torch.equal(out[i], ref)
    assert len({(int(t), int(left)) for t, left in zip(tops, lefts, strict=False)}) > 1, "offsets differ per sample"


def test_random_flip_mirrors_some_images_and_keeps_the_others():
    x = torch.randn(64, 3, 32, 32)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], TF.horizontal_flip(x[i])) for i in range(64)]
    kept = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=False)) and 10 < sum(flipped) < 54


# ---------------------------------------------------------------- fit against a plain reference loop

REFERENCE_RECIPES = {
    "sgd constant": {},
    "sgd momentum, weight decay, two layers": {"momentum": 0.9, "weight_decay": 1e-3, "hidden_sizes": (32, 16)},
    "adamw onecycle crop+flip dropout": {
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 0.05,
        "schedule": "onecycle",
        "warmup": 0.2,
        "augment": "crop+flip",
        "dropout": 0.2,
        "activation": "relu",
    },
    "adam cosine flip ce": {
        "optimizer": "adam",
        "lr": 1e-3,
        "schedule": "cosine",
        "warmup": 0.1,
        "augment": "flip",
        "loss": "ce",
    },
    "bce": {"loss": "bce", "lr": 0.1},
    "mse crop": {"loss": "mse", "lr": 0.1, "augment": "crop"},
    "one batch larger than the split": {"batch_size": 500},
    "adam weight decay": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.05},
    # The schedules at their edges: cosine's last step one after its first (the factor reaches 0),
    # one-cycle over a single step without a warm-up (torch's default share, 0.3).
    "cosine over two steps": {"schedule": "cosine", "epochs": 2, "batch_size": 500},
    "onecycle in one step": {"schedule": "onecycle", "warmup": 0.0, "epochs": 1, "batch_size": 500},
}


def reference_history(config: TrainConfig, data) -> tuple[list[tuple], dict]:
    """The chapter's loop written out plainly, with torch's own pieces: a DataLoader over a
    TensorDataset in a seeded permutation, per-image crop and flip, forward, loss, backward, step,
    schedule step; then both splits evaluated in eval mode. Returns the per-epoch
    (train_loss, train_acc, val_loss, val_acc, lr) and the final weights. A DataLoader draws its
    base seed from torch's global generator every epoch, which moves the later dropout masks, so
    a loop without one would differ with dropout: both sides use one."""
    from torch.utils.data import DataLoader, TensorDataset

    from trainables.losses import ChapterLoss, output_units
    from trainables.model import build_model

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    classes = len(data.classes)
    model = build_model(
        3 * 32 * 32, config.hidden_sizes, output_units(config.loss, classes), config.activation, config.dropout
    )
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    train_x, val_x = ((s.x.float() / 255 - mean) / std for s in (data.train, data.val))
    train_y, val_y = data.train.y, data.val.y
    loss_fn = ChapterLoss(config.loss, classes)
    options = {"lr": config.lr, "weight_decay": config.weight_decay}
    optimizer = {
        "sgd": lambda: torch.optim.SGD(model.parameters(), momentum=config.momentum, **options),
        "adam": lambda: torch.optim.Adam(model.parameters(), **options),
        "adamw": lambda: torch.optim.AdamW(model.parameters(), **options),
    }[config.optimizer]()
    n = len(train_y)
    total = config.epochs * math.ceil(n / config.batch_size)
    warm = int(config.warmup * total)

    def cosine(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warm) / max(1, total - 1 - warm))))

    scheduler = {
        "constant": lambda: None,
        "cosine": lambda: torch.optim.lr_scheduler.LambdaLR(optimizer, cosine),
        "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=config.warmup or 0.3, cycle_momentum=False
        ),
    }[config.schedule]()
    order_gen = torch.Generator().manual_seed(config.seed)
    augment_gen = torch.Generator().manual_seed(config.seed + 1)
    history = []
    for _ in range(config.epochs):
        model.train()
        batches = [b.tolist() for b in torch.randperm(n, generator=order_gen).split(config.batch_size)]
        loss_sum = torch.zeros(())
        for xb, yb in DataLoader(TensorDataset(train_x, train_y), batch_sampler=batches):
            if "crop" in config.augment:
                tops = torch.randint(0, 9, (len(yb),), generator=augment_gen)
                lefts = torch.randint(0, 9, (len(yb),), generator=augment_gen)
                padded = torch.nn.functional.pad(xb, (4, 4, 4, 4))
                xb = torch.stack(
                    [
                        image[:, top : top + 32, left : left + 32]
                        for image, top, left in zip(padded, tops, lefts, strict=False)
                    ]
                )
            if "flip" in config.augment:
                flips = torch.rand(len(yb), generator=augment_gen) < 0.5
                xb = torch.stack([img.flip(2) if f else img for img, f in zip(xb, flips, strict=False)])
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach() * len(yb)
        model.eval()
        with torch.no_grad():
            scores = []
            for x, y in ((train_x, train_y), (val_x, val_y)):
                logits = model(x)
                scores += [
                    float(loss_fn(logits, y).double() * len(y)) / len(y),
                    int((loss_fn.predict(logits) == y).sum()) / len(y),
                ]
        history.append((float(loss_sum / n), scores[1], scores[2], scores[3], float(optimizer.param_groups[0]["lr"])))
    return history, model.state_dict()


@pytest.mark.parametrize("recipe", list(REFERENCE_RECIPES))
def test_fit_reproduces_a_plain_reference_loop_bit_for_bit(tiny_data, recipe):
    config = TrainConfig(**{**FAST, **REFERENCE_RECIPES[recipe]})
    expected, weights = reference_history(config, tiny_data)
    result = fit(config, tiny_data)
    got = [(r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"], r["lr"]) for r in result.history]
    assert got == expected
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_fit_keeps_the_best_val_epoch_s_weights_not_the_last_ones(noisy):
    result = fit(noisy.config, noisy.data)
    accs = [r["val_acc"] for r in result.history]
    n_val = len(noisy.data.val.y)
    assert max(accs) > accs[-1], f"the situation this test needs: the best epoch is not the last ({accs})"
    assert result.best_epoch == accs.index(max(accs)) + 1, "the earliest epoch of the best val_acc"
    data, config = noisy.data, noisy.config
    assert correct(result.best_model, config, data.val, data.mean, data.std) == round(max(accs) * n_val), (
        "best_model scores the best epoch's val_acc"
    )
    assert correct(result.model.state_dict(), config, data.val, data.mean, data.std) == round(accs[-1] * n_val), (
        "model holds the last epoch's weights"
    )


def test_dropout_is_on_while_training_and_off_while_evaluating(noisy):
    data = noisy.data
    config = noisy.config.replace(dropout=0.5, epochs=2)
    result = fit(config, data)
    # Evaluating: the recorded numbers are those of the eval-mode forward (no mask: deterministic).
    logits = eval_mode_logits(result.model.state_dict(), config, data.val.x, data.mean, data.std)
    last = result.history[-1]
    assert last["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, data.val.y).item(), rel=1e-5), (
        "val_loss is the eval-mode loss"
    )
    assert last["val_acc"] * len(data.val.y) == pytest.approx(int((logits.argmax(1) == data.val.y).sum()))
    # Training: the masks change what is learnt; dropout in eval mode would train the plain net exactly.
    plain = fit(config.replace(dropout=0.0), data)
    assert [r["train_loss"] for r in result.history] != [r["train_loss"] for r in plain.history], (
        "training with dropout 0.5 gave the history of training without it: the masks were off"
    )


def test_a_run_s_summary_is_its_last_epoch_its_best_epoch_and_its_total_seconds():
    from torch import nn

    from trainables.loop import FitResult

    def record(epoch, val_acc, seconds):
        return {
            "epoch": epoch,
            "train_loss": 0.1 * epoch,
            "train_acc": 0.5 + 0.1 * epoch,
            "val_loss": 1.0 / epoch,
            "val_acc": val_acc,
            "gap": 0.5 + 0.1 * epoch - val_acc,
            "epoch_seconds": seconds,
        }

    history = [record(1, 0.6, 1.5), record(2, 0.8, 2.0), record(3, 0.8, 2.5), record(4, 0.7, 3.0)]
    result = FitResult(history, "completed", 1234, nn.Identity(), best_epoch=2, steps="eager (why)")
    assert result.summary() == {
        "param_count": 1234,
        "epochs": 4,
        "train_loss": pytest.approx(0.4),
        "train_acc": pytest.approx(0.9),
        "val_loss": 0.25,
        "val_acc": 0.7,
        "gap": pytest.approx(0.2),
        "best_val_acc": 0.8,
        "best_epoch": 2,  # the earliest of the tied best
        "status": "completed",
        "seconds": 9.0,
        "steps": "eager (why)",
    }
    empty = FitResult([], "completed", 7, nn.Identity()).summary()
    assert empty["epochs"] == 0 and empty["seconds"] == 0 and empty["best_val_acc"] is None
    assert empty["val_acc"] is None and empty["best_epoch"] is None and empty["param_count"] == 7


def test_a_validation_half_without_images_has_no_number():
    from trainables.loop import _share

    assert _share(3.0, 4) == 0.75 and math.isnan(_share(0.0, 0))


def test_the_untrained_net_is_evaluated_on_each_split_under_its_own_name(tiny_data):
    from trainables.loop import evaluate, evaluate_untrained, setup_run

    config = TrainConfig(**FAST)
    run = setup_run(config, tiny_data)  # the same seed: the same untrained weights
    train = evaluate(run.model, run.train_x, run.train_y, run.loss_fn)
    val = evaluate(run.model, run.val_x, run.val_y, run.loss_fn)
    assert train != val, "the two splits must tell apart here"
    assert evaluate_untrained(config, tiny_data) == {
        "param_count": 3072 * 32 + 32 + 32 * 2 + 2,
        "train_eval_loss": train["loss"],
        "train_acc": train["acc"],
        "val_loss": val["loss"],
        "val_acc": val["acc"],
    }


def test_each_epoch_s_record_is_measured_on_its_own_split_and_half_after_the_epoch(tiny_data):
    import time

    from trainables.loop import evaluate, setup_run
    from trainables.steps import calibration_error, evaluate_sums

    config = TrainConfig(**{**FAST, "epochs": 2})
    started = time.perf_counter()
    result = fit(config, tiny_data)
    wall = time.perf_counter() - started
    last, run = result.history[-1], setup_run(config, tiny_data)  # run: the same split tensors and halves
    model = result.model  # the last epoch's weights
    train = evaluate(model, run.train_x, run.train_y, run.loss_fn)
    val = evaluate(model, run.val_x, run.val_y, run.loss_fn)
    (sel_x, sel_y), (rep_x, rep_y) = run.val_halves
    sel, rep = evaluate(model, sel_x, sel_y, run.loss_fn), evaluate(model, rep_x, rep_y, run.loss_fn)
    _, _, calibration = evaluate_sums(model, run.val_x, run.val_y, run.loss_fn)
    want = {
        "train_eval_loss": train["loss"],
        "train_acc": train["acc"],
        "val_loss": val["loss"],
        "val_acc": val["acc"],
        "val_select_loss": sel["loss"],
        "val_select_acc": sel["acc"],
        "val_report_loss": rep["loss"],
        "val_report_acc": rep["acc"],
        "val_ece": calibration_error(calibration.tolist(), len(run.val_y)),
    }
    assert {k: last[k] for k in want} == {k: pytest.approx(v, rel=1e-6) for k, v in want.items()}
    assert len(sel_y) > 1 and len(rep_y) > 1 and train["loss"] != val["loss"], "splits and halves tell apart"
    assert 0 < last["epoch_seconds"] < wall and sum(r["epoch_seconds"] for r in result.history) < wall


def test_the_device_is_this_machine_s_unless_named(monkeypatch):
    from trainables.loop import pick_device

    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == here and pick_device("auto").type == here
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="device cuda requested but torch sees no CUDA device"):
            pick_device("cuda")
    # Where torch sees a GPU (stood in for here: naming a device needs none), "auto" takes it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda" and pick_device("cuda").type == "cuda" and pick_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device().type == "cpu"


def test_a_seed_seeds_python_numpy_and_torch_numpy_s_reduced_to_its_range():
    import random

    import numpy as np

    from trainables.loop import seed_everything

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seed = 2**32 + 2**31 + 100  # beyond numpy's range: numpy takes it modulo 2**32 (not 2**31)
    seed_everything(seed)
    got = draws()
    random.seed(seed)
    np.random.seed(2**31 + 100)
    torch.manual_seed(seed)
    assert got == draws()


def test_a_run_of_one_training_image_and_one_validation_image_averages_over_one(tiny_data):
    import dataclasses

    from trainables.data import Split
    from trainables.loop import evaluate, setup_run

    one = dataclasses.replace(
        tiny_data,
        train=Split(tiny_data.train.x[:1], tiny_data.train.y[:1]),
        val=Split(tiny_data.val.x[:1], tiny_data.val.y[:1]),
    )
    config = TrainConfig(**{**FAST, "epochs": 1})
    result = fit(config, one)
    run = setup_run(config, one)  # the same normalised images
    model = result.model.eval()
    with torch.no_grad():
        want = {
            split: (float(run.loss_fn(model(x), y)), float((run.loss_fn.predict(model(x)) == y).sum()))
            for split, (x, y) in {"train": (run.train_x, run.train_y), "val": (run.val_x, run.val_y)}.items()
        }
    record = result.history[-1]
    got = {"train": (record["train_eval_loss"], record["train_acc"]), "val": (record["val_loss"], record["val_acc"])}
    assert got == {k: (pytest.approx(loss, rel=1e-6), acc) for k, (loss, acc) in want.items()}
    val = evaluate(model, run.val_x, run.val_y, run.loss_fn)
    assert val == {"loss": pytest.approx(want["val"][0], rel=1e-6), "acc": want["val"][1]}


def test_fit_reports_the_parameter_count_and_how_its_steps_ran(tiny_data):
    config = TrainConfig(**{**FAST, "epochs": 2, "graphs": "off"})
    records = []
    result = fit(config, tiny_data, on_epoch_end=lambda record, _: records.append(record))
    count = sum(p.numel() for p in result.model.parameters())
    assert count == 3072 * 32 + 32 + 32 * 2 + 2
    assert result.param_count == count and [r["param_count"] for r in records] == [count, count]
    assert result.steps == "eager (CUDA graphs turned off)"
    if not torch.cuda.is_available():
        assert fit(TrainConfig(**FAST), tiny_data).steps == "eager (CUDA graphs need a CUDA device)"


def test_a_run_resumed_from_its_state_before_any_epoch_trains_as_one_never_stopped(tiny_data):
    from trainables.loop import setup_run

    config = TrainConfig(**{**FAST, "epochs": 2, "schedule": "cosine"})
    start = setup_run(config, tiny_data).state()
    assert start.epoch == 0 and start.best_model is None
    resumed, plain = fit(config, tiny_data, resume=start), fit(config, tiny_data)

    def strip(history):
        return [(r["epoch"], r["train_loss"], r["val_acc"], r["lr"]) for r in history]

    assert strip(resumed.history) == strip(plain.history) and len(plain.history) == 2


def test_label_noise_changes_the_training_labels_only_among_the_run_s_classes(image_tree, tmp_path):
    from trainables.config import DataConfig
    from trainables.data import load_study_data, noisy_labels
    from trainables.loop import setup_run

    three = ("airplane", "bird", "cat")  # three classes: a flipped label has two others to go to
    data = load_study_data(DataConfig(root=str(image_tree), classes=three, cache_dir=str(tmp_path / "cache")))
    run = setup_run(TrainConfig(**{**FAST, "label_noise": 0.25}), data)
    assert torch.equal(run.train_y, noisy_labels(data.train.y, 0.25, 3))
    assert (run.train_y != data.train.y).sum() == round(0.25 * len(data.train))
    assert set(run.train_y.tolist()) == {0, 1, 2} and torch.equal(run.val_y, data.val.y)
