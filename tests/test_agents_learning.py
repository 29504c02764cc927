"""The learning agents (oracle, linear bandits) learn a known best block size, save and load, and fail clearly."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from agents.bandits import EpsilonGreedyAgent, LinTSAgent, LinUCBAgent
from agents.base import Agent, FitData, LabelledSet, Logger
from agents.oracle import OracleAgent
from envs import make_table_env

BLOCK_SIZES = (1, 2, 4)
OBSERVATION_DIM = 24
# Arm k's reward is 50 + 10 * (ARM_WEIGHTS[k] . z + ARM_OFFSETS[k]) for a prompt's latent z ~ N(0, I_2):
# tokens/s-like numbers, and the best arm depends on the prompt.
ARM_WEIGHTS = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
ARM_OFFSETS = np.array([0.0, 0.3, -0.3])
MIXING = np.random.default_rng(99).normal(size=(2, OBSERVATION_DIM))


def synthetic_prompts(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(observations (n, d), rewards (n, K)): observations are a noisy linear image of the latent."""
    rng = np.random.default_rng(seed)
    latents = rng.normal(size=(n, 2))
    observations = latents @ MIXING + 0.05 * rng.normal(size=(n, OBSERVATION_DIM))
    rewards = 50 + 10 * (latents @ ARM_WEIGHTS.T + ARM_OFFSETS)
    return observations.astype(np.float32), rewards


class SyntheticEnv:
    """A stand-in for BlockSizeEnv over fixed prompts: same reset/step shapes and info keys; rewards are noisy."""

    def __init__(self, observations: np.ndarray, rewards: np.ndarray, noise: float = 2.0):
        self.observations, self.rewards, self.noise = observations, rewards, noise
        self.block_sizes = BLOCK_SIZES
        self.action_space = gym.spaces.Discrete(len(BLOCK_SIZES))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (observations.shape[1],), np.float32)
        self.rng = np.random.default_rng()
        self.prompt = None

    @property
    def num_prompts(self) -> int:
        return len(self.observations)

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.prompt = int(self.rng.integers(self.num_prompts))
        return self.observations[self.prompt].copy(), {"prompt_id": f"p{self.prompt}"}

    def step(self, action):
        i, k = self.prompt, int(action)
        reward = float(self.rewards[i, k] + self.noise * self.rng.normal())
        best = int(self.rewards[i].argmax())
        info = {
            "block_size": self.block_sizes[k],
            "prompt_id": f"p{i}",
            "best_block": self.block_sizes[best],
            "best_reward": float(self.rewards[i, best]),
        }
        return np.zeros(self.observation_space.shape, np.float32), reward, True, False, info


def labelled(observations: np.ndarray, rewards: np.ndarray) -> LabelledSet:
    return LabelledSet(observations, rewards, np.array(["synthetic"] * len(rewards)))


@pytest.fixture(scope="module")
def problem() -> dict:
    """Train / val / held-out test prompts of the synthetic problem."""
    splits = {name: synthetic_prompts(n, seed) for name, n, seed in [("train", 200, 0), ("val", 100, 1), ("test", 300, 2)]}
    return {name: labelled(*split) for name, split in splits.items()}


def fit_data(problem: dict, budget: int) -> FitData:
    return FitData(env=SyntheticEnv(problem["train"].observations, problem["train"].rewards), budget=budget, seed=3, train=problem["train"], val=problem["val"])


# name -> (class, settings, budget): every learner, each with small-but-sufficient training
LEARNERS = {
    "oracle-classify": (OracleAgent, {"objective": "classify"}, 0),
    "oracle-classify-gap": (OracleAgent, {"objective": "classify", "gap_weighted": True}, 0),
    "oracle-regress": (OracleAgent, {"objective": "regress"}, 0),
    # a short warm-up (4 episodes per block size): this problem's budget is small
    "egreedy": (EpsilonGreedyAgent, {"warmup": None}, 600),
    "linucb": (LinUCBAgent, {"warmup": None}, 600),
    "lints": (LinTSAgent, {"warmup": None}, 600),
}


def build(name: str, seed: int = 0) -> Agent:
    cls, settings, _ = LEARNERS[name]
    return cls(BLOCK_SIZES, OBSERVATION_DIM, seed, **settings)


@pytest.fixture(scope="module")
def trained(problem) -> dict[str, Agent]:
    agents = {}
    for name, (_, _, budget) in LEARNERS.items():
        agents[name] = build(name)
        agents[name].fit(fit_data(problem, budget))
    return agents


