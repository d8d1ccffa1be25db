"""BIDS on a causal language model: the LLM path of arXiv 2501.12147, at toy scale.

The paper selects instruction-tuning data for Llama-3 / Mistral with LESS gradient features
(princeton-nlp/LESS, ``less/data_selection/get_info.py``: per-example gradients of the LM loss on
the answer tokens, Adam-preconditioned on the train side, randomly projected). Here the same
pipeline runs on a tiny Hugging Face ``transformers`` GPT-2 built from a config (no weights) and
on generated instruction data with a few tasks, so the code path the paper targets is exercised
on a CPU: :func:`lm_loss` plugs into :func:`zoo.bids.per_example_grads` and
:class:`zoo.bids.LESSGradientFeatures`, and the selection is :class:`zoo.bids.BIDSSelector`.

Deviations: full fine-tuning of the tiny model instead of LoRA (r=128); ``torch.func.vmap`` over
the HF module works with ``attn_implementation="eager"`` (measured: 16 sequences in 15 ms against
38 ms for a per-example backward loop, equal to 4e-9), so no loop fallback is kept; the data are
generated token tasks (copy, reverse, sort, shift), not UltraInteract.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PAD", "BOS", "SEP", "EOS", "TASKS", "instruction_data", "lm_loss", "CausalLMLogits", "tiny_causal_lm"]

PAD, BOS, SEP, EOS = 0, 1, 2, 3
#: The generated instruction tasks: the answer is the content copied, reversed, sorted or shifted by one.
TASKS = ("copy", "reverse", "sort", "shift")
_FIRST_TASK_TOKEN = 4


def _answer(task: str, a: Tensor, num_symbols: int) -> Tensor:
    if task == "copy":
        return a
    if task == "reverse":
        return a.flip(-1)
    if task == "sort":
        return a.sort(-1).values
    return (a + 1) % num_symbols  # shift


def instruction_data(counts: list[int], length: int = 4, num_symbols: int = 16, noise: float = 0.0, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded instruction -> answer sequences: ``counts[t]`` examples of task ``TASKS[t]``.

    A sequence is ``[BOS, <task t>, a_1..a_L, SEP, b_1..b_L, EOS]`` (length ``2L + 4``); ``labels``
    are the ids with the instruction masked (-100), so the loss is on the answer only (as in LESS).
    ``noise`` replaces that share of answers with random symbols (low-quality pool data).
    Returns ``input_ids (N, 2L+4)``, ``labels (N, 2L+4)``, ``task_ids (N,)``; the vocabulary has
    ``4 + len(TASKS) + num_symbols`` tokens.
    """
    if len(counts) > len(TASKS):
        raise ValueError(f"at most {len(TASKS)} tasks, got {len(counts)}")
    gen = torch.Generator().manual_seed(seed)
    offset = _FIRST_TASK_TOKEN + len(TASKS)
    ids, labels, tasks = [], [], []
    for t, n in enumerate(counts):
        a = torch.randint(0, num_symbols, (n, length), generator=gen)
        b = _answer(TASKS[t], a, num_symbols)
        bad = torch.rand(n, generator=gen) < noise
        b = torch.where(bad[:, None], torch.randint(0, num_symbols, (n, length), generator=gen), b)
        bos, task, sep, eos = (torch.full((n, 1), v) for v in (BOS, _FIRST_TASK_TOKEN + t, SEP, EOS))
        seq = torch.cat([bos, task, a + offset, sep, b + offset, eos], 1)
        lab = seq.clone()
        lab[:, : length + 3] = -100  # the instruction (BOS, task, content, SEP) carries no loss
        ids.append(seq), labels.append(lab), tasks.append(torch.full((n,), t))
    return torch.cat(ids), torch.cat(labels), torch.cat(tasks)


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy over the labelled (answer) tokens: logits ``(B, T, V)``, labels ``(B, T)`` with -100 ignored."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


class CausalLMLogits(nn.Module):
    """``forward(input_ids) -> logits`` over a Hugging Face causal LM, the shape :func:`zoo.bids.per_example_grads` calls."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.lm(input_ids=input_ids).logits


def tiny_causal_lm(vocab_size: int, n_layer: int = 2, n_embd: int = 32, n_head: int = 2, n_positions: int = 32, seed: int = 0) -> CausalLMLogits:
    """A randomly initialised ``GPT2LMHeadModel`` from a ``GPT2Config`` (no weights downloaded), eager attention, no dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
        bos_token_id=BOS, eos_token_id=EOS, attn_implementation="eager",  # no pad_token_id: its padding check calls .item(), which vmap refuses
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # no dropout: deterministic per-example gradients under vmap
    )  # fmt: skip
    torch.manual_seed(seed)
    return CausalLMLogits(GPT2LMHeadModel(config))
