"""`BlockScheduleEnv`: decide every cycle of a request, not once per request.

One episode is one request. `reset()` prefills it and returns its observation; each `step(a)` runs
one draft-verify cycle with action `actions[a]`, a (draft block, verify count) pair, until the
request ends. Three action sets (`bp_rl.schedules.action_set`):

- `block`: a block size per cycle, verified whole;
- `block_verify`: a block size and how many of its tokens the target verifies (DFlash's verify budget);
- `verify`: the drafter drafts the largest block first, and the action is the verify count, seen the draft.

Observation: the request's prefill features, then the decode state: tokens committed / budget; the
last `history` cycles' (block, verify count, committed), each / the largest block (zeros before the
first); the newest draft's top-1 probability per slot (the current draft under `verify`, else the
previous cycle's), zero-padded; and their running product summed (the draft's expected accepted
length) / (largest block - 1). Under load drawn per episode (`concurrency` a list), last: log2 of the
episode's concurrency / log2 of the largest.

Load (`concurrency`, trace backend only; None: the profile's own, 1 unless scaled already): a request
served in a batch of B concurrent requests pays the batch's forward for every pass
(`DeviceProfile.at_concurrency`), its autoregressive yardstick too.
SIMULATED: the batch's other requests are assumed to verify as many tokens as this one.

Reward of a cycle: (committed x s - cycle seconds) / (autoregressive decode seconds of the request),
where s is the request's autoregressive seconds per token. The return is 1 - decode seconds / AR decode
seconds when both decodes commit the same tokens (always at T=0): the share of decode time saved, a
monotone function of the request's tokens/s. The final `info` holds the request's tokens/s and speedup,
as `BlockSizeEnv` reports them, so per-request and per-cycle policies are scored on the same numbers.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from bp_rl.features import DEFAULT_FEATURE_SET
from bp_rl.measurement import DecodeSettings
from bp_rl.outcomes import request_tokens_per_second
from bp_rl.profiles import DeviceProfile
from bp_rl.prompts import SPLITS
from bp_rl.schedules import action_set
from bp_rl.traces import Cycle, CycleState
from envs.backends import CycleBackend, CycleRequest, LiveBackend, TraceBackend
from envs.block_size import DEFAULT_TRACES, check_action, choose_prompt, observation_stats, simulated_rewards, standardise


class BlockScheduleEnv(gym.Env):
    """A request per episode, a cycle per step."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        backend: CycleBackend,
        actions: str = "block",
        history: int = 4,
        obs_stats: tuple[np.ndarray, np.ndarray] | None = None,
        concurrency: int | Sequence[int] | None = None,
        draft_block: int | None = None,
    ):
        self.backend, self.action_set_name, self.history_length = backend, actions, history
        self.concurrencies = (concurrency,) if concurrency is None or isinstance(concurrency, int) else tuple(concurrency)
        if not self.concurrencies:
            raise ValueError("concurrency: give a batch size or a non-empty list to draw one from per episode")
        for load in self.concurrencies:
            backend.check_concurrency(load)
        self.block_sizes = tuple(backend.block_sizes)
        self.largest = max(backend.block_sizes)
        self.drafts_first = actions == "verify"
        # the block a `verify` cycle drafts first: the largest by default; a smaller one drafts cheaper
        self.draft_block = self.largest if draft_block is None else draft_block
        if draft_block is not None and (not self.drafts_first or draft_block not in self.block_sizes):
            raise ValueError(f"draft_block {draft_block!r} needs actions='verify' (got {actions!r}) and one of the block sizes {list(self.block_sizes)}")
        self.actions = action_set(actions, tuple(b for b in self.block_sizes if b <= self.draft_block))
        self.action_space = gym.spaces.Discrete(len(self.actions))
        self.drawn_load = len(self.concurrencies) > 1  # shown in the observation only when it varies
        self.state_dim = 1 + 3 * history + (self.largest - 1) + 1 + self.drawn_load
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (backend.observation_dim + self.state_dim,), np.float32)
        self.obs_stats = obs_stats
        self._request: CycleRequest | None = None

    @property
    def num_prompts(self) -> int:
        return len(self.backend.prompt_ids)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draw a prompt (or take `options["prompt_index"]`), prefill it and observe it."""
        super().reset(seed=seed)
        index = self.prompt_index = choose_prompt(self.np_random, self.num_prompts, options)
        self.concurrency = self.concurrencies[int(self.np_random.integers(len(self.concurrencies)))] if self.drawn_load else self.concurrencies[0]
        prefill, self._request = self.backend.begin(index, self.np_random, self.concurrency)
        self._prefill = standardise(prefill, self.obs_stats)
        self.state = CycleState(committed=1, budget=self.backend.max_new_tokens - 1)
        self._seconds = 0.0
        self._draft_if_first()
        return self._observe(), {"prompt_id": self.backend.prompt_ids[index], "cycle_state": self.state}

    def step(self, action):
        if self._request is None:
            raise RuntimeError("step() before reset(), or after the request ended: call reset()")
        check_action(self.action_space, action, f"(block, verify) {self.actions}")
        block, verify = self.actions[int(action)]
        request = self._request
        reward, committed, seconds = 0.0, 0, 0.0
        if not request.done:  # done already: a request whose prefill token ended it has no cycle to run
            confidence = self.state.draft if self.drafts_first else request.draft(block)
            committed, seconds = request.verify(verify)
            self._seconds += seconds
            self.state.record(Cycle(block, verify, committed, tuple(confidence)))
            # the autoregressive decode's seconds per token its cycles commit (the prefill commits the first);
            # floored: above T=0 a live AR decode may have ended at its first token
            ar_seconds = max(request.ar_decode_seconds, 1e-9)
            seconds_per_token = ar_seconds / max(1, request.ar_new_tokens - 1)
            reward = (committed * seconds_per_token - seconds) / ar_seconds
        info: dict[str, Any] = {"block_size": block, "verify_count": verify, "committed": committed, "cycle_seconds": seconds,
                                "cycle_state": self.state}
        if request.done:
            self._request = None
            info.update(self._episode_info(request))
        else:
            self._draft_if_first()
        return self._observe(), float(reward), request.done, False, info

    # ---- helpers ---------------------------------------------------------------------------
    def _draft_if_first(self) -> None:
        """Under the `verify` action set, the cycle's draft comes before the decision."""
        if self.drafts_first and self._request is not None and not self._request.done:
            self.state.draft = self._request.draft(self.draft_block)
            self.state.draft_entropy = self._request.draft_entropy

    def _observe(self) -> np.ndarray:
        state = np.zeros(self.state_dim, np.float32)
        state[0] = self.state.committed / self.backend.max_new_tokens
        for slot, cycle in enumerate(reversed(self.state.history[-self.history_length :])):
            state[1 + 3 * slot : 4 + 3 * slot] = np.array([cycle.block, cycle.verify, cycle.committed]) / self.largest
        newest = (self.state.draft or ()) if self.drafts_first else (self.state.history[-1].confidence if self.state.history else ())
        start = 1 + 3 * self.history_length
        state[start : start + len(newest)] = newest
        summary = -1 - self.drawn_load
        state[summary] = np.cumprod(newest).sum() / (self.largest - 1) if len(newest) else 0.0
        if self.drawn_load:
            state[-1] = np.log2(self.concurrency) / max(1.0, np.log2(max(self.concurrencies)))
        return np.concatenate([self._prefill, state])

    def _episode_info(self, request: CycleRequest) -> dict[str, Any]:
        new_tokens = self.state.committed
        cycles = self.state.history
        tokens_per_second = request_tokens_per_second(new_tokens, request.prefill_seconds, self._seconds)
        ar_tokens_per_second = request_tokens_per_second(request.ar_new_tokens, request.prefill_seconds, request.ar_decode_seconds)
        return {
            "prompt_id": self.backend.prompt_ids[self.prompt_index],
            "category": self.backend.categories[self.prompt_index],
            "new_tokens": new_tokens,
            "concurrency": request.concurrency,
            "cycles": len(cycles),
            "mean_acceptance": new_tokens / len(cycles) if cycles else 0.0,  # the prefill's token has no cycle
            "decode_seconds": self._seconds,
            "tokens_per_second": tokens_per_second,
            "speedup": tokens_per_second / ar_tokens_per_second,
            "block_sizes": [c.block for c in cycles],
            "verify_counts": [c.verify for c in cycles],
            "token_ids": request.token_ids,
            "best_block": None,  # a per-cycle env has no per-prompt best action
            "best_reward": None,
        }


