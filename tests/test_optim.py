"""The optimizers and learning-rate schedules (make_optimizer, make_scheduler): AdamW, cosine, one-cycle, resume."""

import math

import pytest
import torch

from trainables.checkpoint import TrainState
from trainables.config import TrainConfig
from trainables.loop import fit, make_optimizer, make_scheduler

FAST = dict(hidden_sizes=(32,), epochs=4, batch_size=16, lr=0.05, threads=1, device="cpu")


def _lrs(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate each optimisation step uses, step by step."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = make_optimizer(config, params)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    out = []
    for _ in range(config.epochs * steps_per_epoch):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return out


def test_cosine_warms_up_linearly_then_follows_half_a_cosine_to_zero():
    config = TrainConfig(lr=0.1, epochs=4, schedule="cosine", warmup=0.25)
    lrs = _lrs(config, steps_per_epoch=10)  # 40 steps, 10 of warm-up
    for t in range(10):
        assert lrs[t] == pytest.approx(0.1 * (t + 1) / 10)
    for t in range(10, 40):
        assert lrs[t] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (t - 10) / 29)))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and max(lrs) == pytest.approx(0.1)


def test_onecycle_rises_from_lr_over_25_to_lr_then_anneals_to_a_ten_thousandth_of_that():
    config = TrainConfig(lr=0.1, epochs=5, schedule="onecycle", warmup=0.2, optimizer="adamw")
    lrs = _lrs(config, steps_per_epoch=20)  # 100 steps; the peak at step 0.2 * 100 - 1
    peak = 19
    start, low = 0.1 / 25, 0.1 / 25 / 1e4
    for t in range(peak + 1):  # cosine rise from lr/25 to lr
        assert lrs[t] == pytest.approx(start + (0.1 - start) * (1 - math.cos(math.pi * t / peak)) / 2)
    for t in range(peak, 100):  # cosine fall from lr to lr/25/1e4 at the last step
        assert lrs[t] == pytest.approx(low + (0.1 - low) * (1 + math.cos(math.pi * (t - peak) / (99 - peak))) / 2)


def test_constant_is_the_chapters_rate_at_every_step():
    assert set(_lrs(TrainConfig(lr=0.01, epochs=2), steps_per_epoch=5)) == {0.01}


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_a_run_resumed_mid_schedule_continues_exactly(tiny_data, tmp_path, schedule):
    config = TrainConfig(
        **{
            **FAST,
            "epochs": 5,
            "optimizer": "adamw",
            "lr": 3e-3,
            "weight_decay": 0.05,
            "schedule": schedule,
            "warmup": 0.2,
            "dropout": 0.2,
            "augment": "crop+flip",
        }
    )
    states = {}
    full = fit(config, tiny_data, on_epoch_end=lambda m, snap: states.__setitem__(m["epoch"], snap()))
    states[2].save(tmp_path / "state.pt")
    resumed = fit(config, tiny_data, resume=TrainState.load(tmp_path / "state.pt"))
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in full.history]
    assert len({r["lr"] for r in full.history}) == 5, "the rate changed every epoch"
    for a, b in zip(resumed.model.parameters(), full.model.parameters(), strict=False):
        assert torch.equal(a, b)
    assert resumed.best_epoch == full.best_epoch
    for key, value in full.best_model.items():
        assert torch.equal(resumed.best_model[key], value)


def test_adamw_decays_the_weights_apart_from_the_gradient():
    torch.manual_seed(0)
    w0, grad = torch.randn(5), torch.randn(5)
    lr, wd, eps = 0.01, 0.1, 1e-8

    def one_step(optimizer_name):
        w = torch.nn.Parameter(w0.clone())
        optimizer = make_optimizer(TrainConfig(optimizer=optimizer_name, lr=lr, weight_decay=wd), [w])
        w.grad = grad.clone()
        optimizer.step()
        return w.detach()

    # First AdamW step by hand: m_hat = g, v_hat = g^2, so w <- w (1 - lr wd) - lr g / (|g| + eps).
    expected = w0 * (1 - lr * wd) - lr * grad / (grad.abs() + eps)
    torch.testing.assert_close(one_step("adamw"), expected)
    reference = torch.nn.Parameter(w0.clone())
    torch_adamw = torch.optim.AdamW([reference], lr=lr, weight_decay=wd)
    reference.grad = grad.clone()
    torch_adamw.step()
    torch.testing.assert_close(one_step("adamw"), reference.detach())
    # Adam's L2 goes through the gradient instead: g + wd w, normalised away on the first step.
    coupled = grad + wd * w0
    torch.testing.assert_close(one_step("adam"), w0 - lr * coupled / (coupled.abs() + eps))
    assert not torch.allclose(one_step("adam"), one_step("adamw"))
