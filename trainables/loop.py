"""The training loop: fit(config, data) -> FitResult, epoch by epoch over a Steps object.

``setup_run`` builds what a run works on: the seeded net, its optimizer and schedule, and the
data set normalised once and kept on the training device. ``fit`` restores any resumed state,
picks the steps (trainables/steps.py: the chapter's DataLoader loop, or CUDA graphs of the same
step on a GPU) and runs the epochs; each epoch's numbers come back in one host sync.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from trainables.bundle import build_model_for
from trainables.checkpoint import TrainState
from trainables.config import TrainConfig
from trainables.data import StudyData, noisy_labels, validation_halves
from trainables.graphed import make_steps
from trainables.losses import ChapterLoss
from trainables.model import param_count
from trainables.selection import best_record, improves
from trainables.steps import CALIBRATION_BINS, ShuffledBatchSampler, Steps, TrainStep, calibration_error, evaluate_sums

# on_epoch_end(metrics, snapshot): metrics of the epoch just finished; snapshot() returns the
# TrainState to resume from (a deep copy, made only when the callback asks for it).
EpochCallback = Callable[[dict, Callable[[], TrainState]], None]


# ---------------------------------------------------------------- device and seeds


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- data on the device


def normalise(x: torch.Tensor, mean, std, device: torch.device) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float32 on ``device``, (x/255 - mean) / std, as ToTensor + Normalize."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (x.to(device).float().div_(255.0) - m) / s


# ---------------------------------------------------------------- optimizer, schedule, evaluation


def make_optimizer(config: TrainConfig, params, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The run's optimizer. On a CUDA device: torch's fused kernels, which CUDA graphs can capture,
    and a learning rate held in a device tensor that a schedule fills in place between replays
    (graphed and eager steps on a GPU then share the same kernels)."""
    kwargs = {}
    lr = config.lr
    cuda = device is not None and device.type == "cuda"
    if cuda:
        kwargs["fused"] = True
        lr = torch.tensor(config.lr, device=device)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay, **kwargs)
    # Adam's step count lives on the device and capture is allowed only with capturable=True
    # (measured on an H100: fused AdamW without it refuses capture).
    adam_kwargs = {**kwargs, "capturable": True} if cuda else kwargs
    if config.optimizer == "adamw":  # decoupled weight decay (Loshchilov & Hutter)
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay, **adam_kwargs)
    return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay, **adam_kwargs)


