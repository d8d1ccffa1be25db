"""``OnlineModule``: the base of online entries, an algorithm serving a stream of requests under Lightning.

Online entries (paging, matching, bandits over solver settings, fair online learning, ALNS) share
one shape, so a new one is a few hooks:

- an :class:`OnlineAlgorithm`: ``serve(request) -> cost`` decides on one request and pays for it,
  learning from the feedback if it learns; its whole state is in ``state_dict`` (checkpoints resume
  the same stream, counters included);
- a stream: the datamodule's loaders yield chunks of requests (any Python objects; collate with
  ``collate_fn=list`` or tensors); the module serves them in order;
- a benchmark: :meth:`OnlineModule.benchmark` gives the cost of the offline comparator on the test
  stream (Belady's optimum, an LP bound, the best fixed action in hindsight), from which the test
  logs the competitive ratio ``cost / benchmark`` and the regret ``cost - benchmark``.

For rewards instead of costs (a matching's size), set ``higher_is_better = True``: the ratio is then
``reward / benchmark`` (at most 1 against an upper bound) and the regret ``benchmark - reward``.
Where a model is learned by gradient (a predictor feeding the algorithm), the subclass overrides
``training_step`` and ``configure_optimizers`` as any LightningModule; serving and the metrics stay here.

Logged: ``train/cost`` (the chunk's) and ``train/cumulative_cost`` while fitting; ``test/cost``,
``test/benchmark``, ``test/ratio``, ``test/regret`` and ``test/requests`` after a test stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from zoo.hub import ZooModule

__all__ = ["OnlineAlgorithm", "OnlineModule"]


class OnlineAlgorithm:
    """An online algorithm: ``serve`` one request at a time, paying its cost; ``reset`` for a new stream.

    Subclasses implement :meth:`serve` and keep every piece of state that :meth:`serve` changes in
    :meth:`state_dict` (plain values and tensors: checkpoints are read with ``weights_only=True``).
    """

    def reset(self) -> None:
        """Forget the current stream (empty cache, no matches); what was learned across streams may stay."""

    def serve(self, request: Any) -> float:
        """Decide on ``request`` and return the cost (or reward) it incurred."""
        raise NotImplementedError(f"{type(self).__name__} must implement serve(request)")

    def serve_all(self, requests: Iterable[Any]) -> float:
        """Serve requests in order; the total cost."""
        return float(sum(self.serve(r) for r in requests))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class OnlineModule(ZooModule):
    """Serve the datamodule's stream with :meth:`build_algorithm`'s algorithm; log cost, ratio and regret."""

    higher_is_better: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self._algorithm: OnlineAlgorithm | None = None
        self.cumulative_cost = 0.0
        self.served = 0
        self._stream: list[Any] = []
        self._test_cost = 0.0
        self._test_requests: list[Any] = []

    # ------------------------------------------------------------------ what a subclass provides
    def build_algorithm(self) -> OnlineAlgorithm:
        raise NotImplementedError(f"{type(self).__name__} must implement build_algorithm()")

    def benchmark(self, requests: list[Any]) -> float | None:
        """The offline comparator's cost on a whole test stream; None when there is none."""
        return None

    def requests_of(self, batch: Any) -> list[Any]:
        """The requests in one loader batch, in stream order (default: the batch itself, a list)."""
        return list(batch)

    # ------------------------------------------------------------------ the shared machinery
    @property
    def algorithm(self) -> OnlineAlgorithm:
        if self._algorithm is None:
            self._algorithm = self.build_algorithm()
        return self._algorithm

    def configure_optimizers(self) -> list:
        return []  # online algorithms update their own state

    def on_train_start(self) -> None:
        """Read the train stream once, in loader order: serving follows the stream position, not the batch."""
        loader = self.trainer.train_dataloader
        self._stream = [request for batch in loader for request in self.requests_of(batch)]
        if not self._stream:
            raise RuntimeError(f"{type(self).__name__}: the train loader yields no requests")

    def serve_chunk(self, batch: Any) -> float:
        """Serve the next ``len(batch)`` requests of the stream (never past the end of a pass); the chunk's cost.

        The position is ``served mod len(stream)``, so a run resumed from a checkpoint written in the
        middle of a pass continues where it stopped, whatever batches Lightning replays.
        """
        position = self.served % len(self._stream)
        requests = self._stream[position : position + len(self.requests_of(batch))]
        cost = self.algorithm.serve_all(requests)
        self.cumulative_cost += cost
        self.served += len(requests)
        return cost

    def training_step(self, batch: Any, batch_idx: int) -> None:
        cost = self.serve_chunk(batch)
        logs = {"train/cost": cost, "train/cumulative_cost": self.cumulative_cost, "train/requests": float(self.served)}
        self.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in logs.items()}, on_step=True, on_epoch=False, batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["online"] = {
            "algorithm": self.algorithm.state_dict(),
            "cumulative_cost": self.cumulative_cost,
            "served": self.served,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("online")
        if state is not None:
            self.algorithm.load_state_dict(state["algorithm"])
            self.cumulative_cost, self.served = float(state["cumulative_cost"]), int(state["served"])

    # ------------------------------------------------------------------ the test stream
    def on_test_epoch_start(self) -> None:
        self.algorithm.reset()
        self._test_cost, self._test_requests = 0.0, []

    def test_step(self, batch: Any, batch_idx: int) -> None:
        requests = self.requests_of(batch)
        self._test_cost += self.algorithm.serve_all(requests)
        self._test_requests.extend(requests)

    def on_test_epoch_end(self) -> None:
        logs = {"test/cost": self._test_cost, "test/requests": float(len(self._test_requests))}
        best = self.benchmark(self._test_requests)
        if best is not None:
            logs["test/benchmark"] = best
            logs["test/ratio"] = self._test_cost / best if best else float("nan")
            logs["test/regret"] = best - self._test_cost if self.higher_is_better else self._test_cost - best
        self.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in logs.items()})
