"""OnlineModule: serving order, totals, ratio and regret against a hand-computed stream, and resume."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from tests.conftest import resume_mid_pass
from zoo.templates.online import OnlineAlgorithm, OnlineModule


class FollowTheLeader(OnlineAlgorithm):
    """Pick the action with the least cost so far (ties: lowest index), then see every action's cost."""

    def __init__(self, actions: int) -> None:
        self.totals = torch.zeros(actions, dtype=torch.float64)

    def reset(self) -> None:
        self.totals.zero_()

    def serve(self, request: Any) -> float:
        costs = torch.as_tensor(request, dtype=torch.float64)
        cost = float(costs[int(self.totals.argmin())])
        self.totals += costs
        return cost

    def state_dict(self) -> dict[str, Any]:
        return {"totals": self.totals.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.totals = state["totals"].clone()


class FTLModule(OnlineModule):
    def __init__(self, actions: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters()

    def build_algorithm(self) -> OnlineAlgorithm:
        return FollowTheLeader(self.hparams.actions)

    def benchmark(self, requests: list[Any]) -> float:
        return float(torch.tensor(requests, dtype=torch.float64).sum(0).min())  # best fixed action in hindsight


STREAM = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.5], [1.0, 0.0]]


def _loader(stream=STREAM, chunk: int = 2) -> DataLoader:
    return DataLoader(stream, batch_size=chunk, collate_fn=list)


def _trainer(tmp_path, **kw) -> Trainer:
    return Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw)


def test_test_stream_logs_cost_benchmark_ratio_and_regret(tmp_path) -> None:
    # FTL pays 1, 1, 1, 1 (alternating leaders), then totals [2, 2] -> action 0 pays 0, totals [2, 2.5] -> 0 pays 1
    metrics = _trainer(tmp_path).test(FTLModule(), _loader(), verbose=False)[0]
    assert metrics["test/cost"] == pytest.approx(5.0)
    assert metrics["test/benchmark"] == pytest.approx(2.5)
    assert metrics["test/ratio"] == pytest.approx(2.0) and metrics["test/regret"] == pytest.approx(2.5)


def test_a_resumed_stream_continues_with_the_algorithm_state_and_totals(tmp_path) -> None:
    runs = resume_mid_pass(tmp_path, FTLModule, _loader, crash_batch=1)
    assert runs.crashed.served == 4
    assert runs.resumed.served == runs.full.served == 6
    assert runs.resumed.cumulative_cost == runs.full.cumulative_cost == 5.0
    assert torch.equal(runs.resumed.algorithm.state_dict()["totals"], runs.full.algorithm.state_dict()["totals"])


def test_a_reward_stream_reports_regret_as_the_shortfall() -> None:
    class Rewards(FTLModule):
        higher_is_better = True

        def benchmark(self, requests: list[Any]) -> float:
            return 10.0

    module = Rewards()
    module.on_test_epoch_start()
    module._test_cost = 7.0
    logged: dict[str, torch.Tensor] = {}
    module.log_dict = lambda values, **kw: logged.update(values)  # type: ignore[method-assign]
    module.on_test_epoch_end()
    assert float(logged["test/ratio"]) == pytest.approx(0.7) and float(logged["test/regret"]) == pytest.approx(3.0)
