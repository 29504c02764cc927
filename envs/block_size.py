"""`BlockSizeEnv`: pick a request's draft block size from its prefill, once (a contextual bandit).

`reset()` draws a prompt of the split with `self.np_random` and returns its observation;
`step(a)` decodes it at `block_sizes[a]` and ends the episode with the reward. Where the
prompts and outcomes come from is the backend's business (`envs.backends`): a measured table
replayed, acceptance traces under a device profile, or live decoding. Build one with
`make_table_env` / `make_trace_env` / `make_live_env`, or `gymnasium.make` of
`bp_rl/BlockSize-v0` / `bp_rl/BlockSizeTrace-v0` / `bp_rl/BlockSizeLive-v0`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from bp_rl.features import DEFAULT_FEATURE_SET
from bp_rl.measurement import DecodeSettings
from bp_rl.prompts import DEFAULT_SUITE, SPLITS
from bp_rl.outcomes import DEFAULT_BLOCK_SIZES, DEFAULT_REWARD, TableView, check_reward, reward_value
from bp_rl.profiles import DeviceProfile, default_profile
from bp_rl.rewards import RewardTable
from bp_rl.trace_table import SimulatedRewards, TraceTable
from envs.backends import Backend, LiveBackend, TableBackend, TraceBackend

# The environments' default data, one drafter's (v8, the newest): the pair the README's results are measured on.
DEFAULT_TABLE = "smollm2-135m-block-v8-t0-intel-f6m167"  # timed: test split only (env=table's default)
DEFAULT_TRACES = "smollm2-135m-block-v8-traces"  # the same drafter's exact traces, every split (env=trace's default)


class BlockSizeEnv(gym.Env):
    """One decision per episode: the block size for one request.

    best: a table view over the same prompts that tells each prompt's best block size and
    its reward (`info["best_block"]`, `info["best_reward"]`); None where unknown.
    obs_stats: (mean, std) to standardise observations with (training-split statistics).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        backend: Backend,
        reward: str = DEFAULT_REWARD,
        best: TableView | None = None,
        obs_stats: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.backend, self.reward_name = backend, check_reward(reward)
        self.block_sizes = tuple(backend.block_sizes)
        self.action_space = gym.spaces.Discrete(len(self.block_sizes))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (backend.observation_dim,), np.float32)
        self.obs_stats = obs_stats
        self._best = _best_lookup(best, reward) if best is not None else {}
        self._prompt: int | None = None

    @property
    def num_prompts(self) -> int:
        return len(self.backend.prompt_ids)

    def best_action(self, index: int) -> int | None:
        """The best action for prompt `index` where a table tells it (the evaluation reference), else None."""
        best = self._best.get(self.backend.prompt_ids[index])
        return None if best is None else self.block_sizes.index(best[0])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draw a prompt (or take `options["prompt_index"]`, to walk a split in order) and observe it."""
        super().reset(seed=seed)
        index = self._prompt = choose_prompt(self.np_random, self.num_prompts, options)
        observation = self.backend.observe(index, self.np_random)
        return self.normalise(observation), {"prompt_id": self.backend.prompt_ids[index]}

    def step(self, action):
        if self._prompt is None:
            raise RuntimeError("step() before reset(): each episode is one decision, call reset() first")
        check_action(self.action_space, action, f"block sizes {list(self.block_sizes)}")
        i, k = self._prompt, int(action)
        self._prompt = None
        out = self.backend.outcome(i, k, self.np_random)
        reward = float(reward_value(self.reward_name, out.tokens_per_second, out.ar_tokens_per_second, out.mean_acceptance))
        best_block, best_reward = self._best.get(self.backend.prompt_ids[i], (None, None))
        info = {
            "block_size": self.block_sizes[k],
            "new_tokens": out.new_tokens,
            "cycles": out.cycles,
            "mean_acceptance": float(out.mean_acceptance),
            "decode_seconds": float(out.decode_seconds),
            "tokens_per_second": float(out.tokens_per_second),
            "speedup": float(out.tokens_per_second / out.ar_tokens_per_second),
            "prompt_id": self.backend.prompt_ids[i],
            "category": self.backend.categories[i],
            "best_block": best_block,
            "best_reward": best_reward,
        }
        # One step ends the episode; a zero observation stands in for the (absent) next one.
        return np.zeros(self.observation_space.shape, np.float32), reward, True, False, info

    def normalise(self, observation: np.ndarray) -> np.ndarray:
        """The observation as this environment returns it (standardised when `obs_stats` is set)."""
        return standardise(observation, self.obs_stats)


def standardise(observation: np.ndarray, obs_stats: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """`observation` standardised with (mean, std) `obs_stats` (None: as is), as a fresh float32 copy: callers may keep it."""
    if obs_stats is not None:
        mean, std = obs_stats
        observation = (observation - mean) / std
    return np.array(observation, dtype=np.float32)


def check_action(space: gym.spaces.Discrete, action, meaning: str) -> None:
    """A clear error for an action outside `space`, saying what the valid ones stand for."""
    if not space.contains(action):
        raise ValueError(f"action {action!r} is outside the action space Discrete({space.n}): valid actions are 0..{space.n - 1} for {meaning}")


def choose_prompt(rng: np.random.Generator, num_prompts: int, options: dict[str, Any] | None) -> int:
    """The episode's prompt: `options["prompt_index"]` (to walk a split in order), else one drawn with `rng`."""
    index = (options or {}).get("prompt_index")
    if index is None:
        return int(rng.integers(num_prompts))
    if not 0 <= index < num_prompts:
        raise ValueError(f"prompt_index must be in [0, {num_prompts}), got {index!r}")
    return index


