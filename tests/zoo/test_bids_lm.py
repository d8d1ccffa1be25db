"""BIDS over a tiny transformers causal LM on generated instruction data: features against a naive loop, selection covers every task."""

from __future__ import annotations

import torch

from zoo.bids import BIDSSelector, LESSGradientFeatures, per_example_grads
from zoo.bids_lm import EOS, SEP, TASKS, instruction_data, lm_loss, tiny_causal_lm

torch.set_num_threads(1)
VOCAB = 4 + len(TASKS) + 16


def test_instruction_data_answers_follow_the_task() -> None:
    ids, labels, tasks = instruction_data([3, 3, 3, 3], length=4, seed=0)
    assert ids.shape == labels.shape == (12, 12) and tasks.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert int(ids.max()) < VOCAB and (ids[:, 6] == SEP).all() and (ids[:, -1] == EOS).all()
    a, b = ids[:, 2:6] - 8, ids[:, 7:11] - 8
    assert torch.equal(b[0], a[0]) and torch.equal(b[3], a[3].flip(0)) and torch.equal(b[6], a[6].sort().values)
    assert torch.equal(b[9], (a[9] + 1) % 16)
    assert (labels[:, :7] == -100).all() and torch.equal(labels[:, 7:], ids[:, 7:])  # loss on the answer only


def test_lm_loss_is_the_mean_over_answer_tokens() -> None:
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, -100, -100, 6]])
    want = torch.stack([-logits[0, 1].log_softmax(-1)[3], -logits[0, 2].log_softmax(-1)[4], -logits[0, 3].log_softmax(-1)[1],
                        -logits[1, 0].log_softmax(-1)[2], -logits[1, 3].log_softmax(-1)[6]]).mean()  # fmt: skip
    torch.testing.assert_close(lm_loss(logits, labels), want)


def test_vmap_features_of_the_hf_model_equal_a_backward_loop() -> None:
    model = tiny_causal_lm(VOCAB, seed=0)
    ids, labels, _ = instruction_data([2, 2, 2, 2], seed=1)
    got = per_example_grads(model, ids, labels, lm_loss)
    n_params = sum(p.numel() for p in model.parameters())  # tied lm_head / wte counted once
    assert got.shape == (8, n_params)
    for i in range(8):
        model.zero_grad()
        lm_loss(model(ids[i : i + 1]), labels[i : i + 1]).backward()
        ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(got[i], ref, atol=1e-5, rtol=1e-5)


def test_bids_selection_on_the_lm_covers_every_task() -> None:
    ids, labels, _ = instruction_data([28, 20, 8, 8], noise=0.3, seed=2)  # 64 examples, skewed tasks
    val_ids, val_labels, val_tasks = instruction_data([4, 4, 4, 4], seed=3)
    features = LESSGradientFeatures(
        tiny_causal_lm(VOCAB, seed=0), warmup_frac=0.25, checkpoints=2, steps_per_checkpoint=3, lr=1e-3, proj_dim=256, seed=0, loss_fn=lm_loss
    )
    influence = features(ids, labels, val_ids, val_labels)
    assert influence.shape == (64, 16) and torch.isfinite(influence).all()
    train_feats = features._features(ids, labels, None)
    assert train_feats.shape == (64, 256)
    keep = BIDSSelector(budget_frac=0.25)(influence, val_tasks, len(TASKS))
    _, _, pool_tasks = instruction_data([28, 20, 8, 8], noise=0.3, seed=2)
    assert len(keep) == 16 and len(set(keep.tolist())) == 16
    assert set(pool_tasks[keep].tolist()) == {0, 1, 2, 3}
