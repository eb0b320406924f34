"""CUDA graphs of a population's step (trainables/graphed.py's pattern, for K stacked members).

One graph replays the whole batched step of every active member: the gather of each member's
batch by index from static [K, B] buffers, the members' augmentation and dropout draws (each from
its own registered generator), forward, per-member losses, backward and the stacked optimizer;
the epoch's last, smaller batch has its own graph. The members' rates live in a device tensor that
their schedules fill between replays. The warm-up and capture steps are undone afterwards (weights,
optimizer state, generators), so graphed and eager populations give the same history within float
tolerance. The graphs point at the stack's tensors: a population that shrinks captures again.
"""

from __future__ import annotations

import torch

from trainables.graphed import WARMUP_STEPS


class PopulationGraphs:
    """The captured step of a population's current stack; ``replay`` runs it on a [K, b] index."""

    def __init__(self, population):
        self.population = pop = population
        k = len(pop.active)
        self.batch = min(pop.batch_size, pop.n)
        self.tail = pop.n % self.batch
        saved = self._save()
        try:
            self.full_index = torch.zeros(k, self.batch, dtype=torch.long, device=pop.device)
            self.full_graph = self._capture(self.full_index)
            self.tail_index = torch.zeros(k, max(self.tail, 1), dtype=torch.long, device=pop.device)
            self.tail_graph = self._capture(self.tail_index) if self.tail else None
        finally:  # captured or not, the population continues from exactly where it was
            self._restore(saved)

    def _capture(self, index: torch.Tensor) -> torch.cuda.CUDAGraph:
        pop = self.population
        index.copy_(torch.arange(index.shape[1], device=pop.device).expand_as(index) % pop.n)
        side = torch.cuda.Stream(pop.device)
        side.wait_stream(torch.cuda.current_stream(pop.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                pop.update(index)
        torch.cuda.current_stream(pop.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        for member in pop.live():
            graph.register_generator_state(member.augment_gen)
            graph.register_generator_state(member.dropout_gen)
        with torch.cuda.graph(graph):
            pop.update(index)  # sets the gradients to None first: the captured backward writes fresh ones
        return graph

    def _save(self) -> dict:
        pop = self.population
        return {
            "params": [p.detach().clone() for p in pop.params],
            "optimizer": pop.optimizer.state_dict(),
            "generators": [(m.augment_gen.get_state(), m.dropout_gen.get_state()) for m in pop.live()],
        }

    def _restore(self, saved: dict) -> None:
        """Undo the warm-up and capture steps in place: the graphs keep pointing at these tensors."""
        pop = self.population
        with torch.no_grad():
            for p, before in zip(pop.params, saved["params"], strict=True):
                p.copy_(before)
        pop.optimizer.load_state_dict(saved["optimizer"])
        for member, (augment, dropout) in zip(pop.live(), saved["generators"], strict=True):
            member.augment_gen.set_state(augment)
            member.dropout_gen.set_state(dropout)
        pop.loss_sum.zero_()

    def replay(self, index: torch.Tensor) -> None:
        full = index.shape[1] == self.batch
        (self.full_index if full else self.tail_index).copy_(index)
        (self.full_graph if full else self.tail_graph).replay()
