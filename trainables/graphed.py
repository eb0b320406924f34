"""CUDA graphs for the training loop: a whole optimisation step, and a whole evaluation, per launch.

At the chapter's sizes a step is ~15 small kernels and the GPU idles between Python's launches
(about 1.4 ms a step measured on an H100, for 64 samples). Captured once, a step replays as one
graph launch: gathering the batch by index into static buffers, augmentation, forward, loss,
backward, the optimizer's step and the running loss sum, all on the device. The last, smaller
batch of an epoch has its own graph; so does the evaluation of each split (its tensors never
change during a run). The learning rate lives in a device tensor that the scheduler fills in
place between replays, so scheduled rates and weight decay keep working.

Semantics are pinned to the eager loop: the batch order comes from the same generator, the
warm-up steps that capture needs are undone (weights, optimizer state and random generators are
restored afterwards), so the same config and seed give the same history within float tolerance.
Anything that cannot be captured falls back to eager steps, with the reason recorded once.
"""
from __future__ import annotations

import torch

from trainables.loop import EVAL_BATCH, Run, augment

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS workspaces, optimizer state)


def graphs_unavailable(device: torch.device, mode: str) -> str | None:
    """Why this run cannot use CUDA graphs (None when it can)."""
    if mode == "off":
        return "CUDA graphs turned off"
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    return None


class GraphedSteps:
    """The captured graphs of one run; ``train_epoch`` and ``evaluate`` replay them."""

    def __init__(self, run: Run):
        self.run = run
        self.device = run.device
        self.n = len(run.train_y)
        self.batch = min(run.config.batch_size, self.n)
        self.tail = self.n % self.batch
        self.loss_sum = torch.zeros((), device=self.device)
        self.params = [p for p in run.model.parameters() if p.requires_grad]
        saved = self._save_state()
        try:
            self.full_index = torch.zeros(self.batch, dtype=torch.long, device=self.device)
            self.full_graph = self._capture_step(self.full_index)
            self.tail_index = torch.zeros(max(self.tail, 1), dtype=torch.long, device=self.device)
            self.tail_graph = self._capture_step(self.tail_index) if self.tail else None
        finally:  # captured or not, the run continues from exactly where it was
            self._restore_state(saved)
        self.eval_graphs = {}

    # ---------------------------------------------------------------- capture
    def _step(self, index: torch.Tensor) -> None:
        run = self.run
        xb, yb = run.train_x.index_select(0, index), run.train_y.index_select(0, index)
        if run.config.augment != "none":
            xb = augment(xb, run.config.augment, run.augment_gen)
        loss = run.loss_fn(run.model(xb), yb)
        loss.backward()
        run.optimizer.step()
        self.loss_sum.add_(loss.detach() * len(index))

    def _capture_step(self, index: torch.Tensor) -> torch.cuda.CUDAGraph:
        run = self.run
        run.model.train()
        index.copy_(torch.arange(len(index), device=self.device) % self.n)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                run.optimizer.zero_grad(set_to_none=True)
                self._step(index)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(run.augment_gen)
        run.optimizer.zero_grad(set_to_none=True)  # the captured backward writes fresh gradients
        with torch.cuda.graph(graph):
            self._step(index)
        return graph

    def _save_state(self) -> dict:
        run = self.run
        return {
            "model": {k: v.detach().clone() for k, v in run.model.state_dict().items()},
            "optimizer": {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}
                          for p, state in run.optimizer.state.items()},
            "augment_rng": run.augment_gen.get_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device),
        }

    def _restore_state(self, saved: dict) -> None:
        """Undo the warm-up and capture steps, in place: the graphs keep pointing at these tensors."""
        run = self.run
        with torch.no_grad():
            for key, value in run.model.state_dict().items():
                value.copy_(saved["model"][key])
            for p, state in run.optimizer.state.items():
                before = saved["optimizer"].get(id(p), {})
                for key, value in state.items():
                    if not torch.is_tensor(value):
                        continue
                    if key in before:
                        value.copy_(before[key])
                    else:
                        # State that did not exist before (a fresh run) starts from zero, which is
                        # what a first step would have initialised (Adam's moments and step, SGD's
                        # momentum buffer: buf = 0 * momentum + grad).
                        value.zero_()
        run.augment_gen.set_state(saved["augment_rng"])
        torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        self.loss_sum.zero_()

    # ---------------------------------------------------------------- replay
    def train_epoch(self) -> torch.Tensor:
        """One epoch in the order the eager loader would draw; the mean loss as a device tensor."""
        run = self.run
        run.model.train()
        order = torch.randperm(self.n, generator=run.sampler_gen, device=self.device)
        self.loss_sum.zero_()
        full = self.n // self.batch
        for i in range(full):
            self.full_index.copy_(order[i * self.batch:(i + 1) * self.batch])
            self.full_graph.replay()
            if run.scheduler is not None:
                run.scheduler.step()
        if self.tail_graph is not None:
            self.tail_index.copy_(order[full * self.batch:])
            self.tail_graph.replay()
            if run.scheduler is not None:
                run.scheduler.step()
        return self.loss_sum / self.n

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss sum, correct count) over the split, as device tensors; one graph per split."""
        key = x.data_ptr()
        if key not in self.eval_graphs:
            self.eval_graphs[key] = self._capture_eval(x, y)
        graph, loss_sum, correct = self.eval_graphs[key]
        self.run.model.eval()
        graph.replay()
        return loss_sum, correct

    def _capture_eval(self, x, y):
        from trainables.loop import evaluate_sums

        self.run.model.eval()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            evaluate_sums(self.run.model, x, y, self.run.loss_fn, EVAL_BATCH)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss_sum, correct = evaluate_sums(self.run.model, x, y, self.run.loss_fn, EVAL_BATCH)
        return graph, loss_sum, correct
