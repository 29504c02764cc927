"""Contextual linear bandits trained online on `BlockSizeEnv`: `egreedy`, `linucb`, `lints`.

Every arm (block size) has its own ridge regression of reward on context features; the three
agents differ only in how they pick an arm while learning, and all act greedily afterwards.

Observations are ~580-dim and a split has a few hundred prompts, so the context is not the raw
observation: the first `warmup` episodes try the arms in turn, their observations fit a PCA
(standardise, keep the top `pca_dim` components, each scaled to unit variance) and their
rewards fix the reward scale; then those episodes are replayed into the regressions. A constant
feature is appended so each arm also learns its mean reward.

Per arm k: A_k = ridge * I + sum x x^T (kept as its inverse, updated by Sherman-Morrison),
b_k = sum r x, theta_k = A_k^-1 b_k.

The class defaults explore as a regret-minimising bandit should. `experiments/run.py` scores
the greedy policy after training instead (a pure-exploration question), and there the widest
exploration wins: an arm the learner stops trying early keeps a poor regression for the
contexts that need it. Its configs (`experiments/conf/agent/`) carry the wide settings chosen
on the val split.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
from tqdm import tqdm

from agents.base import Agent, FitData, register


def pca_projection(standardised: np.ndarray, dim: int) -> np.ndarray:
    """(d, p) matrix onto the top p <= dim principal components of centred rows, scaled to unit variance.

    Directions with (numerically) no variance are dropped: with fewer samples than dimensions
    the SVD fills them with arbitrary vectors.
    """
    _, singular, directions = np.linalg.svd(standardised, full_matrices=False)
    keep = singular[:dim] > 1e-6 * singular[0]
    return directions[:dim][keep].T / (singular[:dim][keep] / np.sqrt(len(standardised)))


class LinearBandit(Agent):
    """Per-arm ridge regression on PCA features; subclasses choose the arm to try while learning."""

    def __init__(self, block_sizes, observation_dim, seed=0, pca_dim: int = 64, ridge: float = 1.0, warmup: int | None = 256):
        super().__init__(block_sizes, observation_dim, seed)
        if pca_dim < 1 or ridge <= 0 or (warmup is not None and warmup < 1):
            raise ValueError(
                f"{self.name} needs pca_dim >= 1, ridge > 0 and warmup >= 1 (or None), "
                f"got pca_dim={pca_dim!r}, ridge={ridge!r}, warmup={warmup!r}"
            )
        self.pca_dim, self.ridge, self.warmup = pca_dim, ridge, warmup
        self.regret_curve: list[tuple[int, float]] = []  # (episodes so far, cumulative regret): sample efficiency
        self.obs_mean: np.ndarray | None = None
        self.obs_std: np.ndarray | None = None
        self.projection: np.ndarray | None = None  # (observation_dim, p)
        self.reward_mean, self.reward_std = 0.0, 1.0
        self.a_inv: np.ndarray | None = None  # (K, p + 1, p + 1)
        self.b: np.ndarray | None = None  # (K, p + 1)

    @abstractmethod
    def explore(self, x: np.ndarray, progress: float, rng: np.random.Generator) -> int:
        """The arm to try for features `x`; `progress` is the fraction of the budget spent."""

    def fit(self, data: FitData) -> None:
        if data.budget < 1:
            raise ValueError(f"{self.name} learns online: it needs a budget of at least 1 episode, got {data.budget}")
        env, rng = data.env, np.random.default_rng(self.seed)
        warmup = min(self.num_warmup, data.budget)
        log_every = max(1, data.budget // 100)
        env.reset(seed=data.seed)
        warm_episodes, window, regret = [], [], None
        self.regret_curve = []
        for episode in tqdm(range(data.budget), desc=self.name, unit="episode", leave=False, mininterval=1):
            observation, _ = env.reset()
            if episode < warmup:
                action = episode % self.num_actions
            else:
                x = self.features(observation)
                action = self.explore(x, episode / data.budget, rng)
            _, reward, *_, info = env.step(action)

            if episode < warmup:
                warm_episodes.append((observation, action, reward))
                if episode == warmup - 1:
                    self._start(warm_episodes)
            else:
                self._update(x, action, reward)

            window.append(reward)
            if info["best_reward"] is not None:
                regret = (regret or 0.0) + info["best_reward"] - reward
            if (episode + 1) % log_every == 0 or episode + 1 == data.budget:
                metrics = {"train/reward": float(np.mean(window)), "train/episodes": episode + 1}
                if regret is not None:
                    metrics["train/regret"] = regret
                    self.regret_curve.append((episode + 1, regret))
                data.logger.log(metrics, step=episode + 1)
                window = []

    def act(self, observation, deterministic=True) -> int:
        x = self.features(observation)
        return int(np.argmax(self.thetas() @ x))

    @property
    def num_warmup(self) -> int:
        return 4 * self.num_actions if self.warmup is None else self.warmup

    def features(self, observation: np.ndarray) -> np.ndarray:
        """The regression's context: PCA coordinates of the standardised observation, then a constant 1."""
        if self.projection is None:
            raise RuntimeError(f"{self.name} agent is not trained: call fit() or load a saved one")
        components = ((observation - self.obs_mean) / self.obs_std) @ self.projection
        return np.append(components, 1.0)

    def thetas(self) -> np.ndarray:
        """(K, p + 1) ridge estimate of every arm's reward weights."""
        return np.einsum("kij,kj->ki", self.a_inv, self.b)

    def score_widths(self, x: np.ndarray) -> np.ndarray:
        """(K,) sqrt(x^T A_k^-1 x): how uncertain each arm's score theta_k.x is, in units of the reward noise."""
        return np.sqrt(np.einsum("i,kij,j->k", x, self.a_inv, x))

    def state(self) -> dict:
        names = ("obs_mean", "obs_std", "projection", "reward_mean", "reward_std", "a_inv", "b")
        return {name: getattr(self, name) for name in names}

    def set_state(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def _start(self, episodes: list[tuple[np.ndarray, int, float]]) -> None:
        """After the warm-up: fit the PCA and the reward scale, then learn from the warm-up episodes."""
        observations = np.stack([o for o, _, _ in episodes]).astype(np.float64)
        rewards = np.array([r for _, _, r in episodes])
        self.obs_mean, self.obs_std = observations.mean(axis=0), np.maximum(observations.std(axis=0), 1e-6)
        self.projection = pca_projection((observations - self.obs_mean) / self.obs_std, self.pca_dim)
        self.reward_mean, self.reward_std = float(rewards.mean()), max(float(rewards.std()), 1e-6)
        dim = self.projection.shape[1] + 1
        self.a_inv = np.tile(np.eye(dim) / self.ridge, (self.num_actions, 1, 1))
        self.b = np.zeros((self.num_actions, dim))
        for observation, action, reward in episodes:
            self._update(self.features(observation), action, reward)

    def _update(self, x: np.ndarray, action: int, reward: float) -> None:
        """Add (x, reward) to arm `action`'s regression; Sherman-Morrison keeps A^-1 without inverting."""
        a_inv_x = self.a_inv[action] @ x
        self.a_inv[action] -= np.outer(a_inv_x, a_inv_x) / (1.0 + x @ a_inv_x)
        self.b[action] += (reward - self.reward_mean) / self.reward_std * x


@register("egreedy")
class EpsilonGreedyAgent(LinearBandit):
    """A random arm with probability epsilon (decaying linearly to `epsilon_final` over the budget), else the greedy one."""

    def __init__(self, *args, epsilon: float = 0.1, epsilon_final: float = 0.01, **kwargs):
        super().__init__(*args, **kwargs)
        self.epsilon, self.epsilon_final = epsilon, epsilon_final

    def explore(self, x, progress, rng) -> int:
        epsilon = self.epsilon + (self.epsilon_final - self.epsilon) * progress
        if rng.random() < epsilon:
            return int(rng.integers(self.num_actions))
        return int(np.argmax(self.thetas() @ x))


@register("linucb")
class LinUCBAgent(LinearBandit):
    """The arm with the highest upper confidence bound theta.x + alpha * sqrt(x^T A^-1 x)."""

    def __init__(self, *args, alpha: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = alpha

    def explore(self, x, progress, rng) -> int:
        return int(np.argmax(self.thetas() @ x + self.alpha * self.score_widths(x)))


@register("lints")
class LinTSAgent(LinearBandit):
    """Thompson sampling: the best arm under weights drawn from N(theta, v^2 A^-1)."""

    def __init__(self, *args, v: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.v = v

    def explore(self, x, progress, rng) -> int:
        # Only the score theta~.x matters, and it is N(theta.x, v^2 x^T A^-1 x) per arm: sampling that
        # scalar is the same draw as sampling theta~, without a Cholesky per arm per episode.
        noise = self.v * self.score_widths(x) * rng.standard_normal(self.num_actions)
        return int(np.argmax(self.thetas() @ x + noise))
