"""Throughput of trainables.fit against a bare randperm loop and the machine's GEMM peak, in ONE run.

    python benchmarks/loop_throughput.py [--epochs 6] [--threads 0]

fit's `samples_per_second` counts its training pass (DataLoader, forward, loss, backward, step);
the bare loop does the same work by slicing pre-normalised tensors with randperm. The evaluation
fit also does each epoch (train_acc over the whole split, val) is reported separately. Work is
counted exactly: per sample and Linear(i, o), 2io forward, 2io for the weight gradient and 2io for
the input gradient (not needed by the first layer); the common "6 x params" convention, which
counts that unneeded gradient too, is printed beside it. Goals on the CPU: fit >= 0.95x bare,
>= 0.75x peak. On a GPU fit's steps are CUDA-graphed (``--graphs off`` for eager ones); the bare loop
stays eager, so fit/bare there is the graphs' speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainables.config import TrainConfig
from trainables.data import Split, StudyData
from trainables.loop import fit, normalise, pick_device
from trainables.losses import ChapterLoss
from trainables.model import build_model, count_params

NETS = {"[512]": (512,), "[1024,512,128]": (1024, 512, 128)}


def flops_per_sample(hidden) -> int:
    widths = [3072, *hidden, 2]
    layers = list(zip(widths, widths[1:], strict=False))
    return sum(6 * i * o for i, o in layers) - 2 * layers[0][0] * layers[0][1]


def gemm_peak(device, repeats: int = 30) -> float:
    a, b = torch.randn(256, 3072, device=device), torch.randn(3072, 1024, device=device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * 256 * 3072 * 1024 / best


class BareLoop:
    """The same training work with no DataLoader: randperm, slice, step."""

    def __init__(self, hidden, x, y, batch_size, seed=0):
        torch.manual_seed(seed)
        self.model = build_model(3072, hidden, 2, "tanh").to(x.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-2)
        self.loss_fn = ChapterLoss("nll", 2)
        self.x, self.y, self.batch_size = x, y, batch_size

    def epoch(self) -> float:
        """One epoch; returns samples/s."""
        x, y = self.x, self.y
        t = time.perf_counter()
        total = torch.zeros((), device=x.device)
        for idx in torch.randperm(len(y), device=x.device).split(self.batch_size):
            loss = self.loss_fn(self.model(x[idx]), y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.detach()
        total.item()
        return len(y) / (time.perf_counter() - t)


def synthetic_data(n: int, seed: int = 0) -> StudyData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return StudyData(Split(x, y), Split(x[:1000], y[:1000]), None, ("airplane", "bird"), (0.5,) * 3, (0.25,) * 3)


def run(epochs: int, threads: int, n: int, batch_size: int, device_name: str, graphs: str = "auto") -> list[dict]:
    """fit's epochs, a bare epoch and a GEMM timing alternate, so a noisy machine hits all alike."""
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(device_name)
    data = synthetic_data(n)
    x = normalise(data.train.x, data.mean, data.std, device)
    y = data.train.y.to(device)
    rows = []
    for name, hidden in NETS.items():
        bare = BareLoop(hidden, x, y, batch_size)
        bare.epoch()  # warm-up
        pairs = []

        def after_epoch(metrics, _snapshot, pairs=pairs, bare=bare):
            pairs.append(
                (
                    metrics["samples_per_second"],
                    bare.epoch(),
                    gemm_peak(device, repeats=10),
                    len(y) / metrics["epoch_seconds"],
                )
            )

        cfg = TrainConfig(
            hidden_sizes=hidden,
            epochs=epochs + 1,
            batch_size=batch_size,
            device=device.type,
            threads=threads,
            graphs=graphs,
        )
        result = fit(cfg, data, on_epoch_end=after_epoch)
        pairs = pairs[1:]  # fit's first epoch warms up
        flops = flops_per_sample(hidden)
        med = statistics.median
        rows.append(
            {
                "net": name,
                "fit_samples_per_s": med([p[0] for p in pairs]),
                "bare_samples_per_s": med([p[1] for p in pairs]),
                "fit_over_bare": med([p[0] / p[1] for p in pairs]),
                "fit_gflops": med([p[0] for p in pairs]) * flops / 1e9,
                "peak_gflops": med([p[2] for p in pairs]) / 1e9,
                "fit_over_peak": med([p[0] * flops / p[2] for p in pairs]),
                "fit_over_peak_6n": med([p[0] * 6 * count_params(3072, hidden, 2) / p[2] for p in pairs]),
                "epoch_with_eval_samples_per_s": med([p[3] for p in pairs]),
                "steps": result.steps,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6, help="measured epochs per net (after one warm-up)")
    p.add_argument("--threads", type=int, default=0, help="0: torch's default")
    p.add_argument(
        "--samples", type=int, default=10_000, help="training images (the airplane/bird train split has 10,000)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--graphs", default="auto", choices=("auto", "off"), help="CUDA-graphed steps on a GPU (auto)")
    p.add_argument("--smoke-test", action="store_true", help="tiny run for CI")
    a = p.parse_args()
    if a.smoke_test:
        a.epochs, a.samples = 2, 1024
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads() if not a.threads else a.threads}, "
        f"device {pick_device(a.device)}, batch {a.batch_size}, {a.samples} samples"
    )
    for row in run(a.epochs, a.threads, a.samples, a.batch_size, a.device, a.graphs):
        print(
            f"{row['net']:>16}: fit {row['fit_samples_per_s']:9,.0f} samples/s | "
            f"bare {row['bare_samples_per_s']:9,.0f} | "
            f"fit/bare {row['fit_over_bare']:.3f} (goal >= 0.95) | {row['fit_gflops']:.0f} of "
            f"{row['peak_gflops']:.0f} GFLOP/s peak = {row['fit_over_peak']:.3f} exact count, "
            f"{row['fit_over_peak_6n']:.3f} as 6*params (goal >= 0.75) | "
            f"whole epoch incl. eval {row['epoch_with_eval_samples_per_s']:,.0f} samples/s | steps {row['steps']}"
        )


if __name__ == "__main__":
    main()
