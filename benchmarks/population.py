"""A population's training throughput against its members trained as solo runs, side by side in ONE run.

    python benchmarks/population.py [--widths 16,64,512,1024] [--ks 1,4,16] [--batches 12] [--threads 1]
    python benchmarks/population.py --design     # the step's design choices, measured (below)

For each width and K: K solo runs back to back (``setup_run`` + the eager steps ``fit`` uses, one
training pass each) against one population of the same K configs (``Population.train_epoch``),
on synthetic data of ``--batches`` batches of 64; repeats alternate solo and population, and the
ratio printed is population samples/s over solo samples/s, the median over repeats. Training
passes only: evaluation is the same forward work in both. Goals on the CPU (issue 18): >= 2x for
[16] and [64] at K = 16, never below 1x for [1024].

``--design`` times one step of K = 16 members three ways at [16] and [1024]: the engine's stacked
weights with one torch.baddbmm per layer and its stacked optimizer; torch.func.vmap over
functional_call with the same optimizer; and one leaf tensor per member stacked in the forward,
stepped by torch.optim (one optimizer per member), for SGD with momentum and for Adam.
The machine is shared: compare ratios measured in one run, and note its load (``uptime``).

``--capacity`` runs a small real-data capacity study end to end (`birdplane capacity`, real Ray and
a sqlite MLflow store) with ``--no-population`` and with ``--population``, alternating (solo first,
then population first in the next repeat): the wall time of each, its ratio, the training seconds
inside the trials (the sum of their epoch_seconds: a population's epoch counted once), and the
largest difference of any member's per-epoch val_acc from its solo run's.

    python benchmarks/population.py --capacity [--widths 16,64] [--depths 1] [--seeds 3] [--epochs 5]
        [--repeats 2] [--population-first 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from torch import nn

from trainables import population
from trainables.config import TrainConfig
from trainables.data import Split, StudyData
from trainables.graphed import make_steps
from trainables.loop import setup_run
from trainables.population import Population, StackedOptimizer

BATCH = 64


def synthetic_data(n: int, seed: int = 0) -> StudyData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return StudyData(Split(x, y), Split(x[:256], y[:256]), None, ("airplane", "bird"), (0.5,) * 3, (0.25,) * 3)


def configs(width: int, k: int, threads: int) -> list[TrainConfig]:
    base = TrainConfig(hidden_sizes=(width,), batch_size=BATCH, epochs=1, threads=threads, device="cpu")
    return [base.replace(seed=s) for s in range(k)]


def clock() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): on a shared machine the CPU time counts the work
    done, without the time other processes held the cores (1 thread: the same thing when idle)."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    now = clock()
    return now[0] - start[0], now[1] - start[1]


def solo_seconds(members: list[TrainConfig], data: StudyData) -> tuple[float, float]:
    """K solo runs back to back: each one training pass of fit's eager steps; (wall, CPU) seconds."""
    wall = cpu = 0.0
    for config in members:
        run = setup_run(config, data)
        steps = make_steps(run.train_step(), run.train_x, run.train_y, run.order, "off")
        started = clock()
        steps.train_epoch().item()
        w, c = since(started)
        wall, cpu = wall + w, cpu + c
    return wall, cpu


def population_seconds(members: list[TrainConfig], data: StudyData) -> tuple[float, float]:
    population = Population(members, data)
    started = clock()
    population.train_epoch().tolist()
    return since(started)


def throughput(args) -> None:
    data = synthetic_data(args.batches * BATCH)
    n = len(data.train)
    print(
        f"{n} samples a pass, batch {BATCH}, {args.threads} thread(s), {args.repeats} alternating repeats; "
        f"CPU member groups of at most {population.CPU_GROUP_BYTES / 2**20:g} MB"
    )
    print("samples/s by wall time, then by CPU time; medians over the repeats, each repeat's CPU ratio in brackets")
    print(
        f"{'net':>8} {'K':>3} {'solo wall':>10} {'pop wall':>10} {'ratio':>6}   "
        f"{'solo CPU':>10} {'pop CPU':>10} {'ratio':>6}"
    )
    for width in args.widths:
        for k in args.ks:
            members = configs(width, k, args.threads)
            population_seconds(members[:1], data)  # warm the allocator and kernels once
            solo, pop = [], []  # (wall, CPU) samples/s per repeat
            for _ in range(args.repeats):
                solo.append([k * n / t for t in solo_seconds(members, data)])
                pop.append([k * n / t for t in population_seconds(members, data)])
            cells = []
            for i in (0, 1):  # wall, CPU
                ratios = [p[i] / s[i] for p, s in zip(pop, solo, strict=True)]
                cells.append(
                    f"{statistics.median(s[i] for s in solo):>10,.0f} {statistics.median(p[i] for p in pop):>10,.0f} "
                    f"{statistics.median(ratios):>5.2f}x"
                )
            print(
                f"{f'[{width}]':>8} {k:>3} {cells[0]}   {cells[1]}  ({', '.join(f'{r:.2f}' for r in ratios)})",
                flush=True,
            )


