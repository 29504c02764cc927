"""BlockSizeEnv over a replayed table (fast) and live decoding (real model, marked)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers the ids)
from bp_rl.rewards import RewardTable
from envs import make_table_env, observation_stats

FEATURES = "last_hidden+logit_stats"


@pytest.fixture
def env(tiny_table_path):
    return make_table_env(str(tiny_table_path), split="train", feature_set=FEATURES)


def test_passes_gymnasium_and_sb3_checkers(env):
    check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_one_decision_per_episode_with_the_measured_reward(tiny_table_path):
    env = make_table_env(str(tiny_table_path), split="test", feature_set=FEATURES, replay="median", reward="speedup")
    view = RewardTable.load(tiny_table_path).view(FEATURES, "test")
    for i in range(len(view)):
        obs, info = env.reset(options={"prompt_index": i})
        np.testing.assert_array_equal(obs, view.observations[i])
        _, reward, terminated, truncated, info = env.step(2)
        assert terminated and not truncated
        assert reward == pytest.approx(view.rewards("speedup")[i, 2])
        assert info["block_size"] == view.block_sizes[2] and info["prompt_id"] == view.prompt_ids[i]
        assert info["best_block"] == view.block_sizes[view.best_blocks("speedup")[i]]
        assert info["best_reward"] == pytest.approx(view.rewards("speedup")[i].max())
        assert {"new_tokens", "cycles", "mean_acceptance", "decode_seconds", "tokens_per_second", "category"} <= set(info)


def test_sampled_replay_is_a_measured_repeat_and_deterministic_under_a_seed(tiny_table_path):
    env = make_table_env(str(tiny_table_path), split="test", feature_set=FEATURES)
    view = RewardTable.load(tiny_table_path).view(FEATURES, "test")
    episodes = []
    for seed in (0, 0, 1):
        env.reset(seed=seed)
        rewards = []
        for _ in range(20):
            _, info = env.reset()
            _, reward, *_ = env.step(0)
            i = view.prompt_ids.index(info["prompt_id"])
            assert reward in view.samples[i][0][:, 0]
            rewards.append(reward)
        episodes.append(rewards)
    assert episodes[0] == episodes[1] and episodes[0] != episodes[2]


def test_registered_ids_and_normalisation(tiny_table_path):
    env = gym.make("bp_rl/BlockSize-v0", table=str(tiny_table_path), feature_set=FEATURES, normalize_obs=True)
    train = RewardTable.load(tiny_table_path).view(FEATURES, "train")
    obs, _ = env.reset(seed=0)
    mean, std = observation_stats(train)
    assert np.abs(obs).max() < 10 and obs.shape == mean.shape
    assert gym.spec("bp_rl/BlockSizeLive-v0").nondeterministic


def test_bad_input_fails_with_the_valid_choices(env, tiny_table_path):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 7 is outside the action space Discrete\(3\).*\[1, 2, 4\]"):
        env.step(7)
    env.step(0)  # a bad action does not use up the episode; a good one ends it
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    for kwargs, message in [
        ({"split": "dev"}, "unknown split 'dev'"),
        ({"reward": "fast"}, "unknown reward 'fast'"),
        ({"replay": "mean"}, "unknown replay mode 'mean'"),
        ({"feature_set": "mean_hidden"}, "not in"),
        ({"expect": {"target": "smollm2-135m"}}, "target: table has 'tiny-llama'"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_table_env(str(tiny_table_path), **kwargs)
    with pytest.raises(gym.error.Error):
        gym.make("bp_rl/BlockSize-v9")


@pytest.mark.real_model
def test_live_env_decodes_for_real(smollm2):
    env = gym.make(
        "bp_rl/BlockSizeLive-v0", drafter="prompt-lookup", block_sizes=(1, 4), max_new_tokens=8, split="test"
    ).unwrapped
    check_env(env, skip_render_check=True)  # its spec says nondeterministic: rewards are timings
    obs, _ = env.reset(seed=0)
    assert obs.shape == (smollm2.hidden_size + 3 + 1,)
    _, reward, terminated, _, info = env.step(1)
    assert terminated and info["block_size"] == 4 and reward == pytest.approx(info["tokens_per_second"])
    assert 1 <= info["new_tokens"] <= 8 and info["speedup"] > 0 and info["best_block"] is None
