"""CUDA graphs for the training loop: a whole optimisation step, and a whole evaluation, per launch.

At the chapter's sizes a step is ~15 small kernels and the GPU idles between Python's launches
(about 1.4 ms a step measured on an H100, for 64 samples). Captured once, the step of trainables/steps.py replays as one
graph launch: gathering the batch by index into static buffers, augmentation, forward, loss,
backward, the optimizer's step and the running loss sum, all on the device. The last, smaller
batch of an epoch has its own graph; so does the evaluation of each split (its tensors never
change during a run). The learning rate lives in a device tensor that the scheduler fills in
place between replays, so scheduled rates and weight decay keep working.

Semantics are pinned to the eager steps: the same step, the same batch order from the same
generator, and the warm-up steps that capture needs are undone (weights, optimizer state and
random generators are restored afterwards), so the same config and seed give the same history
within float tolerance. Anything that cannot be captured falls back to eager steps, with the
reason recorded once.
"""

from __future__ import annotations

import torch

from trainables.steps import EVAL_BATCH, EagerSteps, ShuffledBatchSampler, Steps, TrainStep, evaluate_sums, train_pass

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS workspaces, optimizer state)


def graphs_unavailable(device: torch.device, mode: str) -> str | None:
    """Why this run cannot use CUDA graphs (None when it can)."""
    if mode == "off":
        return "CUDA graphs turned off"
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    return None


def make_steps(step: TrainStep, x: torch.Tensor, y: torch.Tensor, order: ShuffledBatchSampler, graphs: str) -> Steps:
    """Graphed steps where the device, ``graphs`` ("auto" or "off") and capture allow; eager
    steps otherwise, their description saying why. Build them after any resume: the graphs point
    at the state tensors as they are now."""
    why_not = graphs_unavailable(x.device, graphs)
    if why_not is None:
        for group in step.optimizer.param_groups:  # a resumed CPU checkpoint brings a float rate, capturable off
            if not torch.is_tensor(group["lr"]):
                group["lr"] = torch.tensor(group["lr"], device=x.device)
            if "capturable" in group:
                group["capturable"] = True
        try:
            return GraphedSteps(step, x, y, order)
        except Exception as err:  # capture is not possible here: keep training, eagerly
            first_line = (str(err).splitlines() or [""])[0][:120]
            why_not = f"CUDA graph capture failed: {type(err).__name__}: {first_line}"
    return EagerSteps(step, x, y, order, f"eager ({why_not})")


class GraphedSteps:
    """The captured graphs of one run; ``train_epoch`` and ``evaluate`` replay them."""

    description = "graphed (CUDA graphs)"

    def __init__(self, step: TrainStep, x: torch.Tensor, y: torch.Tensor, order: ShuffledBatchSampler):
        self.step, self.x, self.y, self.order = step, x, y, order
        self.device = x.device
        self.n = len(y)
        self.batch = min(order.batch_size, self.n)
        self.tail = self.n % self.batch
        self.loss_sum = torch.zeros((), device=self.device)
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
    def _update(self, index: torch.Tensor) -> None:
        """The step on the batch that ``index`` (a static buffer) selects."""
        self.step.update(self.x.index_select(0, index), self.y.index_select(0, index), self.loss_sum)

    def _capture_step(self, index: torch.Tensor) -> torch.cuda.CUDAGraph:
        step = self.step
        step.model.train()
        index.copy_(torch.arange(len(index), device=self.device) % self.n)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._update(index)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(step.augment_gen)
        step.optimizer.zero_grad(set_to_none=True)  # the captured backward writes fresh gradients
        with torch.cuda.graph(graph):
            self._update(index)
        return graph

    def _save_state(self) -> dict:
        step = self.step
        return {
            "model": {k: v.detach().clone() for k, v in step.model.state_dict().items()},
            "optimizer": {
                id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}
                for p, state in step.optimizer.state.items()
            },
            "augment_rng": step.augment_gen.get_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device),
        }

    def _restore_state(self, saved: dict) -> None:
        """Undo the warm-up and capture steps, in place: the graphs keep pointing at these tensors."""
        step = self.step
        with torch.no_grad():
            for key, value in step.model.state_dict().items():
                value.copy_(saved["model"][key])
            for p, state in step.optimizer.state.items():
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
        step.augment_gen.set_state(saved["augment_rng"])
        torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        self.loss_sum.zero_()

    # ---------------------------------------------------------------- replay
    def train_epoch(self) -> torch.Tensor:
        """One epoch in the order the eager steps would draw; the mean loss as a device tensor."""
        return train_pass(self.step, self.order, self._replay, self.loss_sum, self.n)

    def _replay(self, index: torch.Tensor) -> None:
        full = len(index) == self.batch
        (self.full_index if full else self.tail_index).copy_(index)
        (self.full_graph if full else self.tail_graph).replay()

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``evaluate_sums`` over the split, as device tensors; one graph per split."""
        key = x.data_ptr()
        if key not in self.eval_graphs:
            self.eval_graphs[key] = self._capture_eval(x, y)
        graph, sums = self.eval_graphs[key]
        self.step.model.eval()
        graph.replay()
        return sums

    def _capture_eval(self, x: torch.Tensor, y: torch.Tensor):
        model, loss_fn = self.step.model, self.step.loss_fn
        model.eval()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            evaluate_sums(model, x, y, loss_fn, EVAL_BATCH)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            sums = evaluate_sums(model, x, y, loss_fn, EVAL_BATCH)
        return graph, sums
