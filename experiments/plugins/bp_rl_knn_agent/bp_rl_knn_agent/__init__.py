"""k-nearest neighbours over the training prompts: pick the block size that did best among the
k training prompts whose observations are closest (cosine similarity)."""

from __future__ import annotations

import numpy as np

from agents.base import Agent, FitData


class KNNAgent(Agent):
    def __init__(self, block_sizes, observation_dim, seed=0, k: int = 10):
        super().__init__(block_sizes, observation_dim, seed)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.keys = np.zeros((0, observation_dim), np.float32)
        self.rewards = np.zeros((0, len(block_sizes)), np.float32)

    def fit(self, data: FitData) -> None:
        if data.train is None:
            raise ValueError("knn needs every training prompt's measured rewards: use a table environment")
        self.keys = _unit(data.train.observations)
        self.rewards = data.train.rewards.astype(np.float32)

    def act(self, observation, deterministic=True) -> int:
        similarity = self.keys @ _unit(np.asarray(observation, np.float32)[None])[0]
        nearest = np.argsort(-similarity)[: self.k]
        return int(self.rewards[nearest].mean(axis=0).argmax())

    def state(self) -> dict:
        return {"keys": self.keys, "rewards": self.rewards}

    def set_state(self, state: dict) -> None:
        self.keys, self.rewards = state["keys"], state["rewards"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
