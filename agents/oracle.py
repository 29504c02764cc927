"""`oracle`: the supervised BlockPilot recipe, an MLP that predicts each prompt's best block size.

It learns from the measured table (every training prompt's reward at every block size), not by
trial and error, so it is the ceiling a table-free learner is compared with. Two objectives:
- `classify`: cross-entropy against each prompt's best block size; with `gap_weighted`, a
  prompt counts in proportion to how much choosing well matters for it (best minus mean reward);
- `regress`: squared error on every block size's (standardised) reward; act by the best prediction.
Training is full-batch Adam; the weights with the best mean validation reward are kept.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from agents.base import Agent, FitData, LabelledSet, register, seed_everything

OBJECTIVES = ("classify", "regress")
LOG_EVERY = 10  # epochs


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


@register("oracle")
class OracleAgent(Agent):
    def __init__(
        self,
        block_sizes,
        observation_dim,
        seed=0,
        objective: str = "classify",
        hidden_size: int = 64,
        epochs: int = 300,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        gap_weighted: bool = False,
        patience: int = 30,
    ):
        super().__init__(block_sizes, observation_dim, seed)
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown oracle objective {objective!r}; valid: {list(OBJECTIVES)}")
        if gap_weighted and objective != "classify":
            raise ValueError("gap_weighted weights the classification loss: it needs objective='classify'")
        self.objective, self.hidden_size, self.epochs = objective, hidden_size, epochs
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.gap_weighted, self.patience = gap_weighted, patience
        self.model: nn.Sequential | None = None
        self.obs_mean = np.zeros(observation_dim, np.float32)
        self.obs_std = np.ones(observation_dim, np.float32)

    def fit(self, data: FitData) -> None:
        if data.train is None:
            raise ValueError(
                "the oracle agent learns from every prompt's measured reward at every block size: "
                "it needs a measured table (env=table), not a live environment"
            )
        seed_everything(self.seed)
        train = data.train
        self.obs_mean = train.observations.mean(axis=0).astype(np.float32)
        self.obs_std = np.maximum(train.observations.std(axis=0), 1e-6).astype(np.float32)
        self.model = mlp(self.observation_dim, self.hidden_size, self.num_actions)
        inputs, loss_of = self._inputs(train.observations), self._loss(train.rewards)
        optimiser = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)

        best_reward, best_state, epochs_since_best = -np.inf, None, 0
        for epoch in range(self.epochs):
            loss = loss_of(self.model(inputs))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

            metrics = {"train/loss": loss.item()}
            if data.val is not None:
                metrics["val/reward"] = val_reward = self.chosen_reward(data.val)
                # Small validation sets tie often: among equally good weights keep the later, better-fitted ones.
                if val_reward >= best_reward:
                    best_reward, best_state, epochs_since_best = val_reward, self._copy_weights(), 0
                else:
                    epochs_since_best += 1
            if epoch % LOG_EVERY == 0:
                data.logger.log(metrics, step=epoch)
            if epochs_since_best >= self.patience:
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)

    def act(self, observation, deterministic=True) -> int:
        return int(self._predict(np.asarray(observation)[None])[0].argmax())

    def chosen_reward(self, labelled: LabelledSet) -> float:
        """Mean reward of the block sizes this agent picks for `labelled`'s prompts (exact, from the table)."""
        return labelled.mean_reward(self._predict(labelled.observations).argmax(axis=1))

    def state(self) -> dict:
        weights = self.model.state_dict() if self.model is not None else None
        return {"model": weights, "obs_mean": self.obs_mean, "obs_std": self.obs_std}

    def set_state(self, state: dict) -> None:
        self.obs_mean, self.obs_std = state["obs_mean"], state["obs_std"]
        if state["model"] is not None:
            self.model = mlp(self.observation_dim, self.hidden_size, self.num_actions)
            self.model.load_state_dict(state["model"])

    def _inputs(self, observations: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((observations - self.obs_mean) / self.obs_std, dtype=torch.float32)

    def _predict(self, observations: np.ndarray) -> np.ndarray:
        """(N, K) scores: class logits or standardised reward predictions; higher is better either way."""
        if self.model is None:
            raise RuntimeError("oracle agent is not trained: call fit() or load a saved one")
        with torch.no_grad():
            return self.model(self._inputs(observations)).numpy()

    def _loss(self, rewards: np.ndarray):
        """The training loss as a function of the network's (N, K) output."""
        if self.objective == "regress":
            targets = torch.as_tensor((rewards - rewards.mean()) / max(rewards.std(), 1e-6), dtype=torch.float32)
            return lambda output: nn.functional.mse_loss(output, targets)
        best = torch.as_tensor(rewards.argmax(axis=1))
        weights = torch.ones(len(rewards))
        if self.gap_weighted:
            gaps = rewards.max(axis=1) - rewards.mean(axis=1)
            weights = torch.as_tensor(gaps / max(gaps.mean(), 1e-12), dtype=torch.float32)
        return lambda output: (nn.functional.cross_entropy(output, best, reduction="none") * weights).mean()

    def _copy_weights(self) -> dict:
        return {k: v.clone() for k, v in self.model.state_dict().items()}
