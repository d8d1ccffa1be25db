"""ContinualClassifier: ER-ACE's mask against mammoth's rule, the losses, and the replay buffer kept out of the hub."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zoo.templates.continual import ContinualClassifier, ace_mask


def test_ace_mask_follows_mammoth() -> None:
    logits = torch.zeros(2, 6)
    out = ace_mask(logits, torch.tensor([2, 3]), largest_seen=3)
    kept = (out[0] == 0).nonzero().flatten().tolist()
    assert kept == [2, 3, 4, 5]  # present classes, plus the largest seen and everything above it
    all_seen = ace_mask(logits, torch.tensor([4]), largest_seen=5)
    assert (all_seen[0] == 0).nonzero().flatten().tolist() == [4]  # every class seen: only present ones


def test_er_ace_two_forward_loss_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = ContinualClassifier(method="er_ace", buffer_size=8, replay_batch_size=4, hidden_dims=[16])
    bx, by = torch.randn(8, 64), torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    model.buffer.add(bx, by)
    model.largest_seen = torch.tensor(1)
    x, y = torch.randn(5, 64), torch.tensor([2, 3, 2, 3, 2])
    monkeypatch.setattr(ContinualClassifier, "current_task", property(lambda self: 1))  # as in task 1
    state = model.buffer.generator.get_state()
    rx, ry = model.buffer.sample(4)  # what the step will replay: same generator state
    model.buffer.generator.set_state(state)
    loss = model.training_step((x, y), 0)
    logits = model(x)
    masked = logits.clone()
    masked[:, [0, 1]] = torch.finfo(logits.dtype).min  # absent from the stream batch, already seen
    want = F.cross_entropy(masked, y) + F.cross_entropy(model(rx), ry)
    assert float(loss) == pytest.approx(float(want), rel=1e-5)


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        ContinualClassifier(method="er")
    with pytest.raises(ValueError, match="backbone"):
        ContinualClassifier(backbone="nope")


def test_replay_buffer_is_checkpointed_but_not_published(tmp_path: Path) -> None:
    import zoo.registry
    from zoo.hub import load

    model = ContinualClassifier(method="er", buffer_size=4)
    model.buffer.add(torch.randn(6, 64), torch.arange(6))
    assert "buffer.x" in model.state_dict() and "buffer.x" not in model.hub_state_dict()
    entry = zoo.registry.Entry("tmp-cl", "p", None, "module", "zoo.templates.continual.ContinualClassifier", "none")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zoo.registry, "_ENTRIES", (entry,))
        model.save_pretrained(tmp_path)
        loaded = load(tmp_path)
    assert len(loaded.buffer) == 0
    x = torch.randn(3, 64)
    assert torch.equal(loaded(x), model.eval()(x))
