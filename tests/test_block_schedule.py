"""`BlockScheduleEnv`: a decision per cycle, on traces (exact replay under a profile) and live."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers the ids)
from bp_rl import ContinuationDrafter, SpeculativeDecoder, speculative_generate
from bp_rl.profiles import simulate
from envs import make_schedule_env, make_trace_env
from envs.backends import LiveRequest
from envs.block_schedule import BlockScheduleEnv

FEATURES = "last_hidden+logit_stats"


@pytest.fixture()
def make(tiny_traces_path, tiny_profile_path):
    def build(actions="block", split="train", **kwargs):
        return make_schedule_env(str(tiny_traces_path), str(tiny_profile_path), split, actions, FEATURES, **kwargs)

    return build


def run_episode(env, choose, index):
    obs, info = env.reset(options={"prompt_index": index})
    total, done = 0.0, False
    while not done:
        obs, reward, done, _, info = env.step(choose(obs, info))
        total += reward
    return total, info


@pytest.mark.parametrize("actions", ["block", "block_verify", "verify"])
def test_the_env_passes_both_checkers_and_is_registered(make, actions, tiny_traces_path, tiny_profile_path):
    env = make(actions)
    check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    made = gym.make("bp_rl/BlockSchedule-v0", traces=str(tiny_traces_path), profile=str(tiny_profile_path), split="test",
                    actions=actions, feature_set=FEATURES)
    assert made.unwrapped.actions == env.actions and made.unwrapped.num_prompts == 3


def test_a_fixed_block_through_the_per_cycle_env_scores_as_the_per_request_env(make, tiny_traces_path, tiny_profile_path):
    """The same request at the same fixed block: the same tokens/s in both envs, and a return of
    1 - decode seconds / autoregressive decode seconds."""
    per_cycle = make("block", split="test")
    per_request = make_trace_env(str(tiny_traces_path), str(tiny_profile_path), "test", FEATURES, reward="tokens_per_second")
    backend = per_cycle.backend
    for index in range(per_cycle.num_prompts):
        trace = backend.trace(index)
        ar = simulate(trace, backend.rewards.profile, 1)
        for k, block in enumerate(backend.block_sizes):
            returned, info = run_episode(per_cycle, lambda obs, info: k, index)
            per_request.reset(options={"prompt_index": index})
            _, reward, _, _, single = per_request.step(k)
            assert info["tokens_per_second"] == pytest.approx(single["tokens_per_second"]) == pytest.approx(reward)
            assert info["speedup"] == pytest.approx(single["speedup"]) and info["cycles"] == single["cycles"]
            assert returned == pytest.approx(1 - info["decode_seconds"] / ar.decode_seconds)
            assert info["block_sizes"] == [block] * info["cycles"] and info["new_tokens"] == len(trace.tokens)


def test_under_load_both_envs_price_the_batch_and_agree(make, tiny_traces_path, tiny_profile_path):
    alone, loaded = make("block", split="test"), make("block", split="test", concurrency=4)
    per_request = make_trace_env(str(tiny_traces_path), str(tiny_profile_path), "test", FEATURES, reward="tokens_per_second", concurrency=4)
    assert loaded.observation_space.shape == alone.observation_space.shape  # a fixed load is not observed
    for k, block in enumerate(loaded.block_sizes):
        _, at_one = run_episode(alone, lambda obs, info: k, 0)
        _, at_four = run_episode(loaded, lambda obs, info: k, 0)
        per_request.reset(options={"prompt_index": 0})
        _, reward, _, _, single = per_request.step(k)
        assert at_four["concurrency"] == 4 and at_four["tokens_per_second"] == pytest.approx(reward)
        assert at_four["tokens_per_second"] < at_one["tokens_per_second"]  # each pass is the batch's
        assert at_four["block_sizes"] == at_one["block_sizes"]  # load changes seconds, never what is accepted


def test_a_load_drawn_per_episode_is_observed(make):
    env = make("block", concurrency=[1, 4])
    assert env.observation_space.shape[0] == make("block").observation_space.shape[0] + 1
    check_env(env, skip_render_check=True)
    seen = {}
    env.reset(seed=3)
    for _ in range(12):
        obs, _ = env.reset()
        seen[env.concurrency] = obs[-1]
        _, info = run_episode(env, lambda obs, info: 0, env.prompt_index)
        assert info["concurrency"] == env.concurrency
    assert seen == {1: 0.0, 4: 1.0}


def test_the_observation_carries_the_decode_state(make):
    env = make("block", history=2)
    obs, _ = env.reset(options={"prompt_index": 0})
    d = env.backend.observation_dim
    state = obs[d:]
    assert state.shape == (1 + 3 * 2 + 3 + 1,) and state[0] == pytest.approx(1 / env.backend.max_new_tokens) and not state[1:].any()
    obs, _, _, _, info = env.step(2)  # block 4
    cycle = info["cycle_state"].history[-1]
    state = obs[d:]
    np.testing.assert_allclose(state[1:4], np.array([4, 4, cycle.committed]) / 4)
    np.testing.assert_allclose(state[7:10], cycle.confidence, atol=1e-6)
    assert state[-1] == pytest.approx(np.cumprod(cycle.confidence).sum() / 3, abs=1e-6)
    np.testing.assert_array_equal(obs[:d], env.backend.view.observations[0])


def test_under_the_verify_set_the_agent_sees_the_current_draft(make):
    env = make("verify")
    assert env.actions == [(4, 1), (4, 2), (4, 4)]
    obs, info = env.reset(options={"prompt_index": 1})
    trace = env.backend.trace(1)
    drafted = env.backend.observation_dim + 1 + 3 * env.history_length  # where the draft's confidences start
    np.testing.assert_allclose(obs[drafted : drafted + 3], trace.confidence[4][0], atol=1e-6)
    assert info["cycle_state"].draft == tuple(trace.confidence[4][0])
    _, _, _, _, step = env.step(1)  # verify 2: the anchor and one draft
    assert step["block_size"] == 4 and step["verify_count"] == 2 and step["committed"] == trace.committed(0, 4, 2)


def test_a_smaller_draft_block_drafts_first_and_bounds_the_verify_counts(make):
    env = make("verify", draft_block=2)
    assert env.actions == [(2, 1), (2, 2)]
    _, info = env.reset(options={"prompt_index": 1})
    trace = env.backend.trace(1)
    assert info["cycle_state"].draft == tuple(trace.confidence[2][0])
    _, _, _, _, step = env.step(1)
    assert step["block_size"] == 2 and step["committed"] == trace.committed(0, 2, 2)
    with pytest.raises(ValueError, match=r"draft_block 3 needs actions='verify' \(got 'verify'\) and one of the block sizes \[1, 2, 4\]"):
        make("verify", draft_block=3)
    with pytest.raises(ValueError, match="draft_block 2 needs actions='verify' \\(got 'block'\\)"):
        make("block", draft_block=2)


def test_a_load_the_profile_does_not_cover_is_explained(make, tiny_traces_path, tiny_profile_path):
    with pytest.raises(ValueError, match=r"no batched costs for concurrency 16; covered: \[1, 4\]"):
        make("block", concurrency=[1, 16])
    with pytest.raises(ValueError, match=r"no batched costs for concurrency 2; covered: \[1, 4\]"):
        make_trace_env(str(tiny_traces_path), str(tiny_profile_path), "test", FEATURES, concurrency=2)


def test_bad_use_is_explained(make):
    env = make("block_verify")
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 6 is outside the action space Discrete\(6\).*\(4, 4\)"):
        env.step(6)
    with pytest.raises(ValueError, match="unknown action set 'blocks'"):
        make("blocks")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make(split="dev")


def test_a_live_request_decodes_what_speculative_generate_decodes(tiny_target):
    prompt, new = [5, 6, 7, 8, 9], 20
    reference = speculative_generate(tiny_target, None, prompt, 1, max_new_tokens=new, stop_token_ids=[])
    drafter = ContinuationDrafter(len(prompt), reference.token_ids[:9] + [0] * 20)  # right for a while, then wrong
    decoder = SpeculativeDecoder(tiny_target, drafter, prompt, max_new_tokens=new, stop_token_ids=[])
    decoder.prefill()
    request = LiveRequest(decoder, ar_decode_seconds=1.0, ar_new_tokens=new)
    committed, seconds = [], 0.0
    while not request.done:
        assert request.draft(4) == (1.0,) * min(3, new - decoder.stats.new_tokens - 1)
        n, s = request.verify(3)
        committed.append(n)
        seconds += s
    assert decoder.new_token_ids == reference.token_ids and max(committed) == 3 and seconds > 0


@pytest.mark.real_model
def test_the_live_schedule_env_decodes_what_speculative_generate_decodes(smollm2):
    env = gym.make("bp_rl/BlockScheduleLive-v0", drafter="prompt-lookup", split="test", max_new_tokens=12, max_prompts=2).unwrapped
    check_env(env, skip_render_check=True)
    prompt = env.backend._token_ids[0]
    for k, (block, verify) in enumerate(env.actions):
        if block not in (1, 4):
            continue
        _, info = run_episode(env, lambda obs, info: k, 0)
        expected = speculative_generate(smollm2, env.backend.drafter, prompt, block, max_new_tokens=12)
        assert info["token_ids"] == expected.token_ids and info["tokens_per_second"] > 0 and info["speedup"] > 0
    with pytest.raises(ValueError, match=r"concurrency 4: live decoding serves one request at a time \(valid: \[1\]\)"):
        BlockScheduleEnv(env.backend, concurrency=4)


def test_compare_schedules_prints_each_seeds_gap_closed():
    from types import SimpleNamespace

    from compare_schedules import report

    def seed(grid, best, ppo):
        return {name: {"tokens_per_second": tps, "speedup": 1.0} for name, tps in
                [("per-request grid", grid), ("per-request best (bound)", best), ("per-request ppo", ppo)]}

    def gaps(text):
        table = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
        return {row[0]: row[table[0].index("gap closed (per seed)")] for row in table[1:]}

    model = SimpleNamespace(kind="model")
    assert gaps(report([seed(10, 12, 11), seed(10, 14, 13)], model)) == {
        "per-request grid": "0.00 / 0.00", "per-request best (bound)": "1.00 / 1.00", "per-request ppo": "0.50 / 0.75"}
    assert gaps(report([seed(10, 12, 11), seed(10, 10, 9)], model))["per-request ppo"] == ""  # no gap on a seed: nothing to close


def test_compare_schedules_reports_every_policy_and_the_replay_check(tiny_traces_path, tiny_profile_path, tmp_path):
    from compare_schedules import main

    out = tmp_path / "report.md"
    main(["--traces", str(tiny_traces_path), "--profiles", str(tiny_profile_path), "--budget", "40", "--cycle-budget", "300",
          "--concurrency", "1", "4", "--out", str(out)])
    alone, loaded = out.read_text().split("### ")[1:]
    assert loaded.startswith("tiny-model@c4") and "Load: 4 concurrent requests" in loaded and "Load:" not in alone

    def rows_of(section):
        return {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in section.splitlines() if line.startswith("| ") and " | " in line}

    rows = rows_of(alone)
    for name in ("per-request grid", "per-request ppo", "per-cycle linucb (block_verify)", "per-cycle ppo (block)", "per-cycle optimum: block (bound)"):
        assert name in rows
    assert any(name.startswith("per-cycle learned verify rule (draft ") for name in rows)
    assert any(name.startswith("per-cycle AdaEDL entropy bound >= ") for name in rows)  # the tiny traces keep entropies
    replay = next(name for name in rows if name.endswith("(replay check)"))
    assert rows[replay] == rows["per-request grid"]  # a fixed block scores the same through both envs
    tps = {name: float(value.replace(",", "")) for name, value in rows.items() if value[:1].isdigit()}
    assert tps["per-cycle optimum: block_verify (bound)"] >= tps["per-request best (bound)"] - 1e-6 >= tps["per-request grid"] - 1e-6
    assert "SIMULATED" in out.read_text()
    under_load = rows_of(loaded)
    assert float(under_load["per-request grid"].replace(",", "")) < tps["per-request grid"]  # every pass is the batch's