def _best_lookup(view: TableView, reward: str) -> dict[str, tuple[int, float]]:
    rewards = view.rewards(reward)
    best = rewards.argmax(axis=1)
    return {pid: (view.block_sizes[b], float(rewards[i, b])) for i, (pid, b) in enumerate(zip(view.prompt_ids, best))}


def observation_stats(view: TableView) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (floored, so constant features do not divide by zero)."""
    observations = view.observations.astype(np.float64)
    return observations.mean(axis=0).astype(np.float32), np.maximum(observations.std(axis=0), 1e-6).astype(np.float32)


def open_table(table: str | RewardTable | SimulatedRewards, expect: dict | None = None) -> RewardTable | SimulatedRewards:
    """A table given by name, path or already open (a timed `RewardTable`, or traces under a profile),
    checked against `expect`."""
    if isinstance(table, SimulatedRewards):
        table.traces.check(expect or {})
        return table
    opened = table if isinstance(table, RewardTable) else RewardTable.load(table)
    return opened.check(expect or {})


def make_table_env(
    table: str | RewardTable | SimulatedRewards = DEFAULT_TABLE,
    split: str = "train",
    feature_set: str = DEFAULT_FEATURE_SET,
    reward: str = DEFAULT_REWARD,
    replay: str = "sample",
    normalize_obs: bool = False,
    expect: dict | None = None,
    train_table: str | RewardTable | SimulatedRewards | None = None,
) -> BlockSizeEnv:
    """Replay `table` (a shipped name, a .sqlite path or an open table) on one split of its prompts.

    `train_table` (default: `table`) is the table whose training split gives the normalisation
    statistics: an agent trained on one table (say temperature 0) can be evaluated on another
    (say temperature 1, measured on the test split only) seeing the observations it was trained on.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    rewards = open_table(table, expect)
    view = rewards.view(feature_set, split)
    stats_table = rewards if train_table is None else open_table(train_table)
    stats = observation_stats(stats_table.view(feature_set, "train")) if normalize_obs else None
    return BlockSizeEnv(TableBackend(view, replay), reward, best=view, obs_stats=stats)


def simulated_rewards(traces: str | TraceTable | None = None, profile: str | DeviceProfile | None = None,
                      expect: dict | None = None, concurrency: int | None = None) -> SimulatedRewards:
    """A trace table (name, path or open; None: `DEFAULT_TRACES`) under a profile (name, path or loaded; None: this machine's
    shipped profile, else the closest shipped one), for requests served in batches of `concurrency`
    (None: the profile's own load, one request at a time unless it was scaled already)."""
    opened = traces if isinstance(traces, TraceTable) else TraceTable.load(traces or DEFAULT_TRACES)
    opened.check(expect or {})
    if profile is None:
        profile = default_profile(opened.meta["drafter_hash"])
    loaded = profile if isinstance(profile, DeviceProfile) else DeviceProfile.load(profile)
    return SimulatedRewards(opened, loaded if concurrency is None else loaded.at_concurrency(concurrency))


def make_trace_env(
    traces: str | TraceTable = DEFAULT_TRACES,
    profile: str | DeviceProfile | None = None,
    split: str = "train",
    feature_set: str = DEFAULT_FEATURE_SET,
    reward: str = DEFAULT_REWARD,
    normalize_obs: bool = False,
    expect: dict | None = None,
    concurrency: int | None = None,
) -> BlockSizeEnv:
    """Replay exact T=0 acceptance traces on one split, with seconds simulated under `profile`:
    deterministic and noise-free; the rewards are those of the machine the profile describes, serving
    requests in batches of `concurrency` (simulated: `DeviceProfile.at_concurrency`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    rewards = simulated_rewards(traces, profile, expect, concurrency)
    backend = TraceBackend(rewards, split, feature_set)
    stats = observation_stats(rewards.view(feature_set, "train")) if normalize_obs else None
    return BlockSizeEnv(backend, reward, best=backend.view, obs_stats=stats)


def make_live_env(
    target: str = "smollm2-135m",
    drafter: str = "default",
    split: str = "test",
    suite: str = DEFAULT_SUITE,
    block_sizes: tuple[int, ...] = DEFAULT_BLOCK_SIZES,
    feature_set: str = DEFAULT_FEATURE_SET,
    reward: str = DEFAULT_REWARD,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    table: str | RewardTable | None = None,
    normalize_obs: bool = False,
    device: str | None = None,
    max_prompts: int | None = None,
    dtype: str | None = None,
    allow_download: bool = False,
) -> BlockSizeEnv:
    """Decode for real on `split` (`max_prompts` of it, spread evenly). `table` (optional) supplies the per-prompt best
    info and the normalisation statistics. Hub ids for `target`/`drafter` only with `allow_download`."""
    from bp_rl.drafters import load_models  # loading models is slow: only live environments pay for it

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    if normalize_obs and table is None:
        raise ValueError("normalize_obs=True needs a table whose training split gives the statistics (table=...)")
    model, draft_model, _ = load_models(target, drafter, device, dtype, allow_download)
    settings = DecodeSettings(max_new_tokens=max_new_tokens, temperature=temperature)
    backend = LiveBackend(
        model, draft_model, split, suite, tuple(block_sizes), feature_set, settings, max_prompts=max_prompts
    )
    best = stats = None
    if table is not None:
        rewards = open_table(table)
        best = rewards.view(feature_set, split)
        stats = observation_stats(rewards.view(feature_set, "train")) if normalize_obs else None
    return BlockSizeEnv(backend, reward, best=best, obs_stats=stats)