class CyclesAsEpisodes(gym.Wrapper):
    """Each cycle of a `BlockScheduleEnv` as a one-step episode rewarded with that cycle's reward, so
    every per-request agent (the bandits, PPO with gamma 0) learns per-cycle decisions unchanged:
    myopically, each cycle for the time it saves. `reset` goes on with the request in flight."""

    def __init__(self, env: BlockScheduleEnv):
        super().__init__(env)
        self._next: tuple[np.ndarray, dict] | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self._next is None or seed is not None or options is not None:
            self._next = self.env.reset(seed=seed, options=options)
        return self._next

    def step(self, action):
        observation, reward, done, truncated, info = self.env.step(action)
        schedule = self.unwrapped
        self._next = None if done else (observation, {"prompt_id": schedule.backend.prompt_ids[schedule.prompt_index]})
        return observation, reward, True, truncated, {**info, "best_reward": None, "best_block": None}


def make_schedule_env(
    traces: str = DEFAULT_TRACES,
    profile: str | DeviceProfile | None = None,
    split: str = "train",
    actions: str = "block",
    feature_set: str = DEFAULT_FEATURE_SET,
    history: int = 4,
    normalize_obs: bool = False,
    expect: dict | None = None,
    concurrency: int | Sequence[int] | None = None,
    draft_block: int | None = None,
) -> BlockScheduleEnv:
    """Per-cycle decisions on exact T=0 traces of one split, seconds simulated under `profile` (None:
    this machine's shipped profile, else the closest), at `concurrency` (a batch size, or a list to
    draw one from per episode); under `actions="verify"` each cycle drafts `draft_block` first (None: the largest)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    rewards = simulated_rewards(traces, profile, expect)
    stats = observation_stats(rewards.view(feature_set, "train")) if normalize_obs else None
    return BlockScheduleEnv(TraceBackend(rewards, split, feature_set), actions, history, stats, concurrency, draft_block)


def make_live_schedule_env(
    target: str = "smollm2-135m",
    drafter: str = "default",
    split: str = "test",
    actions: str = "block",
    feature_set: str = DEFAULT_FEATURE_SET,
    history: int = 4,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    device: str | None = None,
    max_prompts: int | None = None,
    stats_table=None,
    concurrency: int | None = None,
    dtype: str | None = None,
    allow_download: bool = False,
) -> BlockScheduleEnv:
    """Per-cycle decisions decoded for real (each half-cycle timed). `stats_table` (optional: a reward
    table, or traces under a profile) gives the training split's observation statistics. Hub ids for
    `target`/`drafter` only with `allow_download`."""
    from bp_rl.drafters import load_models  # loading models is slow: only live environments pay for it

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    model, draft_model, _ = load_models(target, drafter, device, dtype, allow_download)
    settings = DecodeSettings(max_new_tokens=max_new_tokens, temperature=temperature)
    backend = LiveBackend(model, draft_model, split, feature_set=feature_set, settings=settings, max_prompts=max_prompts)
    stats = observation_stats(stats_table.view(feature_set, "train")) if stats_table is not None else None
    return BlockScheduleEnv(backend, actions, history, stats, concurrency)

