"""A reservoir replay buffer (Vitter's algorithm R), the memory of ER, ER-ACE and DER-style methods.

Every example seen so far has the same chance ``capacity / seen`` of being in the buffer,
whatever the task it came from. The buffer is an ``nn.Module`` whose tensors are buffers, so
it moves with the model, and it is saved and restored with the checkpoint (the sampling
generator's state included), so a resumed run replays the same examples.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ReservoirBuffer"]


class ReservoirBuffer(nn.Module):
    """Keeps a uniform sample of at most ``capacity`` ``(x, y)`` pairs from a stream.

    >>> buf = ReservoirBuffer(capacity=3, seed=0)
    >>> buf.add(torch.arange(10.).unsqueeze(1), torch.arange(10))
    >>> len(buf), buf.seen
    (3, 10)
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        super().__init__()
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("x", torch.empty(0))
        self.register_buffer("y", torch.empty(0, dtype=torch.long))
        self.register_buffer("num_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("generator_state", self.generator.get_state())

    @property
    def seen(self) -> int:
        return int(self.num_seen)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @torch.no_grad()
    def add(self, x: Tensor, y: Tensor) -> None:
        """Offer each example of a batch to the reservoir (algorithm R)."""
        x, y = x.detach(), y.detach().long()
        if self.capacity == 0:
            self.num_seen += len(y)
            return
        if len(self) == 0:
            self.x = x.new_empty((0, *x.shape[1:]))
            self.y = y.new_empty((0,))
        for i in range(len(y)):
            seen = self.seen
            if len(self) < self.capacity:
                self.x = torch.cat([self.x, x[i : i + 1]])
                self.y = torch.cat([self.y, y[i : i + 1]])
            else:
                j = int(torch.randint(0, seen + 1, (1,), generator=self.generator))
                if j < self.capacity:
                    self.x[j], self.y[j] = x[i], y[i]
            self.num_seen += 1
        self.generator_state = self.generator.get_state()

    @torch.no_grad()
    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """``min(n, len)`` distinct stored examples, uniformly at random."""
        take = min(n, len(self))
        idx = torch.randperm(len(self), generator=self.generator)[:take].to(self.y.device)
        self.generator_state = self.generator.get_state()
        return self.x[idx], self.y[idx]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        # the stored tensors may have any length: take their shapes instead of copying into ours
        for name in ("x", "y"):
            if prefix + name in state_dict:
                setattr(self, name, state_dict[prefix + name].clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self.generator.set_state(self.generator_state.cpu())
