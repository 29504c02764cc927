"""Baselines that read no observation: `random`, `fixed` (one configured size) and `grid`
(the best fixed size on the training split: the paper's grid-searched baseline)."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from agents.base import Agent, FitData, register


@register("random")
class RandomAgent(Agent):
    """A uniformly random block size per request."""

    def __init__(self, block_sizes, observation_dim, seed=0):
        super().__init__(block_sizes, observation_dim, seed)
        self.rng = np.random.default_rng(seed)

    def fit(self, data: FitData) -> None:
        pass

    def act(self, observation, deterministic=True) -> int:
        return int(self.rng.integers(self.num_actions))


@register("fixed")
class FixedAgent(Agent):
    """Always `block_size`."""

    def __init__(self, block_sizes, observation_dim, seed=0, block_size: int = 16):
        super().__init__(block_sizes, observation_dim, seed)
        if block_size not in self.block_sizes:
            raise ValueError(f"fixed block_size {block_size!r} is not in the action set {list(self.block_sizes)}")
        self.block_size = block_size

    def fit(self, data: FitData) -> None:
        pass

    def act(self, observation, deterministic=True) -> int:
        return self.block_sizes.index(self.block_size)


@register("grid")
class GridAgent(Agent):
    """The block size with the best mean reward over the training prompts, for every request.

    From a table it reads every prompt's measured reward; on a live environment it spends the
    budget trying every size in turn and keeps the best mean.
    """

    def __init__(self, block_sizes, observation_dim, seed=0):
        super().__init__(block_sizes, observation_dim, seed)
        self.choice = 0

    def fit(self, data: FitData) -> None:
        if data.train is not None:
            mean_rewards = data.train.rewards.mean(axis=0)
        else:
            totals, counts = np.zeros(self.num_actions), np.zeros(self.num_actions)
            data.env.reset(seed=data.seed)
            for episode in tqdm(range(data.budget), desc="grid", unit="episode", leave=False):
                data.env.reset()
                action = episode % self.num_actions
                _, reward, *_ = data.env.step(action)
                totals[action] += reward
                counts[action] += 1
            mean_rewards = totals / np.maximum(counts, 1)
        self.choice = int(np.argmax(mean_rewards))
        for k, value in enumerate(mean_rewards):
            data.logger.log({"train/mean_reward": float(value), "train/block_size": self.block_sizes[k]}, step=k)

    def act(self, observation, deterministic=True) -> int:
        return self.choice

    def state(self) -> dict:
        return {"choice": self.choice}

    def set_state(self, state: dict) -> None:
        self.choice = int(state["choice"])
