"""The chapter's DataLoader training loop: train an epoch, evaluate, fit(config, data) -> result.

The data set is normalised once and kept on the training device. The DataLoader's sampler yields
whole shuffled index tensors and the dataset answers with whole batches, so there is no per-sample
Python work and, on a GPU, no per-batch host-to-device copy.
"""
from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from trainables.checkpoint import TrainState
from trainables.config import TrainConfig
from trainables.data import StudyData
from trainables.losses import ChapterLoss, output_units
from trainables.model import build_model, param_count

EVAL_BATCH = 4096
CROP_PADDING = 4

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


# ---------------------------------------------------------------- batches on the device

def normalise(x: torch.Tensor, mean, std, device: torch.device) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float32 on ``device``, (x/255 - mean) / std, as ToTensor + Normalize."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (x.to(device).float().div_(255.0) - m) / s


class BatchDataset(Dataset):
    """Indexed by a tensor of indices, answers with the whole batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


class ShuffledBatchSampler(Sampler):
    """A new permutation every epoch, cut into batches; its generator's state is checkpointed."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.n, generator=self.generator, device=self.generator.device)
        return iter(order.split(self.batch_size))


def make_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator) -> DataLoader:
    sampler = ShuffledBatchSampler(len(y), batch_size, generator)
    return DataLoader(BatchDataset(x, y), sampler=sampler, batch_size=None)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random HxW crop of the zero-padded batch (RandomCrop(H, padding) on each image)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    if "crop" in mode:
        x = random_crop(x, CROP_PADDING, generator)
    if "flip" in mode:
        x = random_flip(x, generator)
    return x


# ---------------------------------------------------------------- one epoch, one evaluation

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
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total,
                                                   pct_start=config.warmup or 0.3, cycle_momentum=False)
    return None


def train_epoch(model, loader, loss_fn, optimizer, augment_mode: str, augment_gen, scheduler=None) -> torch.Tensor:
    """One pass over the loader; returns the mean training loss (a device tensor, not synced)."""
    model.train()
    total = torch.zeros((), device=next(model.parameters()).device)
    count = 0
    for xb, yb in loader:
        if augment_mode != "none":
            xb = augment(xb, augment_mode, augment_gen)
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach() * len(yb)
        count += len(yb)
    return total / max(count, 1)