# ---------------------------------------------------------------- --design: three ways to step K nets


def step_ways(width: int, kind: str, k: int = 16) -> dict:
    """One training step of K members of [width], done three ways on the same batch."""
    n_in = 3072
    x, y = torch.randn(4096, n_in), torch.randint(0, 2, (4096,))
    index = torch.randint(0, 4096, (k, BATCH))
    xb, yb = x[index.flatten()].view(k, BATCH, n_in), y[index]
    log_softmax = nn.LogSoftmax(dim=1)
    nets = [nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, 2)) for _ in range(k)]

    def loss_of(logits):
        return -log_softmax(logits.reshape(-1, 2)).gather(1, yb.reshape(-1, 1)).view(k, -1).mean(1).sum()

    def stacked_params():
        layers = [(m[0], m[2]) for m in nets]
        columns = (
            [a.weight.detach().t() for a, _ in layers],
            [a.bias.detach()[None] for a, _ in layers],
            [b.weight.detach().t() for _, b in layers],
            [b.bias.detach()[None] for _, b in layers],
        )
        return [torch.stack(c).contiguous().requires_grad_() for c in columns]

    def stacked_optimizer(params):
        return StackedOptimizer(
            kind, params, torch.full((k, 1, 1), 1e-2), torch.full((k, 1, 1), 0.9), torch.zeros(k, 1, 1)
        )

    bmm_params = stacked_params()
    bmm_opt = stacked_optimizer(bmm_params)

    def bmm_step():
        p = bmm_params
        out = torch.baddbmm(p[3], torch.tanh(torch.baddbmm(p[1], xb, p[0])), p[2])
        for t in p:
            t.grad = None
        loss_of(out).backward()
        bmm_opt.step()

    base = copy.deepcopy(nets[0]).to("meta")
    vmap_params = stacked_params()  # the same stacked layout, called through functional_call
    vmap_opt = stacked_optimizer(vmap_params)

    def one_net(weights, inputs):
        w1, b1, w2, b2 = weights
        state = {"0.weight": w1.t(), "0.bias": b1[0], "2.weight": w2.t(), "2.bias": b2[0]}
        return torch.func.functional_call(base, state, (inputs,))

    batched = torch.func.vmap(one_net)

    def vmap_step():
        out = batched(vmap_params, xb)
        for t in vmap_params:
            t.grad = None
        loss_of(out).backward()
        vmap_opt.step()

    leaves = [[t[i].detach().clone().requires_grad_() for t in stacked_params()] for i in range(k)]
    if kind == "sgd":
        leaf_opts = [torch.optim.SGD(ps, lr=1e-2, momentum=0.9) for ps in leaves]
    else:
        leaf_opts = [torch.optim.Adam(ps, lr=1e-2) for ps in leaves]

    def leaves_step():
        p = [torch.stack([leaves[i][j] for i in range(k)]) for j in range(4)]
        out = torch.baddbmm(p[3], torch.tanh(torch.baddbmm(p[1], xb, p[0])), p[2])
        for opt in leaf_opts:
            opt.zero_grad(set_to_none=True)
        loss_of(out).backward()
        for opt in leaf_opts:
            opt.step()

    return {
        "baddbmm + stacked optimizer": bmm_step,
        "vmap + stacked optimizer": vmap_step,
        "leaves + torch.stack + torch.optim": leaves_step,
    }


def design(args) -> None:
    for width in (16, 1024):
        for kind in ("sgd", "adam"):
            ways = step_ways(width, kind)
            repeats = 40 if width == 16 else 4
            times = {name: [] for name in ways}
            for step in ways.values():
                step()  # warm-up
            for _ in range(args.repeats):  # alternate, so load changes hit every way alike
                for name, step in ways.items():
                    started = time.perf_counter()
                    for _ in range(repeats):
                        step()
                    times[name].append((time.perf_counter() - started) / repeats * 1e3)
            fastest = min(statistics.median(t) for t in times.values())
            print(
                f"[{width}] K=16 {kind}: "
                + "; ".join(
                    f"{name} {statistics.median(t):.2f} ms ({statistics.median(t) / fastest:.2f}x the fastest)"
                    for name, t in times.items()
                ),
                flush=True,
            )


