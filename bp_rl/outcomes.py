"""What a decoded request scored: the reward definitions and the arrays agents and evaluation read.

Torch-free (numpy only), so evaluation and reporting never import the decoding stack. Where the
numbers come from is another module's business: timed decodes in a reward table
(`bp_rl.rewards`), or acceptance traces under a device profile (`bp_rl.trace_table`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

AUTOREGRESSIVE = 0  # the block-size code of the baseline: plain decoding, no drafter at all
# The default action set: the block sizes tables, traces and profiles are collected for.
DEFAULT_BLOCK_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)
REWARDS = ("tokens_per_second", "speedup", "log_speedup", "acceptance_length")
DEFAULT_REWARD = "tokens_per_second"
# Columns of one replayable repeat in `TableView.samples`.
SAMPLE_COLUMNS = ("tokens_per_second", "mean_acceptance", "new_tokens", "cycles", "decode_seconds")
TPS, ACCEPTANCE = 0, 1
# Below this share of the grid reward, best - grid is within timing noise: no gap to close.
MIN_GAP = 0.005


def request_tokens_per_second(new_tokens: int, prefill_seconds: float, decode_seconds: float) -> float:
    """New tokens / request seconds, prefill included.

    The prefill costs the same at every block size, but leaving it out would make a request that
    stops at its first token (sampled from the prefill's logits, no decode pass) near infinitely
    fast: at T=1 that happens.
    """
    seconds = prefill_seconds + decode_seconds
    return new_tokens / seconds if seconds > 0 else 0.0


def gap_closed(reward: float, grid: float, best: float) -> float | None:
    """(reward - grid) / (best - grid); None when best beats grid by under `MIN_GAP` (timing noise)."""
    gap = best - grid
    return (reward - grid) / gap if gap > MIN_GAP * abs(grid) else None


def check_reward(name: str) -> str:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid: {list(REWARDS)}")
    return name


def reward_value(name: str, tokens_per_second, ar_tokens_per_second, mean_acceptance):
    """The reward `name` of one decode (works elementwise on numpy arrays)."""
    if name == "tokens_per_second":
        return tokens_per_second
    if name == "speedup":
        return tokens_per_second / ar_tokens_per_second
    if name == "log_speedup":
        return np.log(tokens_per_second / ar_tokens_per_second)
    if name == "acceptance_length":
        return mean_acceptance
    raise ValueError(f"unknown reward {name!r}; valid: {list(REWARDS)}")



@dataclass
class TableView:
    """A table's complete prompts as arrays: prompt i, block index k (into `block_sizes`)."""

    prompt_ids: list[str]
    categories: np.ndarray  # (N,) str
    splits: np.ndarray  # (N,) str
    block_sizes: tuple[int, ...]
    feature_set: str
    observations: np.ndarray  # (N, d) float32
    samples: list[list[np.ndarray]]  # [i][k] -> (repeats, len(SAMPLE_COLUMNS)), one row per timed repeat
    ar_samples: list[np.ndarray]  # [i] -> (repeats,) autoregressive tokens/s
    simulated_under: str | None = None  # the device profile the seconds were simulated under; None: timed

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def ar_tokens_per_second(self) -> np.ndarray:
        return np.array([np.median(s) for s in self.ar_samples])

    def median(self, column: int = 0) -> np.ndarray:
        """(N, K) medians over repeats of one of `SAMPLE_COLUMNS` (default tokens/s)."""
        return np.array([[np.median(s[:, column]) for s in row] for row in self.samples])

    def rewards(self, reward: str = DEFAULT_REWARD) -> np.ndarray:
        """(N, K) reward of each prompt and block size, from the median repeat."""
        ar = self.ar_tokens_per_second[:, None]
        return reward_value(check_reward(reward), self.median(TPS), ar, self.median(ACCEPTANCE))

    def repeat_rewards(self, reward: str = DEFAULT_REWARD) -> list[list[np.ndarray]]:
        """[i][k] -> the reward of every measured repeat (what the replay environment samples from)."""
        ar = self.ar_tokens_per_second
        return [
            [reward_value(check_reward(reward), s[:, TPS], ar[i], s[:, ACCEPTANCE]) for s in row] for i, row in enumerate(self.samples)
        ]

    def best_blocks(self, reward: str = DEFAULT_REWARD) -> np.ndarray:
        """(N,) index of each prompt's best block size: the per-prompt best."""
        return self.rewards(reward).argmax(axis=1)

    def grid_block(self, reward: str = DEFAULT_REWARD) -> int:
        """Index of the best fixed block size over these prompts (the grid-searched baseline)."""
        return int(self.rewards(reward).mean(axis=0).argmax())

    def noise_ceiling(self, grid: int, reward: str = DEFAULT_REWARD) -> tuple[float | None, int] | None:
        """How much of the grid-to-best gap survives measurement noise: (gap closed, prompts used).

        Each prompt's best block is picked from one timed repeat and scored on the mean of its other
        repeats, as are grid and the per-prompt best, averaged over which repeat is held out. A policy
        that learns from one-repeat labels aims at this, not at the noise-inflated best. Uses the
        prompts with at least two repeats of every block size; None when there are none.
        """
        chosen, fixed, best, prompts = [], [], [], 0
        for row in self.repeat_rewards(reward):
            n = min(len(values) for values in row)  # repeats measured in the same pass line up by index
            if n < 2:
                continue
            prompts += 1
            values = np.stack([v[:n] for v in row])  # (K, n)
            for j in range(n):
                held_out = np.delete(values, j, axis=1).mean(axis=1)
                chosen.append(held_out[values[:, j].argmax()])
                fixed.append(held_out[grid])
                best.append(held_out.max())
        if not prompts:
            return None
        return gap_closed(np.mean(chosen), np.mean(fixed), np.mean(best)), prompts

    def subset(self, mask: np.ndarray) -> "TableView":
        index = np.flatnonzero(mask)
        return replace(
            self,
            prompt_ids=[self.prompt_ids[i] for i in index],
            categories=self.categories[index],
            splits=self.splits[index],
            observations=self.observations[index],
            samples=[self.samples[i] for i in index],
            ar_samples=[self.ar_samples[i] for i in index],
        )

    def with_blocks(self, block_sizes: Sequence[int]) -> "TableView":
        """The same prompts with only these block sizes: what a smaller action set leaves to win."""
        unknown = [b for b in block_sizes if b not in self.block_sizes]
        if unknown or not block_sizes or len(set(block_sizes)) < len(block_sizes):
            raise ValueError(f"block sizes {list(block_sizes)}: choose distinct sizes among this table's {list(self.block_sizes)}")
        index = [self.block_sizes.index(b) for b in block_sizes]
        return replace(self, block_sizes=tuple(block_sizes), samples=[[row[k] for k in index] for row in self.samples])