@torch.inference_mode()
def evaluate_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: ChapterLoss,
                  chunk: int = EVAL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, correct count) over the whole split in eval mode, as device tensors (no sync)."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(y), chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        logits = model(xb)
        loss_sum += loss_fn(logits, yb).double() * len(yb)
        correct += (loss_fn.predict(logits) == yb).sum()
    return loss_sum, correct


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: ChapterLoss) -> dict:
    """Mean loss and accuracy over the whole split, in eval mode."""
    loss_sum, correct = evaluate_sums(model, x, y, loss_fn)
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
        finite = [r for r in self.history if math.isfinite(r["val_acc"])]
        best = max(finite, key=lambda r: (r["val_acc"], -r["epoch"])) if finite else {}
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
class Run:
    """Everything one training run works on, built once by ``setup_run``."""

    config: TrainConfig
    device: torch.device
    model: nn.Module
    loss_fn: ChapterLoss
    optimizer: torch.optim.Optimizer
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    sampler_gen: torch.Generator
    augment_gen: torch.Generator
    loader: DataLoader
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    history: list[dict] = field(default_factory=list)
    graphed: object | None = None  # trainables.graphed.GraphedSteps once captured
    steps: str = "eager"  # how steps run: "graphed (CUDA graphs)" or "eager (the reason)"
    best_epoch: int = 0  # the epoch of the best val_acc so far (earliest among ties); 0: none yet
    best_model: dict | None = None  # its weights, kept apart from the training weights

    @property
    def best_val_acc(self) -> float:
        return next((r["val_acc"] for r in self.history if r["epoch"] == self.best_epoch), -math.inf)

    def note_best(self, record: dict) -> None:
        """Keep the weights of an epoch whose val_acc beats every earlier one (selection on validation only)."""
        if math.isfinite(record["val_acc"]) and record["val_acc"] > self.best_val_acc:
            self.best_epoch = record["epoch"]
            self.best_model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    @property
    def epoch(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0

    def state(self) -> TrainState:
        """A deep copy of the resumable state: the caller may keep it while training goes on."""
        return TrainState(
            epoch=self.epoch,
            model=copy.deepcopy(self.model.state_dict()),
            optimizer=copy.deepcopy(self.optimizer.state_dict()),
            sampler_rng=self.sampler_gen.get_state(),
            augment_rng=self.augment_gen.get_state(),
            history=[dict(r) for r in self.history],
            config=self.config.to_dict(),
            scheduler=copy.deepcopy(self.scheduler.state_dict()) if self.scheduler is not None else None,
            best_epoch=self.best_epoch,
            best_model=self.best_model,  # replaced, never changed in place: no copy needed
            global_rng=(torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.get_rng_state()),
        )

    def restore(self, state: TrainState) -> None:
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.sampler_gen.set_state(state.sampler_rng)
        self.augment_gen.set_state(state.augment_rng)
        if state.global_rng is not None:
            if self.device.type == "cuda":
                torch.cuda.set_rng_state(state.global_rng, self.device)
            else:
                torch.set_rng_state(state.global_rng)
        if self.scheduler is not None and state.scheduler is not None:
            self.scheduler.load_state_dict(state.scheduler)
        self.history = [dict(r) for r in state.history]
        self.best_epoch = state.best_epoch
        self.best_model = ({k: v.to(self.device) for k, v in state.best_model.items()}
                           if state.best_model is not None else None)


def setup_run(config: TrainConfig, data: StudyData) -> Run:
    """Seeded model, optimizer, loss and the normalised data on the run's device (steps eager
    until ``capture_steps``)."""
    from trainables.graphed import graphs_unavailable

    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    seed_everything(config.seed)
    n_classes = len(data.classes)
    model = build_model(3 * 32 * 32, config.hidden_sizes, output_units(config.loss, n_classes), config.activation,
                        config.dropout)
    model.to(device)
    train_x = normalise(data.train.x, data.mean, data.std, device)
    train_y = data.train.y.to(device)
    sampler_gen = torch.Generator(device=device).manual_seed(config.seed)
    why_not = graphs_unavailable(device, config.graphs)
    optimizer = make_optimizer(config, model.parameters(), device)
    loader = make_loader(train_x, train_y, config.batch_size, sampler_gen)
    return Run(
        config=config, device=device, model=model, loss_fn=ChapterLoss(config.loss, n_classes),
        optimizer=optimizer, train_x=train_x, train_y=train_y,
        val_x=normalise(data.val.x, data.mean, data.std, device), val_y=data.val.y.to(device),
        sampler_gen=sampler_gen, augment_gen=torch.Generator(device=device).manual_seed(config.seed + 1),
        loader=loader, scheduler=make_scheduler(config, optimizer, len(loader)),
        steps="eager" if why_not is None else f"eager ({why_not})")


def capture_steps(run: Run) -> None:
    """On a CUDA device, capture the run's step and evaluation as CUDA graphs (after any resume:
    the graphs point at the state tensors as they are now). Falls back to eager steps, saying
    why in ``run.steps``, wherever capture is not possible."""
    from trainables.graphed import GraphedSteps, graphs_unavailable

    why_not = graphs_unavailable(run.device, run.config.graphs)
    if why_not is not None:
        run.steps = f"eager ({why_not})"
        return
    for group in run.optimizer.param_groups:  # a resumed CPU checkpoint brings a float rate, capturable off
        if not torch.is_tensor(group["lr"]):
            group["lr"] = torch.tensor(group["lr"], device=run.device)
        if "capturable" in group:
            group["capturable"] = True
    try:
        run.graphed = GraphedSteps(run)
        run.steps = "graphed (CUDA graphs)"
    except Exception as err:  # capture is not possible here: keep training, eagerly
        run.graphed = None
        run.steps = f"eager (CUDA graph capture failed: {type(err).__name__}: {str(err).splitlines()[0][:120]})"


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


def run_epoch(run: Run, epoch: int) -> dict:
    """Train one epoch, evaluate train and val in eval mode, append and return the record.

    The loss and both evaluations stay on the device; their numbers come back in one host sync.
    """
    started = time.perf_counter()
    clock = _Clock(run.device)
    if run.graphed is not None:
        mean_loss = run.graphed.train_epoch()
        clock.mark()
        sums = [*run.graphed.evaluate(run.train_x, run.train_y), *run.graphed.evaluate(run.val_x, run.val_y)]
    else:
        mean_loss = train_epoch(run.model, run.loader, run.loss_fn, run.optimizer, run.config.augment,
                                run.augment_gen, run.scheduler)
        clock.mark()
        sums = [*evaluate_sums(run.model, run.train_x, run.train_y, run.loss_fn),
                *evaluate_sums(run.model, run.val_x, run.val_y, run.loss_fn)]
    train_loss, train_loss_sum, train_correct, val_loss_sum, val_correct = torch.stack(
        [mean_loss.double(), *(v.double() for v in sums)]).tolist()  # the epoch's one host sync
    n_train, n_val = max(len(run.train_y), 1), max(len(run.val_y), 1)
    train_seconds = clock.seconds()
    lr = run.optimizer.param_groups[0]["lr"]
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "train_acc": train_correct / n_train,
        "val_loss": val_loss_sum / n_val,
        "val_acc": val_correct / n_val,
        "gap": train_correct / n_train - val_correct / n_val,
        "epoch_seconds": time.perf_counter() - started,
        "samples_per_second": len(run.train_y) / train_seconds if train_seconds > 0 else 0.0,
        "lr": float(lr),  # the rate the next step will use
    }
    run.history.append(record)
    run.note_best(record)
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
    capture_steps(run)
    count = param_count(run.model)
    status = "completed"
    for epoch in range(run.epoch + 1, config.epochs + 1):
        record = run_epoch(run, epoch)
        if not math.isfinite(record["train_loss"]):
            status = "diverged"
        if on_epoch_end is not None:
            on_epoch_end({**record, "param_count": count, "status": status}, run.state)
        if status == "diverged":
            break
    return FitResult(run.history, status, count, run.model, run.best_model, run.best_epoch, run.steps)


def evaluate_untrained(config: TrainConfig, data: StudyData) -> dict:
    """The seeded, untrained net of ``config``: its parameter count and its loss and accuracy on both splits."""
    run = setup_run(config, data)
    train_eval = evaluate(run.model, run.train_x, run.train_y, run.loss_fn)
    val_eval = evaluate(run.model, run.val_x, run.val_y, run.loss_fn)
    return {"param_count": param_count(run.model), "train_eval_loss": train_eval["loss"], "train_acc": train_eval["acc"],
            "val_loss": val_eval["loss"], "val_acc": val_eval["acc"]}