# ---------------------------------------------------------------- --separation: when chaos parts member and solo

SEPARATION_MEMBERS = [
    {"seed": 0, "lr": 0.05, "momentum": 0.9, "dropout": 0.2, "augment": "crop+flip", "schedule": "onecycle"},
    {"seed": 1, "lr": 0.02, "weight_decay": 1e-3},
    {"seed": 2, "lr": 0.03, "momentum": 0.5, "dropout": 0.1, "augment": "flip", "schedule": "cosine"},
]


def coloured_data(per_class: int = 200, jitter: float = 80, seed: int = 0) -> StudyData:
    """Two classes of noisy 32x32 images, one base colour each, shifted per image by ``jitter``
    so that the classes overlap (tests/conftest.py's synthetic tree, in memory); 10% held out."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[170.0, 190.0, 220.0], [120.0, 110.0, 80.0]])
    y = torch.arange(2).repeat_interleave(per_class)
    base = colours[y] + jitter * torch.randn(len(y), 3, generator=g)
    x = (base[:, :, None, None] + 60 * torch.randn(len(y), 3, 32, 32, generator=g)).clamp(0, 255).to(torch.uint8)
    held = torch.randperm(len(y), generator=g)[: len(y) // 10]
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[held] = False
    mean = tuple((x[keep].double() / 255).mean(dim=(0, 2, 3)).tolist())
    std = tuple((x[keep].double() / 255).std(dim=(0, 2, 3)).tolist())
    return StudyData(Split(x[keep], y[keep]), Split(x[held], y[held]), None, ("airplane", "bird"), mean, std)


def separation(args) -> None:
    """Member against solo fit, epoch by epoch: the first epoch whose numbers differ by more than
    the pinned tolerance (rel 1e-4, abs 1e-5), and the largest relative difference before it."""
    from trainables.loop import fit
    from trainables.population import fit_population

    data = coloured_data()
    keys = ("train_loss", "train_eval_loss", "train_acc", "val_loss", "val_acc", "lr")
    for optimizer in ("sgd", "adam", "adamw"):
        scale = 1.0 if optimizer == "sgd" else 0.1
        members = [
            TrainConfig(
                hidden_sizes=(32,),
                batch_size=16,
                epochs=args.separation,
                threads=args.threads,
                device="cpu",
                **{**m, "optimizer": optimizer, "lr": m["lr"] * scale},
            )
            for m in SEPARATION_MEMBERS
        ]
        for config, member in zip(members, fit_population(members, data), strict=True):
            solo = fit(config, data)
            parted, worst = None, 0.0
            for a, b in zip(member.history, solo.history, strict=True):
                if any(abs(a[k] - b[k]) > max(1e-4 * abs(b[k]), 1e-5) for k in keys):  # pytest.approx's rule
                    parted = a["epoch"]
                    break
                worst = max(worst, abs(a["train_loss"] - b["train_loss"]) / abs(b["train_loss"]))
            print(
                f"{optimizer} seed {config.seed}: "
                + (f"parts at epoch {parted}" if parted else f"within tolerance for all {args.separation} epochs")
                + f" (train_loss's largest relative difference before: {worst:.1e}; "
                f"final train_loss {solo.history[-1]['train_loss']:.3g})",
                flush=True,
            )


# ---------------------------------------------------------------- --capacity: a study, solo against population


def capacity_study(args, mode: str, name: str, folder: str) -> dict:
    """One `birdplane capacity` in a subprocess: its wall seconds, and its runs' per-epoch val_acc
    and training seconds from the study's MLflow store."""
    import subprocess
    import sys

    from mlflow import MlflowClient

    uri = f"sqlite:///{folder}/mlflow.db"
    command = [sys.executable, "-m", "study.cli", "capacity", f"--{mode}"]
    command += ["--widths", ",".join(map(str, args.widths)), "--depths", args.depths, "--seeds", str(args.seeds)]
    command += ["--epochs", str(args.epochs), "--storage-path", f"{folder}/ray", "--tracking-uri", uri, "--json"]
    command += ["--data-root", args.data_root] if args.data_root else []
    for attempt in (1, 2):  # on an overloaded machine Ray's own start-up can time out: once more, anew
        started = time.perf_counter()
        proc = subprocess.run([*command, "--name", f"{name}-{attempt}"], capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode == 0:
            name = f"{name}-{attempt}"
            break
        print(f"{mode} study failed (attempt {attempt}): {proc.stderr.strip().splitlines()[-1][:200]}", flush=True)
    else:
        raise SystemExit(f"{mode} study failed:\n{proc.stderr[-3000:]}")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    curves, trial_seconds = {}, {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        tags = run.data.tags
        if tags.get("birdplane.role") != "trial":
            continue
        key = (tags["birdplane.cell"], tags["seed"], tags.get("birdplane.regulariser"), tags.get("birdplane.tune"))
        history = sorted(client.get_metric_history(run.info.run_id, "val_acc"), key=lambda m: m.step)
        curves[key] = [m.value for m in history]
        seconds = sum(m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds"))
        trial_seconds[tags["ray_trial_id"]] = seconds  # a population's members share their epochs' seconds
    return {"wall": wall, "curves": curves, "train": sum(trial_seconds.values()), "trials": len(trial_seconds)}


def capacity(args) -> None:
    import tempfile

    print(
        f"capacity study: widths {args.widths} x depths {args.depths} x {args.seeds} seeds, {args.epochs} epochs, "
        f"data {args.data_root or 'the default root'}; {args.repeats} alternating repeats"
    )
    print(f"{'mode':>13} {'wall s':>8} {'trials':>6} {'train s':>8} {'other s':>8}")
    from trainables.config import DataConfig
    from trainables.data import load_study_data

    # The data's tensor cache, built before the clock starts (the first study would pay for it).
    load_study_data(DataConfig(root=args.data_root or os.environ.get("BIRDPLANE_DATA", "./data")))
    walls = {"no-population": [], "population": []}
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="bp-capacity-") as folder:
        for repeat in range(args.repeats):
            order = (
                ("no-population", "population")
                if (repeat + args.population_first) % 2 == 0
                else ("population", "no-population")
            )
            found = {}
            for mode in order:
                found[mode] = out = capacity_study(args, mode, f"{mode}-{repeat}", folder)
                walls[mode].append(out["wall"])
                # other: wall time not spent in the trials' epochs (Ray, MLflow, start-up), 2 trials at once
                other = out["wall"] - out["train"] / min(2, out["trials"])
                row = f"{mode:>13} {out['wall']:>8.1f} {out['trials']:>6} {out['train']:>8.1f} {other:>8.1f}"
                print(row, flush=True)
            solo, pop = found["no-population"]["curves"], found["population"]["curves"]
            assert sorted(solo) == sorted(pop), "the same runs in both studies"
            for key, curve in solo.items():
                assert len(curve) == len(pop[key]) == args.epochs, key
                worst = max([worst, *(abs(a - b) for a, b in zip(curve, pop[key], strict=True))])
    ratios = [p / s for p, s in zip(walls["population"], walls["no-population"], strict=True)]
    print(
        f"wall time population / solo: {statistics.median(ratios):.2f}x (each repeat: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}); largest |val_acc(pop) - val_acc(solo)| over every member "
        f"and epoch: {worst:.2g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default=None, help="default 16,64,512,1024 (--capacity: 16,64)")
    parser.add_argument("--ks", default="1,4,16")
    parser.add_argument("--batches", type=int, default=12, help="batches of 64 in each training pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--group-mb",
        type=float,
        default=None,
        help="trainables.population.CPU_GROUP_BYTES in MB (default: its own; a huge value steps every member together)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bmm", action="store_true", help="one baddbmm per layer on the CPU too (the GPU's kernel)")
    parser.add_argument("--design", action="store_true", help="time the three ways to step K nets instead")
    parser.add_argument("--separation", type=int, default=0, metavar="EPOCHS", help="compare members with solo fits")
    parser.add_argument("--capacity", action="store_true", help="a capacity study, solo against population")
    parser.add_argument("--depths", default="1", help="--capacity: the study's depths")
    parser.add_argument("--seeds", type=int, default=3, help="--capacity: seeds per cell")
    parser.add_argument("--epochs", type=int, default=5, help="--capacity: epochs")
    parser.add_argument("--data-root", default=None, help="--capacity: the CIFAR-10 tree (default: the study's)")
    parser.add_argument(
        "--population-first", type=int, default=0, choices=(0, 1), help="--capacity: 1 runs the population first"
    )
    args = parser.parse_args()
    args.widths = [int(w) for w in (args.widths or ("16,64" if args.capacity else "16,64,512,1024")).split(",")]
    args.ks = [int(k) for k in args.ks.split(",")]
    if args.group_mb is not None:
        population.CPU_GROUP_BYTES = int(args.group_mb * 2**20)
    torch.set_num_threads(args.threads)
    if args.bmm:
        population.MEMBERWISE_DEVICES = ()
    print(f"load average (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.capacity:
        capacity(args)
    elif args.separation:
        separation(args)
    elif args.design:
        design(args)
    else:
        throughput(args)
    print(f"load average (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
