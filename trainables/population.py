"""A population: K same-shape nets trained in one process by one batched step, each still its own run.

Members share what fixes the step's tensors and code (``SHARED_FIELDS``: hidden sizes, activation,
loss, optimizer, batch size, epochs, and where and how the step runs); each has its own seed, lr,
momentum, weight decay, dropout, schedule (and warm-up) and augmentation.

Pinned to solo runs: member k equals ``fit`` of its own config within float tolerance
(tests/test_population.py), because
  * its weights are the solo net's: built exactly as ``setup_run`` builds it from the seed, then
    stacked (a Linear's weight transposed to [K, in, out], its bias [K, 1, out]);
  * it draws its batch order, augmentation and dropout masks from the solo run's generators, in the
    solo run's order: the order from a generator seeded ``seed``, augmentation from ``seed + 1``,
    dropout from torch's global generator as the solo net's init left it, which the solo CPU loop's
    DataLoader also advances by one number at the start of every epoch (so the member does too);
  * it steps with torch's own update formulas (SGD with momentum, Adam, AdamW: their single-tensor
    code in torch/optim) on its slice, with its hyperparameters as [K, 1, 1] tensors, and its rate
    comes from torch's own scheduler class stepping a proxy optimizer of its own.
One ``torch.baddbmm`` per layer runs every member's forward (and backward) at once on a GPU; on
the CPU each member's layer runs its own GEMM (measured faster there than one bmm); each member
gathers its batch by index ([K, B] indices) from the device-resident data. On the CPU, members too
large for the cache to hold many at once train in cache-sized groups (``CPU_GROUP_BYTES``): a group
runs its whole epoch before the next starts, so their weights stay in the cache between steps as a
solo run's do; each member's steps and draws are the same either way. A member that diverges,
or is stopped from outside, leaves the stack (its last state kept); the others go on unchanged.
Why stacked tensors with baddbmm and a stacked optimizer, measured: docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from trainables.bundle import build_model_for
from trainables.checkpoint import TrainState
from trainables.config import ConfigError, TrainConfig
from trainables.data import StudyData, noisy_labels, validation_halves
from trainables.files import atomic_path
from trainables.graphed import graphs_unavailable
from trainables.loop import (
    FitResult,
    Progress,
    _Clock,
    _share,
    make_scheduler,
    normalise,
    pick_device,
    seed_everything,
)
from trainables.losses import ChapterLoss
from trainables.model import param_count
from trainables.population_graphs import PopulationGraphs
from trainables.selection import improves
from trainables.steps import CALIBRATION_BINS, CROP_PADDING, EVAL_BATCH, calibration_error, crop_at, flip_where

# What every member must share: the stacked tensors' shapes, the step's code, where it runs.
# label_noise too: the members train on one set of labels (a noise axis is one population per value).
SHARED_FIELDS = (
    *("hidden_sizes", "activation", "loss", "optimizer", "batch_size", "epochs"),
    *("device", "threads", "graphs", "label_noise"),
)
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch's defaults, which make_optimizer keeps
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}
# Devices where each member's layer runs its own GEMM (torch.addmm / mm, as the solo net does)
# instead of one torch.baddbmm for all: on this CPU the members' own GEMMs measured as fast or
# faster in two runs each (K = 16, [16]: 2.0x and 2.3x solo against 1.7x and 2.2x with bmm; [64]:
# 2.0x and 1.8x against 1.5x and 1.8x; docs/benchmarks.md). On a GPU one baddbmm per layer is one
# kernel launch, not K.
MEMBERWISE_DEVICES = ("cpu",)
# On those devices, the members whose weights, gradients and optimizer state together fit in this
# many bytes train a whole epoch as one group before the next group starts. Stepping every member
# at every batch streams them all through the cache at each step: at [1024] (12.6 MB of weights a
# member), K = 16 ran at 0.64x sixteen solo runs, each phase of the step (forward, backward, SGD)
# 1.7-1.8x slower than the same member's repeated (docs/benchmarks.md). Small members still step
# together: at [64], K = 16 make one group.
CPU_GROUP_BYTES = 48 * 2**20

# stop({member: metrics}) -> the members to stop after this epoch (a scheduler's cut);
# on_epoch_end({member: metrics}, snapshot): snapshot() returns the PopulationState to resume from,
# the stops of this epoch included.
StopCallback = Callable[[dict[int, dict]], Iterable[int]]
PopulationCallback = Callable[[dict[int, dict], Callable[[], "PopulationState"]], None]


def check_population(configs: Sequence[TrainConfig]) -> tuple[TrainConfig, ...]:
    """The members' configs, if they can train as one population; a ConfigError names the field."""
    configs = tuple(configs)
    if not configs:
        raise ConfigError("population: at least one member is needed")
    first = configs[0]
    for i, config in enumerate(configs[1:], start=1):
        for name in SHARED_FIELDS:
            if getattr(config, name) != getattr(first, name):
                raise ConfigError(
                    f"population: members must share {name}; member {i} has {getattr(config, name)!r}, "
                    f"member 0 {getattr(first, name)!r}"
                )
    return configs


