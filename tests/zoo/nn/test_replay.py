"""The reservoir buffer against a naive algorithm R, its uniformity, and its checkpoint round trip."""

from __future__ import annotations

import torch

from zoo.nn.replay import ReservoirBuffer


def naive_reservoir(stream: list[int], capacity: int, generator: torch.Generator) -> list[int]:
    kept: list[int] = []
    for seen, item in enumerate(stream):
        if len(kept) < capacity:
            kept.append(item)
        else:
            j = int(torch.randint(0, seen + 1, (1,), generator=generator))
            if j < capacity:
                kept[j] = item
    return kept


def test_matches_algorithm_r_across_batches() -> None:
    buf = ReservoirBuffer(capacity=7, seed=3)
    stream = torch.arange(50)
    for chunk in stream.split(6):
        buf.add(chunk.float().unsqueeze(1), chunk)
    assert buf.y.tolist() == naive_reservoir(stream.tolist(), 7, torch.Generator().manual_seed(3))
    assert torch.equal(buf.x.squeeze(1).long(), buf.y) and buf.seen == 50


def test_every_item_is_kept_with_equal_probability() -> None:
    counts = torch.zeros(40)
    for seed in range(400):
        buf = ReservoirBuffer(capacity=10, seed=seed)
        buf.add(torch.zeros(40, 1), torch.arange(40))
        counts[buf.y] += 1
    # each item kept with probability 10/40: 100 of 400 runs; binomial std ~8.7
    assert (counts - 100).abs().max() < 40
    assert abs(counts[:10].mean() - counts[30:].mean()) < 15  # early items are not favoured


def test_sample_is_distinct_and_state_round_trips() -> None:
    buf = ReservoirBuffer(capacity=20, seed=0)
    buf.add(torch.randn(30, 2), torch.arange(30))
    x, y = buf.sample(8)
    assert len(set(y.tolist())) == 8 and set(y.tolist()) <= set(buf.y.tolist())
    restored = ReservoirBuffer(capacity=20, seed=123)
    restored.load_state_dict(buf.state_dict())
    assert torch.equal(restored.x, buf.x) and restored.seen == 30
    assert torch.equal(restored.sample(5)[1], buf.sample(5)[1])  # same generator state
    assert len(ReservoirBuffer(capacity=0).sample(3)[1]) == 0
