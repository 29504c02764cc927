"""`ppo`: stable-baselines3 PPO on `BlockSizeEnv`, where every episode is one decision, or on
`BlockScheduleEnv`, a decision per cycle.

With one-step episodes there is nothing to bootstrap, so `gamma=0` (the default) and the advantage
is just reward minus the value baseline; PPO then behaves like a policy-gradient contextual bandit
with a learned baseline. Per cycle, `gamma=1` makes the return the episode's whole reward (the
share of decode time saved), so a cycle is credited with what it leaves to the next ones. Rewards are normalised (VecNormalize) because tokens/s is in the
tens; observations should come normalised from the environment (`normalize_obs`). The best
policy by validation reward (exact, from the table) is kept.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter
from stable_baselines3.common.logger import Logger as SB3Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from tqdm import tqdm

from agents.base import Agent, FitData, LabelledSet, Logger, register


@register("ppo")
class PPOAgent(Agent):
    def __init__(
        self,
        block_sizes,
        observation_dim,
        seed=0,
        learning_rate: float = 3e-4,
        n_steps: int = 256,
        batch_size: int = 64,
        n_epochs: int = 10,
        ent_coef: float = 0.01,
        net_arch: tuple[int, ...] = (64, 64),
        normalize_reward: bool = True,
        eval_every: int = 1024,
        gamma: float = 0.0,
        gae_lambda: float = 1.0,
    ):
        super().__init__(block_sizes, observation_dim, seed)
        self.learning_rate, self.n_steps, self.batch_size, self.n_epochs = learning_rate, n_steps, batch_size, n_epochs
        self.ent_coef, self.net_arch = ent_coef, tuple(net_arch)
        self.normalize_reward, self.eval_every = normalize_reward, eval_every
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.policy: ActorCriticPolicy | None = None

    def fit(self, data: FitData) -> None:
        env = DummyVecEnv([lambda: data.env])
        if self.normalize_reward:
            env = VecNormalize(env, norm_obs=False, norm_reward=True, gamma=self.gamma)
        model = PPO(
            "MlpPolicy",
            env,
            learning_rate=self.learning_rate,
            n_steps=self.n_steps,
            batch_size=self.batch_size,
            n_epochs=self.n_epochs,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            ent_coef=self.ent_coef,
            policy_kwargs={"net_arch": list(self.net_arch)},
            seed=self.seed,
            device="cpu",
        )
        model.set_logger(SB3Logger(folder=None, output_formats=[_ForwardToLogger(data.logger)]))
        data.env.reset(seed=data.seed)
        callback = _KeepBestOnValidation(data.val, self.eval_every, data.logger, data.budget)
        model.learn(total_timesteps=data.budget, callback=callback)
        if callback.best_state is not None:
            model.policy.load_state_dict(callback.best_state)
        self.policy = model.policy

    def act(self, observation, deterministic=True) -> int:
        if self.policy is None:
            raise RuntimeError("ppo agent is not trained: call fit() or load a saved one")
        action, _ = self.policy.predict(np.asarray(observation, dtype=np.float32), deterministic=deterministic)
        return int(action)

    def state(self) -> dict:
        return {"policy": self.policy.state_dict() if self.policy is not None else None}

    def set_state(self, state: dict) -> None:
        if state["policy"] is None:
            return
        self.policy = ActorCriticPolicy(
            spaces.Box(-np.inf, np.inf, (self.observation_dim,), np.float32),
            spaces.Discrete(self.num_actions),
            lr_schedule=lambda _: 0.0,
            net_arch=list(self.net_arch),
        )
        self.policy.load_state_dict(state["policy"])
        self.policy.set_training_mode(False)


class _KeepBestOnValidation(BaseCallback):
    """Every `every` steps: the greedy policy's mean validation reward (exact, from the table); keeps the best."""

    def __init__(self, val: LabelledSet | None, every: int, logger: Logger, total: int):
        super().__init__()
        self.val, self.every, self.out = val, every, logger
        self.best_reward, self.best_state = -np.inf, None
        self.bar = tqdm(total=total, desc="ppo", unit="episode", leave=False)

    def _on_step(self) -> bool:
        self.bar.update(1)
        if self.n_calls % self.every == 0:
            self._validate()
        return True

    def _on_training_end(self) -> None:
        self._validate()
        self.bar.close()

    def _validate(self) -> None:
        if self.val is None:
            return
        actions, _ = self.model.policy.predict(self.val.observations, deterministic=True)
        reward = self.val.mean_reward(actions)
        self.out.log({"val/reward": reward}, step=self.num_timesteps)
        if reward > self.best_reward:
            self.best_reward = reward
            self.best_state = {k: v.clone() for k, v in self.model.policy.state_dict().items()}


class _ForwardToLogger(KVWriter):
    """Sends SB3's own metrics (train/approx_kl, rollout/ep_rew_mean, ...) to the agent's logger."""

    def __init__(self, logger: Logger):
        self.out = logger

    def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
        numbers = {k: float(v) for k, v in key_values.items() if isinstance(v, (int, float, np.number, torch.Tensor))}
        self.out.log(numbers, step=step)

    def close(self) -> None:
        pass