# ---------------------------------------------------------------- the stacked optimizer


class StackedOptimizer:
    """torch's SGD (momentum, L2 weight decay), Adam (L2) and AdamW (decoupled decay) updates on
    stacked [K, ...] parameters, each member with its own lr, momentum and weight decay as [K, 1, 1]
    tensors; the formulas are those of torch.optim's single-tensor code (what a CPU run uses), so
    a member's slice moves as a solo optimizer would move it. No host syncs: a CUDA graph can
    capture ``step``. All members step together, so Adam's step count is shared."""

    def __init__(self, kind: str, params: list[torch.Tensor], lr, momentum, weight_decay):
        self.kind, self.params = kind, params
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay  # [K, 1, 1] each
        self.decays = bool((weight_decay > 0).any())  # decided once: the step has no host syncs
        self.uses_momentum = kind == "sgd" and bool((momentum > 0).any())
        names = ("momentum_buffer",) if kind == "sgd" else ("exp_avg", "exp_avg_sq")
        self.buffers = {name: [torch.zeros_like(p) for p in params] for name in names}
        self.scratch = [torch.empty_like(p) for p in params] if kind != "sgd" else []  # no new pages per step
        self.step_count = torch.zeros((), dtype=torch.float64, device=params[0].device)

    @torch.no_grad()
    def step(self, rows: slice | None = None) -> None:
        """Every member's update; with ``rows``, only those members' (their slices of every tensor)."""
        if self.kind == "sgd":
            self._sgd(rows)
        else:
            self._adam(rows)

    def _sgd(self, rows: slice | None) -> None:
        lr, momentum, weight_decay = (
            t if rows is None else t[rows] for t in (self.lr, self.momentum, self.weight_decay)
        )
        for p, buf in zip(self.params, self.buffers["momentum_buffer"], strict=True):
            grad = p.grad
            if rows is not None:
                p, grad, buf = p[rows], grad[rows], buf[rows]
            if self.decays:  # grad + wd * p, in place: the gradients are the step's own
                grad = grad.addcmul_(p, weight_decay)
            if self.uses_momentum:  # buf = m * buf + grad; 0 * 0 + grad = grad at the first step, as torch's clone
                grad = buf.mul_(momentum).add_(grad)
            p.addcmul_(grad, lr, value=-1)

    def _adam(self, rows: slice | None) -> None:
        beta1, beta2 = ADAM_BETAS
        lr, weight_decay = (t if rows is None else t[rows] for t in (self.lr, self.weight_decay))
        self.step_count += 1
        step_size = lr / (1 - beta1**self.step_count)
        correction2_sqrt = (1 - beta2**self.step_count).sqrt()
        decoupled = self.kind == "adamw"
        for p, exp_avg, exp_avg_sq, scratch in zip(
            self.params, self.buffers["exp_avg"], self.buffers["exp_avg_sq"], self.scratch, strict=True
        ):
            grad = p.grad
            if rows is not None:
                p, grad, exp_avg, exp_avg_sq, scratch = (t[rows] for t in (p, grad, exp_avg, exp_avg_sq, scratch))
            if self.decays and decoupled:
                p.mul_(1 - lr * weight_decay)
            elif self.decays:
                grad = grad.addcmul_(p, weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = torch.sqrt(exp_avg_sq, out=scratch).div_(correction2_sqrt).add_(ADAM_EPS)
            p.addcmul_(torch.div(exp_avg, denom, out=scratch), step_size, value=-1)

    def state_dict(self) -> dict:
        buffers = {name: [t.clone() for t in tensors] for name, tensors in self.buffers.items()}
        return {"step": self.step_count.clone(), "buffers": buffers}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.step_count.copy_(state["step"])
            for name, tensors in self.buffers.items():
                for mine, saved in zip(tensors, state["buffers"][name], strict=True):
                    mine.copy_(saved)


# ---------------------------------------------------------------- the stacked layer


class MemberwiseLinear(torch.autograd.Function):
    """x [K, B, in] @ w [K, in, out] + b [K, 1, out], one addmm per member (forward and backward).
    With ``grad_w`` (a buffer kept across steps) the weight gradient is written there, not
    returned: a fresh gradient of this size would be new pages from the kernel at every step (glibc
    maps allocations above 32 MB anew each time; measured ~25% of the step at [1024], K = 16)."""

    @staticmethod
    def forward(ctx, x, w, b, grad_w=None):
        ctx.grad_w = grad_w
        ctx.save_for_backward(x, w)
        out = torch.empty(x.shape[0], x.shape[1], w.shape[2], dtype=x.dtype, device=x.device)
        for k in range(x.shape[0]):
            torch.addmm(b[k], x[k], w[k], out=out[k])
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_w = ctx.grad_w if ctx.grad_w is not None else torch.empty_like(w)
        for k in range(x.shape[0]):
            torch.mm(x[k].t(), grad[k], out=grad_w[k])
            if grad_x is not None:
                torch.mm(grad[k], w[k].t(), out=grad_x[k])
        return grad_x, None if ctx.grad_w is not None else grad_w, grad.sum(dim=1, keepdim=True), None


def memberwise(device: torch.device) -> bool:
    return device.type in MEMBERWISE_DEVICES


def member_groups(k: int, member_bytes: int, grouped: bool, budget: int | None = None) -> list[slice]:
    """The stack's rows in the groups that train an epoch together: one group of all ``k`` off the
    memberwise devices (a GPU steps every member in one kernel), else as many members a group as
    fit ``budget`` bytes (``CPU_GROUP_BYTES``; at least one), in equal-as-possible groups."""
    budget = CPU_GROUP_BYTES if budget is None else budget
    if not grouped or k <= 1:
        return [slice(0, k)]
    size = max(1, min(k, budget // max(member_bytes, 1)))
    count = math.ceil(k / size)
    bounds = [round(i * k / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def stacked_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, grad_w=None) -> torch.Tensor:
    """Every member's Linear layer at once: one baddbmm on a GPU, one GEMM per member on the CPU
    (``grad_w``: where their weight gradient goes, see MemberwiseLinear)."""
    if memberwise(x.device):
        return MemberwiseLinear.apply(x, w, b, grad_w)
    return torch.baddbmm(b, x, w)


# ---------------------------------------------------------------- members


@dataclass(eq=False)
class Member:
    """One member's own things: config, generators, schedule, progress, and its solo net (built
    from the seed as the solo run builds it; its weights are read back into it when needed)."""

    config: TrainConfig
    net: nn.Module
    sampler_gen: torch.Generator
    augment_gen: torch.Generator
    dropout_gen: torch.Generator
    proxy: torch.optim.Optimizer  # holds the member's rate; its scheduler (if any) steps it per batch
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    progress: Progress = field(default_factory=Progress)
    status: str = "training"  # then "completed", "diverged" or "stopped"

    @property
    def lr(self) -> float:
        return self.proxy.param_groups[0]["lr"]

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]


def build_member(config: TrainConfig, n_classes: int, device: torch.device, steps_per_epoch: int) -> Member:
    """The member of ``config``: ``setup_run``'s seeded net and generators, and its schedule."""
    seed_everything(config.seed)
    net = build_model_for(config, n_classes)
    dropout_gen = torch.Generator(device=device)
    if device.type == "cuda":  # the CUDA default generator as manual_seed left it (solo's fused dropout
        dropout_gen.manual_seed(config.seed)  # kernel draws its masks differently: not pinned there)
    else:
        dropout_gen.set_state(torch.get_rng_state())  # where the solo net's dropout draws go on
    proxy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = make_scheduler(config, proxy, steps_per_epoch)
    proxy.step()  # a no-op (no gradients) that tells the scheduler its optimizer steps
    return Member(
        config=config,
        net=net.to(device),
        sampler_gen=torch.Generator(device=device).manual_seed(config.seed),
        augment_gen=torch.Generator(device=device).manual_seed(config.seed + 1),
        dropout_gen=dropout_gen,
        proxy=proxy,
        scheduler=scheduler,
    )


# ---------------------------------------------------------------- the population


class Population:
    """The active members stacked into one batched net and optimizer, and every member's own state."""

    def __init__(self, configs: Sequence[TrainConfig], data: StudyData):
        self.configs = check_population(configs)
        shared = self.configs[0]
        if shared.threads:
            torch.set_num_threads(shared.threads)
        self.device = device = pick_device(shared.device)
        self.loss_fn = ChapterLoss(shared.loss, len(data.classes))
        self.train_x = normalise(data.train.x, data.mean, data.std, device)
        # The solo run's labels: the shared share of them flipped (val and test stay clean).
        self.train_y = noisy_labels(data.train.y, shared.label_noise, len(data.classes)).to(device)
        self.val_x = normalise(data.val.x, data.mean, data.std, device)
        self.val_y = data.val.y.to(device)
        # val's selection and reporting halves, as the solo run evaluates them (trainables.loop.setup_run)
        self.val_halves = tuple(
            (self.val_x[i.to(device)], self.val_y[i.to(device)]) for i in validation_halves(data.val.y)
        )
        self.n, self.batch_size = len(self.train_y), shared.batch_size
        steps = math.ceil(self.n / self.batch_size)
        self.members = [build_member(c, len(data.classes), device, steps) for c in self.configs]
        self.param_count = param_count(self.members[0].net)
        self.activation = ACTIVATIONS[shared.activation]
        self.epoch = 0
        self.graphs: PopulationGraphs | None = None
        self.description = "eager"
        self._stack(list(range(len(self.members))), [m.linears() for m in self.members])

    # ---------------------------------------------------------------- the stack
    def _stack(self, active: list[int], linears: list[list[nn.Linear]]) -> None:
        """Stack the weights of ``active`` members (their solo nets' Linear layers) and build the
        batched optimizer and per-member hyperparameter tensors over them."""
        self.active = active
        params = []
        for layer in zip(*linears, strict=True):
            params.append(torch.stack([lin.weight.detach().t() for lin in layer]).contiguous().requires_grad_())
            params.append(torch.stack([lin.bias.detach()[None] for lin in layer]).requires_grad_())
        self.params = params
        self.kept_grads = {  # the weight gradients of memberwise layers, kept across steps
            2 * layer: torch.empty_like(params[2 * layer])
            for layer in range(len(params) // 2)
            if memberwise(self.device)
        }
        members = self.live()

        def column(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=self.device).view(-1, 1, 1)

        self.lr = column([m.lr for m in members])
        cfg = [m.config for m in members]
        self.optimizer = StackedOptimizer(
            cfg[0].optimizer, params, self.lr, column([c.momentum for c in cfg]), column([c.weight_decay for c in cfg])
        )
        self.dropout = any(c.dropout > 0 for c in cfg)
        self.crop = any("crop" in c.augment for c in cfg)
        self.flip = any("flip" in c.augment for c in cfg)
        self.scheduled = [row for row, m in enumerate(members) if m.scheduler is not None]
        self.loss_sum = torch.zeros(len(active), device=self.device)
        self.groups = member_groups(len(active), self.member_bytes(), memberwise(self.device))

    def member_bytes(self) -> int:
        """What one member's step keeps in memory: weights, gradients, optimizer state (float32)."""
        copies = {"sgd": 3}.get(self.configs[0].optimizer, 5)  # SGD: + momentum; Adam(W): + 2 moments, scratch
        return 4 * copies * self.param_count

    def start_graphs(self) -> None:
        """Capture the step as CUDA graphs where the device and ``graphs`` allow (after any resume,
        and again whenever the stack changes); eager steps otherwise, the description saying why."""
        why_not = graphs_unavailable(self.device, self.configs[0].graphs)
        self.graphs = None
        if why_not is None and self.active:
            try:
                self.graphs = PopulationGraphs(self)
                self.description = "graphed (CUDA graphs)"
                return
            except Exception as err:  # capture is not possible here: keep training, eagerly
                first_line = (str(err).splitlines() or [""])[0][:120]
                why_not = f"CUDA graph capture failed: {type(err).__name__}: {first_line}"
        self.description = f"eager ({why_not})" if why_not else self.description

    def live(self) -> list[Member]:
        return [self.members[i] for i in self.active]

    def read_weights(self, row: int) -> nn.Module:
        """Copy the stack's row ``row`` into that member's solo net; returns the net."""
        member = self.members[self.active[row]]
        with torch.no_grad():
            for layer, lin in enumerate(member.linears()):
                lin.weight.copy_(self.params[2 * layer][row].t())
                lin.bias.copy_(self.params[2 * layer + 1][row, 0])
        return member.net

    def retire(self, statuses: dict[int, str]) -> None:
        """Members {index: status} leave the stack with their last weights; the others go on as they were."""
        if not statuses:
            return
        rows = [row for row, i in enumerate(self.active) if i in statuses]
        for row in rows:
            self.read_weights(row)
            self.members[self.active[row]].status = statuses[self.active[row]]
        keep = [row for row in range(len(self.active)) if row not in rows]
        if not keep:
            self.active, self.graphs = [], None
            return
        index = torch.tensor(keep, device=self.device)
        saved = {k: [t.index_select(0, index) for t in v] for k, v in self.optimizer.buffers.items()}
        step = self.optimizer.step_count.clone()
        survivors = [self.active[row] for row in keep]
        for row in keep:
            self.read_weights(row)
        self._stack(survivors, [self.members[i].linears() for i in survivors])
        self.optimizer.load_state_dict({"step": step, "buffers": saved})
        if self.graphs is not None:  # the graphs point at the old stack: capture the smaller one
            self.start_graphs()

    # ---------------------------------------------------------------- the step
    def forward(self, x: torch.Tensor, train: bool, rows: slice | None = None) -> torch.Tensor:
        """[K, B, in] -> logits [K, B, units]: per layer one batched GEMM for all members (with
        ``rows``, x holds those members' inputs only)."""
        last = len(self.params) // 2 - 1

        def part(t: torch.Tensor | None) -> torch.Tensor | None:
            return t if rows is None or t is None else t[rows]

        for layer in range(last + 1):
            grad_w = part(self.kept_grads.get(2 * layer)) if train else None
            x = stacked_linear(x, part(self.params[2 * layer]), part(self.params[2 * layer + 1]), grad_w)
            if layer < last:
                x = self.activation(x)
                if train and self.dropout:
                    x = x * self._dropout_masks(x, rows)
        return x

    def _rows(self, rows: slice | None) -> list[Member]:
        return self.live() if rows is None else self.live()[rows]

    def _dropout_masks(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """Each member's mask from its own generator, as the CPU's dropout draws it
        (empty_like(x).bernoulli_(1 - p) / (1 - p)); ones for members without dropout."""
        masks = torch.ones_like(x)
        for row, member in enumerate(self._rows(rows)):
            p = member.config.dropout
            if p > 0:
                masks[row].bernoulli_(1 - p, generator=member.dropout_gen).div_(1 - p)
        return masks

    def _augment(self, xb: torch.Tensor, b: int, rows: slice | None = None) -> torch.Tensor:
        """Each member's crops and flips drawn from its generator as ``steps.augment`` draws them
        (crop offsets, then flips); a member without crop keeps its image, without flip is not mirrored."""
        if not (self.crop or self.flip):
            return xb
        tops, lefts, flips = [], [], []
        for member in self._rows(rows):
            mode, gen = member.config.augment, member.augment_gen
            if "crop" in mode:
                tops.append(torch.randint(0, 2 * CROP_PADDING + 1, (b,), generator=gen, device=self.device))
                lefts.append(torch.randint(0, 2 * CROP_PADDING + 1, (b,), generator=gen, device=self.device))
            else:
                tops.append(torch.full((b,), CROP_PADDING, device=self.device))
                lefts.append(tops[-1])
            if "flip" in mode:
                flips.append(torch.rand(b, generator=gen, device=self.device) < 0.5)
            else:
                flips.append(torch.zeros(b, dtype=torch.bool, device=self.device))
        if self.crop:
            xb = crop_at(xb, CROP_PADDING, torch.cat(tops), torch.cat(lefts))
        if self.flip:
            xb = flip_where(xb, torch.cat(flips))
        return xb

    def update(self, index: torch.Tensor, rows: slice | None = None) -> None:
        """One step of every active member on its batch (``index``: [K, b] indices into the training
        split; with ``rows``, those members' only); adds each member's summed batch loss to ``loss_sum``."""
        k, b = index.shape
        flat = index.reshape(-1)
        xb = self._augment(self.train_x.index_select(0, flat), b, rows)
        logits = self.forward(xb.reshape(k, b, -1), True, rows)
        losses = self.loss_fn.per_member(logits, self.train_y[flat].view(k, b))
        for p in self.params:
            p.grad = None
        losses.sum().backward()  # member k's gradients are those of its own mean loss
        for i, grad in self.kept_grads.items():
            self.params[i].grad = grad
        self.optimizer.step(rows)
        (self.loss_sum if rows is None else self.loss_sum[rows]).add_(losses.detach() * b)

    def after_update(self, rows: slice | None = None) -> None:
        """The members' per-batch schedules (host work; with ``rows``, those members' only), then
        their rates into the lr tensor."""
        if self.scheduled:
            members = self.live()
            stepping = range(len(members))[rows] if rows is not None else None
            for row in self.scheduled:
                if stepping is None or row in stepping:
                    members[row].scheduler.step()
            self.lr.copy_(torch.tensor([m.lr for m in members], dtype=torch.float32).view(-1, 1, 1))

    def train_epoch(self) -> torch.Tensor:
        """One epoch of every active member in its next batch order; mean losses [K] on the device.
        Members in several groups (``member_groups``) train it group by group: each group's every
        step, then the next group's, each member with its own steps, draws and rates as ever (Adam's
        shared step count restarts from the epoch's for each group)."""
        members = self.live()
        if self.device.type == "cpu":
            for member in members:  # the solo CPU loop's DataLoader takes its base seed from the dropout stream
                torch.empty((), dtype=torch.int64).random_(generator=member.dropout_gen)
        orders = torch.stack([torch.randperm(self.n, generator=m.sampler_gen, device=self.device) for m in members])
        self.loss_sum.zero_()
        if len(self.groups) > 1:
            first_step = self.optimizer.step_count.clone()
            for rows in self.groups:
                self.optimizer.step_count.copy_(first_step)
                for index in orders[rows].split(self.batch_size, dim=1):
                    self.update(index, rows)
                    self.after_update(rows)
            return self.loss_sum / max(self.n, 1)
        step = self.graphs.replay if self.graphs is not None else self.update
        for index in orders.split(self.batch_size, dim=1):
            step(index)
            self.after_update()
        return self.loss_sum / max(self.n, 1)

    # ---------------------------------------------------------------- evaluation and records
    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``steps.evaluate_sums`` of every active member: loss sums [K], correct counts [K] and
        calibration sums [K, 2, bins], device tensors (no sync); group by group (``member_groups``)."""
        if len(self.groups) == 1:
            return self._evaluate(x, y, None)
        parts = [self._evaluate(x, y, rows) for rows in self.groups]
        return tuple(torch.cat(columns) for columns in zip(*parts, strict=True))

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, rows: slice | None):
        k = len(self._rows(rows))
        loss_sum = torch.zeros(k, device=x.device, dtype=torch.float64)
        correct = torch.zeros(k, device=x.device, dtype=torch.int64)
        confidence_sums = torch.zeros(k * CALIBRATION_BINS, device=x.device, dtype=torch.float64)
        hit_sums = torch.zeros_like(confidence_sums)
        offsets = torch.arange(k, device=x.device)[:, None] * CALIBRATION_BINS
        for start in range(0, len(y), EVAL_BATCH):
            xb, yb = x[start : start + EVAL_BATCH], y[start : start + EVAL_BATCH]
            c = len(yb)
            logits = self.forward(xb.reshape(1, c, -1).expand(k, c, -1), False, rows)
            loss_sum += self.loss_fn.per_member(logits, yb).double() * c
            flat = logits.reshape(k * c, -1)
            hits = self.loss_fn.predict(flat).view(k, c) == yb
            correct += hits.sum(dim=1)
            confidence = self.loss_fn.probabilities(flat).max(dim=1).values.double().view(k, c)
            index = (confidence * CALIBRATION_BINS).long().clamp_(0, CALIBRATION_BINS - 1) + offsets
            confidence_sums.index_add_(0, index.flatten(), confidence.flatten())
            hit_sums.index_add_(0, index.flatten(), hits.double().flatten())
        calibration = torch.stack([confidence_sums.view(k, -1), hit_sums.view(k, -1)], dim=1)
        return loss_sum, correct, calibration

    def run_epoch(self) -> dict[int, dict]:
        """Train the next epoch, evaluate both splits; each active member's record (``run_epoch``'s),
        its numbers read back in one host sync."""
        self.epoch += 1
        started, clock = time.perf_counter(), _Clock(self.device)
        mean_loss = self.train_epoch()
        clock.mark()
        train_loss, train_correct, _ = self.evaluate(self.train_x, self.train_y)
        val_loss, val_correct, val_calibration = self.evaluate(self.val_x, self.val_y)
        halves = [s.double() for x, y in self.val_halves for s in self.evaluate(x, y)[:2]]
        columns = [mean_loss.double(), train_loss, train_correct.double(), val_loss, val_correct.double(), *halves]
        host = torch.cat([torch.stack(columns, dim=1), val_calibration.flatten(1)], dim=1).tolist()
        n_sel, n_rep = (len(y) for _, y in self.val_halves)
        seconds, elapsed = clock.seconds(), time.perf_counter() - started
        n_train, n_val = max(self.n, 1), max(len(self.val_y), 1)
        records = {}
        for row, (index, member, numbers) in enumerate(zip(self.active, self.live(), host, strict=True)):
            loss, train_sum, train_hits, val_sum, val_hits, sel_sum, sel_hits, rep_sum, rep_hits = numbers[:9]
            calibration = [numbers[9 : 9 + CALIBRATION_BINS], numbers[9 + CALIBRATION_BINS :]]
            record = {
                "epoch": self.epoch,
                "train_loss": loss,
                "train_eval_loss": train_sum / n_train,
                "train_acc": train_hits / n_train,
                "val_loss": val_sum / n_val,
                "val_acc": val_hits / n_val,
                "val_ece": calibration_error(calibration, n_val),
                "val_select_loss": _share(sel_sum, n_sel),
                "val_select_acc": _share(sel_hits, n_sel),
                "val_report_loss": _share(rep_sum, n_rep),
                "val_report_acc": _share(rep_hits, n_rep),
                "gap": train_hits / n_train - val_hits / n_val,
                "epoch_seconds": elapsed,  # the population's epoch: every member trained in it
                "samples_per_second": self.n / seconds if seconds > 0 else 0.0,  # this member's samples
                "lr": float(member.lr),
                "population": len(self.active),
            }
            if improves(record["val_acc"], member.progress.best_val_acc):
                self.read_weights(row)  # Progress.add keeps a copy of the best epoch's weights
            member.progress.add(record, member.net)
            records[index] = record
        return records

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> PopulationState:
        """A copy of everything resuming needs: the stack, its optimizer, every member's own state."""
        members = []
        for i, m in enumerate(self.members):
            last = None if i in self.active else {k: v.detach().clone() for k, v in m.net.state_dict().items()}
            members.append(
                {
                    "status": m.status,
                    "history": [dict(r) for r in m.progress.history],
                    "best_epoch": m.progress.best_epoch,
                    "best_model": m.progress.best_model,
                    "last_model": last,
                    "sampler_rng": m.sampler_gen.get_state(),
                    "augment_rng": m.augment_gen.get_state(),
                    "dropout_rng": m.dropout_gen.get_state(),
                    "lr": float(m.lr),
                    "scheduler": m.scheduler.state_dict() if m.scheduler is not None else None,
                }
            )
        return PopulationState(
            epoch=self.epoch,
            configs=[c.to_dict() for c in self.configs],
            active=list(self.active),
            params=[p.detach().clone() for p in self.params],
            optimizer=self.optimizer.state_dict(),
            members=members,
        )

    def restore(self, state: PopulationState) -> None:
        if state.configs != [c.to_dict() for c in self.configs]:
            raise ConfigError("resume: the checkpoint holds a population of other members")
        for member, saved in zip(self.members, state.members, strict=True):
            member.status = saved["status"]
            member.progress = Progress([dict(r) for r in saved["history"]], saved["best_epoch"], saved["best_model"])
            member.sampler_gen.set_state(saved["sampler_rng"])
            member.augment_gen.set_state(saved["augment_rng"])
            member.dropout_gen.set_state(saved["dropout_rng"])
            member.proxy.param_groups[0]["lr"] = saved["lr"]
            if member.scheduler is not None:
                member.scheduler.load_state_dict(saved["scheduler"])
            if saved["last_model"] is not None:
                member.net.load_state_dict(saved["last_model"])
            if member.progress.best_model is not None:
                member.progress.best_model = {k: v.to(self.device) for k, v in member.progress.best_model.items()}
        self.epoch = state.epoch
        if not state.active:  # every member had stopped: nothing left to stack
            self.active = []
            return
        self._stack(list(state.active), [self.members[i].linears() for i in state.active])
        with torch.no_grad():
            for mine, saved in zip(self.params, state.params, strict=True):
                mine.copy_(saved)
        self.optimizer.load_state_dict(state.optimizer)

    def results(self) -> list[FitResult]:
        """Each member's FitResult, as ``fit`` gives it (its net holds its last weights)."""
        for row in range(len(self.active)):
            self.read_weights(row)
        return [
            FitResult(
                m.progress.history,
                "completed" if m.status in ("training", "completed") else m.status,
                self.param_count,
                m.net,
                m.progress.best_model,
                m.progress.best_epoch,
                self.description,
            )
            for m in self.members
        ]


def solo_linear_names(config: dict, n_classes: int) -> list[tuple[str, str]]:
    """The (weight, bias) state_dict keys of the solo net's Linear layers, in order (built on the
    meta device: names without memory)."""
    with torch.device("meta"):
        net = build_model_for(TrainConfig.from_dict(config), n_classes)
    return [(f"{name}.weight", f"{name}.bias") for name, m in net.named_children() if isinstance(m, nn.Linear)]


@dataclass
class PopulationState:
    """The one checkpoint of a population: the active members' stacked weights and optimizer
    state, and every member's history, best weights, generators and schedule; a stopped member's
    last weights (solo state_dict) too. Saved as plain tensors, numbers, strings and lists."""

    epoch: int
    configs: list[dict]
    active: list[int]  # member indices, in the stack's row order
    params: list[torch.Tensor]
    optimizer: dict
    members: list[dict]
    data: dict | None = None  # classes, mean, std: what `predict` needs besides the weights

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_data(self, data: dict) -> PopulationState:
        return dataclasses.replace(self, data=data)

    def member(self, k: int) -> TrainState:
        """Member ``k`` as a solo run's TrainState (no optimizer state): its config, history, best
        weights and last weights (its row of the stack while it trains), in the solo net's layout."""
        saved, config = self.members[k], self.configs[k]
        model = saved["last_model"]
        if model is None:
            outputs = self.params[-1].shape[-1]  # bce: one output unit for its two classes
            row, names = self.active.index(k), solo_linear_names(config, 2 if config.get("loss") == "bce" else outputs)
            model = {}
            for layer, (weight, bias) in enumerate(names):
                model[weight] = self.params[2 * layer][row].t().contiguous()
                model[bias] = self.params[2 * layer + 1][row, 0].clone()
        history = [dict(r) for r in saved["history"]]
        return TrainState(
            epoch=history[-1]["epoch"] if history else 0,
            model=model,
            optimizer={},
            sampler_rng=saved["sampler_rng"],
            augment_rng=saved["augment_rng"],
            history=history,
            config=dict(config),
            data=self.data,
            best_epoch=saved["best_epoch"],
            best_model=saved["best_model"],
        )

    def save(self, path) -> None:
        """All or nothing (trainables/files.py): a crash leaves the previous checkpoint."""
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)

    @classmethod
    def load(cls, path) -> PopulationState:
        return cls(**torch.load(path, weights_only=True, map_location="cpu"))


def fit_population(
    configs: Sequence[TrainConfig],
    data: StudyData,
    on_epoch_end: PopulationCallback | None = None,
    resume: PopulationState | None = None,
    stop: StopCallback | None = None,
) -> list[FitResult]:
    """Train the members of ``configs`` as one population; one FitResult per member, in order.

    After each epoch ``stop`` (if given) names members to stop there (status "stopped"); a member
    whose training loss is not finite stops as "diverged", as ``fit`` does. Then ``on_epoch_end``
    gets the epoch's metrics of every member that trained in it (with ``param_count`` and
    ``status``) and a snapshot function whose state already holds those stops.
    """
    population = Population(configs, data)
    if resume is not None:
        population.restore(resume)
    population.start_graphs()  # after the resume: the graphs point at the state as it is now
    epochs = population.configs[0].epochs
    while population.active and population.epoch < epochs:
        records = population.run_epoch()
        statuses = {i: "diverged" for i, r in records.items() if not math.isfinite(r["train_loss"])}
        if stop is not None:
            for i in stop(records):
                if i in records:
                    statuses.setdefault(i, "stopped")
        population.retire(statuses)
        if on_epoch_end is not None:
            metrics = {
                i: {**r, "param_count": population.param_count, "status": statuses.get(i, "completed")}
                for i, r in records.items()
            }
            on_epoch_end(metrics, population.state)
    return population.results()