def actions(agent: Agent, observations: np.ndarray) -> np.ndarray:
    return np.array([agent.act(o) for o in observations])


@pytest.mark.parametrize("name", LEARNERS)
def test_learns_the_best_block_size_on_held_out_prompts(name, trained, problem):
    test = problem["test"]
    chosen = test.rewards[np.arange(len(test.rewards)), actions(trained[name], test.observations)].mean()
    random, best = test.rewards.mean(), test.rewards.max(axis=1).mean()
    gap_closed = (chosen - random) / (best - random)
    assert gap_closed > 0.9, f"{name}: mean reward {chosen:.2f}, random {random:.2f}, best {best:.2f}"
    if hasattr(trained[name], "regret_curve"):  # and it learned while playing: far less regret than random play
        train = problem["train"]
        episodes, regret = trained[name].regret_curve[-1]
        assert regret < 0.25 * episodes * (train.rewards.max(axis=1).mean() - train.rewards.mean())


@pytest.mark.parametrize("name", LEARNERS)
def test_save_and_load_give_the_same_actions(name, trained, problem, tmp_path):
    observations = problem["test"].observations
    loaded = Agent.load(trained[name].save(tmp_path / name), BLOCK_SIZES, OBSERVATION_DIM)
    assert type(loaded) is type(trained[name]) and loaded.config() == trained[name].config()
    np.testing.assert_array_equal(actions(loaded, observations), actions(trained[name], observations))


def test_oracle_logs_its_curves_and_keeps_the_best_validation_weights(problem):
    agent, logger = OracleAgent(BLOCK_SIZES, OBSERVATION_DIM, epochs=60, patience=1000), Logger()
    agent.fit(FitData(env=None, budget=0, train=problem["train"], val=problem["val"], logger=logger))
    assert [row["step"] for row in logger.history] == [0, 10, 20, 30, 40, 50]
    assert all({"train/loss", "val/reward"} <= set(row) for row in logger.history)
    assert agent.chosen_reward(problem["val"]) >= max(row["val/reward"] for row in logger.history)


def test_bad_settings_fail_clearly(problem):
    with pytest.raises(ValueError, match=r"unknown oracle objective 'nope'.*\['classify', 'regress'\]"):
        OracleAgent(BLOCK_SIZES, OBSERVATION_DIM, objective="nope")
    with pytest.raises(ValueError, match="gap_weighted.*classify"):
        OracleAgent(BLOCK_SIZES, OBSERVATION_DIM, objective="regress", gap_weighted=True)
    with pytest.raises(ValueError, match=r"measured table \(env=table\)"):
        OracleAgent(BLOCK_SIZES, OBSERVATION_DIM).fit(FitData(env=None, budget=100, train=None))
    with pytest.raises(ValueError, match="ridge > 0"):
        LinUCBAgent(BLOCK_SIZES, OBSERVATION_DIM, ridge=0.0)
    with pytest.raises(RuntimeError, match="not trained"):
        LinTSAgent(BLOCK_SIZES, OBSERVATION_DIM).act(problem["test"].observations[0])


@pytest.mark.parametrize("cls", [EpsilonGreedyAgent, LinUCBAgent, LinTSAgent])
def test_bandits_on_the_real_table_env_record_their_regret_curve(cls, tiny_table_path):
    # Median replay: every reward is a measured median, so no episode beats the per-prompt best.
    env = make_table_env(str(tiny_table_path), split="train", feature_set="last_hidden+logit_stats", normalize_obs=True, replay="median")
    curves = []
    for _ in range(2):
        agent, logger = cls(env.block_sizes, env.observation_space.shape[0], seed=1), Logger()
        agent.fit(FitData(env=env, budget=250, seed=5, logger=logger))
        curves.append(agent.regret_curve)
    episodes, regret = zip(*curves[0])
    assert list(episodes) == list(range(2, 251, 2))  # logged every budget // 100 = 2 episodes
    assert all(np.diff(regret) >= -1e-9) and regret[-1] > 0
    assert curves[0] == curves[1]  # seeded: the same run twice
    assert [row["train/regret"] for row in logger.history] == list(regret)
    assert all({"train/reward", "train/episodes"} <= set(row) for row in logger.history)
    assert agent.act(env.reset()[0]) in range(len(env.block_sizes))