class WarmupCosine:
    """The cosine schedule's factor at step t of ``total``: a linear rise to 1 over the first
    ``warmup_steps`` steps, then half a cosine down to 0 at the last step. A callable object, so
    LambdaLR keeps its numbers in its state_dict."""

    def __init__(self, total: int, warmup_steps: int):
        self.total, self.warmup_steps = total, warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total - 1 - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    """Per-batch learning-rate schedule over the whole run; None for the chapter's constant rate."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total, int(config.warmup * total)))
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=config.warmup or 0.3, cycle_momentum=False
        )
    return None


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: ChapterLoss) -> dict:
    """Mean loss and accuracy over the whole split, in eval mode."""
    loss_sum, correct, _ = evaluate_sums(model, x, y, loss_fn)
    n = max(len(y), 1)
    return {"loss": loss_sum.item() / n, "acc": correct.item() / n}


# ---------------------------------------------------------------- fit


@dataclass
class FitResult:
    history: list[dict]
    status: str  # "completed" or "diverged"
    param_count: int
    model: nn.Module = field(repr=False)  # the weights after the last epoch
    best_model: dict | None = field(default=None, repr=False)  # state_dict of the best-val epoch
    best_epoch: int = 0
    steps: str = "eager"  # how the steps ran, and why not graphed when they were not

    def summary(self) -> dict:
        last = self.history[-1] if self.history else {}
        best = best_record(self.history) or {}
        return {
            "param_count": self.param_count,
            "epochs": last.get("epoch", 0),
            "train_loss": last.get("train_loss"),
            "train_acc": last.get("train_acc"),
            "val_loss": last.get("val_loss"),
            "val_acc": last.get("val_acc"),
            "gap": last.get("gap"),
            "best_val_acc": best.get("val_acc"),
            "best_epoch": best.get("epoch"),
            "status": self.status,
            "seconds": sum(r["epoch_seconds"] for r in self.history),
            "steps": self.steps,
        }


@dataclass
class Progress:
    """How far a run got: one record per finished epoch, and the best epoch so far with its weights."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0  # the epoch of the best val_acc so far (earliest among ties); 0: none yet
    best_model: dict | None = None  # its weights, kept apart from the training weights

    @property
    def epoch(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0

    @property
    def best_val_acc(self) -> float:
        return next((r["val_acc"] for r in self.history if r["epoch"] == self.best_epoch), -math.inf)

    def add(self, record: dict, model: nn.Module) -> None:
        """Append the epoch's record; keep the weights of an epoch whose val_acc beats every earlier
        one (selection on validation only)."""
        self.history.append(record)
        if improves(record["val_acc"], self.best_val_acc):
            self.best_epoch = record["epoch"]
            self.best_model = {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass(frozen=True, eq=False)
class Run:
    """What one training run works on, built once by ``setup_run``; only ``progress`` and the
    state inside the model, optimizer, schedule and generators change as it trains."""

    config: TrainConfig
    device: torch.device
    model: nn.Module
    loss_fn: ChapterLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    order: ShuffledBatchSampler  # the batch order, drawn from its own generator
    augment_gen: torch.Generator
    progress: Progress = field(default_factory=Progress)
    # val's selection and reporting halves (trainables.data.validation_halves), as (x, y) each
    val_halves: tuple = ()

    def train_step(self) -> TrainStep:
        return TrainStep(
            self.model, self.loss_fn, self.optimizer, self.scheduler, self.config.augment, self.augment_gen
        )

    def state(self) -> TrainState:
        """A deep copy of the resumable state: the caller may keep it while training goes on."""
        progress = self.progress
        return TrainState(
            epoch=progress.epoch,
            model=copy.deepcopy(self.model.state_dict()),
            optimizer=copy.deepcopy(self.optimizer.state_dict()),
            sampler_rng=self.order.generator.get_state(),
            augment_rng=self.augment_gen.get_state(),
            history=[dict(r) for r in progress.history],
            config=self.config.to_dict(),
            scheduler=copy.deepcopy(self.scheduler.state_dict()) if self.scheduler is not None else None,
            best_epoch=progress.best_epoch,
            best_model=progress.best_model,  # replaced, never changed in place: no copy needed
            global_rng=(torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.get_rng_state()),
        )

    def restore(self, state: TrainState) -> None:
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.order.generator.set_state(state.sampler_rng)
        self.augment_gen.set_state(state.augment_rng)
        if state.global_rng is not None:
            if self.device.type == "cuda":
                torch.cuda.set_rng_state(state.global_rng, self.device)
            else:
                torch.set_rng_state(state.global_rng)
        if self.scheduler is not None and state.scheduler is not None:
            self.scheduler.load_state_dict(state.scheduler)
        self.progress.history = [dict(r) for r in state.history]
        self.progress.best_epoch = state.best_epoch
        self.progress.best_model = (
            {k: v.to(self.device) for k, v in state.best_model.items()} if state.best_model is not None else None
        )


def setup_run(config: TrainConfig, data: StudyData) -> Run:
    """Seeded model, optimizer, schedule, loss and the normalised data on the run's device."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    seed_everything(config.seed)
    n_classes = len(data.classes)
    model = build_model_for(config, n_classes)
    model.to(device)
    train_x = normalise(data.train.x, data.mean, data.std, device)
    train_y = noisy_labels(data.train.y, config.label_noise, n_classes).to(device)  # val and test stay clean
    val_x, val_y = normalise(data.val.x, data.mean, data.std, device), data.val.y.to(device)
    halves = tuple((val_x[i.to(device)], val_y[i.to(device)]) for i in validation_halves(data.val.y))
    sampler_gen = torch.Generator(device=device).manual_seed(config.seed)
    order = ShuffledBatchSampler(len(train_y), config.batch_size, sampler_gen)
    optimizer = make_optimizer(config, model.parameters(), device)
    return Run(
        config=config,
        device=device,
        model=model,
        loss_fn=ChapterLoss(config.loss, n_classes),
        optimizer=optimizer,
        scheduler=make_scheduler(config, optimizer, len(order)),
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        order=order,
        augment_gen=torch.Generator(device=device).manual_seed(config.seed + 1),
        val_halves=halves,
    )


class _Clock:
    """Seconds from start to a mark, without a host sync on a GPU (CUDA events, read at the end)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start, self.mark_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()

    def mark(self) -> None:
        if self.cuda:
            self.mark_event.record()
        else:
            self.t1 = time.perf_counter()

    def seconds(self) -> float:  # after the epoch's one sync
        return self.start.elapsed_time(self.mark_event) / 1000 if self.cuda else self.t1 - self.t0


def _share(total: float, n: int) -> float:
    return total / n if n else math.nan  # a half with no image (a one-image class): no number


def run_epoch(run: Run, steps: Steps, epoch: int) -> dict:
    """Train one epoch, evaluate train and val in eval mode, record and return the epoch's metrics.

    The loss and both evaluations stay on the device; their numbers come back in one host sync.
    """
    started = time.perf_counter()
    clock = _Clock(run.device)
    mean_loss = steps.train_epoch()
    clock.mark()
    train_loss_sum, train_correct, _ = steps.evaluate(run.train_x, run.train_y)
    val_loss_sum, val_correct, val_calibration = steps.evaluate(run.val_x, run.val_y)
    # val's two halves (selection, reporting) once more: ~3% of an epoch's work for a chapter net,
    # and the whole split's numbers stay exactly what they were.
    halves = [s for x, y in run.val_halves for s in steps.evaluate(x, y)[:2]]
    host = torch.cat(
        [
            torch.stack(
                [mean_loss.double(), train_loss_sum, train_correct.double(), val_loss_sum, val_correct.double()]
                + [h.double() for h in halves]
            ),
            val_calibration.flatten(),
        ]
    ).tolist()  # the epoch's one host sync
    (
        train_loss,
        train_loss_sum,
        train_correct,
        val_loss_sum,
        val_correct,
        sel_loss,
        sel_correct,
        rep_loss,
        rep_correct,
    ) = host[:9]
    calibration = [host[9 : 9 + CALIBRATION_BINS], host[9 + CALIBRATION_BINS :]]
    n_train, n_val = max(len(run.train_y), 1), max(len(run.val_y), 1)
    n_sel, n_rep = (len(y) for _, y in run.val_halves)
    train_seconds = clock.seconds()
    lr = run.optimizer.param_groups[0]["lr"]
    record = {
        "epoch": epoch,
        "train_loss": train_loss,  # the mean minibatch loss during the epoch (train mode, augmented)
        "train_eval_loss": train_loss_sum / n_train,  # the whole training split in eval mode, after the epoch
        "train_acc": train_correct / n_train,
        "val_loss": val_loss_sum / n_val,
        "val_acc": val_correct / n_val,
        "val_ece": calibration_error(calibration, n_val),
        "val_select_loss": _share(sel_loss, n_sel),  # the half of val that chooses a tuned hyperparameter
        "val_select_acc": _share(sel_correct, n_sel),
        "val_report_loss": _share(rep_loss, n_rep),  # the other half, that reports the chosen value's numbers
        "val_report_acc": _share(rep_correct, n_rep),
        "gap": train_correct / n_train - val_correct / n_val,
        "epoch_seconds": time.perf_counter() - started,
        "samples_per_second": len(run.train_y) / train_seconds if train_seconds > 0 else 0.0,
        "lr": float(lr),  # the rate the next step will use
    }
    run.progress.add(record, run.model)
    return record


def fit(
    config: TrainConfig,
    data: StudyData,
    on_epoch_end: EpochCallback | None = None,
    resume: TrainState | None = None,
) -> FitResult:
    """Train ``config`` on ``data`` for its epochs; ``resume`` is a state handed to on_epoch_end earlier."""
    run = setup_run(config, data)
    if resume is not None:
        run.restore(resume)
    steps = make_steps(run.train_step(), run.train_x, run.train_y, run.order, config.graphs)  # after the resume
    count = param_count(run.model)
    status = "completed"
    for epoch in range(run.progress.epoch + 1, config.epochs + 1):
        record = run_epoch(run, steps, epoch)
        if not math.isfinite(record["train_loss"]):
            status = "diverged"
        if on_epoch_end is not None:
            on_epoch_end({**record, "param_count": count, "status": status}, run.state)
        if status == "diverged":
            break
    progress = run.progress
    return FitResult(
        progress.history, status, count, run.model, progress.best_model, progress.best_epoch, steps.description
    )


def evaluate_untrained(config: TrainConfig, data: StudyData) -> dict:
    """The seeded, untrained net of ``config``: its parameter count and its loss and accuracy on both splits."""
    run = setup_run(config, data)
    train_eval = evaluate(run.model, run.train_x, run.train_y, run.loss_fn)
    val_eval = evaluate(run.model, run.val_x, run.val_y, run.loss_fn)
    return {
        "param_count": param_count(run.model),
        "train_eval_loss": train_eval["loss"],
        "train_acc": train_eval["acc"],
        "val_loss": val_eval["loss"],
        "val_acc": val_eval["acc"],
    }
