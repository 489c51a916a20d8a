"""Blocks of seq_len + 1 tokens and the one label shift in tstool: x = block[:-1], y = block[1:].

An epoch is a seeded permutation of block offsets; the sampler's state (epoch, cursor) is part of
every checkpoint, so a resumed run continues mid-epoch with exactly the batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def split_block(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The only label shift in the codebase: inputs and next-token targets of (B, T+1) blocks."""
    return blocks[:, :-1], blocks[:, 1:]


def gather_blocks(tokens: np.ndarray, block_ids: np.ndarray, seq_len: int) -> torch.Tensor:
    """(B, seq_len + 1) int64 tokens of the given block indices; neighbouring blocks share one token."""
    offsets = block_ids.astype(np.int64)[:, None] * seq_len + np.arange(seq_len + 1)
    return torch.from_numpy(tokens[offsets].astype(np.int64))


@dataclass
class SamplerState:
    epoch: int = 0
    cursor: int = 0


class BlockSampler:
    """Seeded, resumable order of blocks; each process takes its own slice of every global batch."""

    def __init__(self, num_tokens: int, seq_len: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.num_blocks = (num_tokens - 1) // seq_len
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.global_batch = batch_size * world
        if self.num_blocks < self.global_batch:
            raise ValueError(f"{self.num_blocks} blocks cannot fill a global batch of {self.global_batch}")
        self.state = SamplerState()
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks)

    @property
    def epoch_progress(self) -> float:
        """Epochs completed, fractional."""
        return self.state.epoch + self.state.cursor / self.num_blocks

    def load_state(self, state: SamplerState) -> None:
        self.state = SamplerState(state.epoch, state.cursor)
        self._order = self._permutation(state.epoch)

    def next_ids(self) -> np.ndarray:
        """Block indices of this process's next micro-batch (an incomplete tail starts a new epoch)."""
        if self.state.cursor + self.global_batch > self.num_blocks:
            self.load_state(SamplerState(self.state.epoch + 1, 0))
        start = self.state.cursor + self.rank * self.batch_size
        self.state.cursor += self.global_batch
        return self._order[start : start + self.batch_size]

    def next_batch(self, tokens: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return split_block(gather_blocks(tokens, self.next_ids(), self.seq_len))


def eval_block_ids(num_tokens: int, seq_len: int, count: int, seed: int = 0) -> np.ndarray:
    """A fixed, spread-out set of validation blocks, the same for every run with the same data."""
    num_blocks = (num_tokens - 1) // seq_len
    order = np.random.default_rng(seed).permutation(num_blocks)
    return order[: min(count, num_blocks)]
