"""The agent interface: registry and plug-ins, baselines, PPO, save/load, and the one evaluation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agents import FitData, LabelledSet, against_best_as_run, agent_names, agent_policy, best_policy, make_agent, run_policies, run_policy, summarise
from agents.base import Agent
from bp_rl.outcomes import MIN_GAP
from bp_rl.rewards import RewardTable
from envs import make_table_env

ROOT = Path(__file__).resolve().parents[1]
FEATURES = "last_hidden+logit_stats"
BUILT_INS = {"random", "fixed", "grid", "oracle", "egreedy", "linucb", "lints", "ppo"}


@pytest.fixture
def fit_data(tiny_table_path):
    env = make_table_env(str(tiny_table_path), "train", FEATURES, normalize_obs=True)
    table = RewardTable.load(tiny_table_path)
    train, val = (LabelledSet.from_view(table.view(FEATURES, s), "tokens_per_second", env.normalise) for s in ("train", "val"))
    return FitData(env=env, budget=64, seed=0, train=train, val=val)


@pytest.fixture
def test_env(tiny_table_path):
    return make_table_env(str(tiny_table_path), "test", FEATURES, replay="median", normalize_obs=True)


def test_registry_knows_every_built_in_and_suggests_close_names():
    assert BUILT_INS <= set(agent_names())
    with pytest.raises(ValueError, match=r"unknown agent 'ppo2'.*known agents: \[.*did you mean 'ppo'\?"):
        make_agent("ppo2", (1, 2), 4)
    with pytest.raises(ValueError, match=r"agent 'ppo' does not accept \['learning_rat'\]; its settings are \[.*'learning_rate'"):
        make_agent("ppo", (1, 2), 4, learning_rat=0.1)
    with pytest.raises(ValueError, match=r"fixed block_size 5 is not in the action set \[1, 2\]"):
        make_agent("fixed", (1, 2), 4, block_size=5)


def test_grid_picks_the_best_mean_block_from_the_table_or_by_trying(fit_data):
    grid = make_agent("grid", fit_data.env.block_sizes, fit_data.env.observation_space.shape[0])
    grid.fit(fit_data)
    assert grid.act(None) == fit_data.train.rewards.mean(axis=0).argmax()
    live_like = FitData(env=fit_data.env, budget=300, seed=0)  # no table: it must try every size
    by_trying = make_agent("grid", fit_data.env.block_sizes, 1)
    by_trying.fit(live_like)
    assert by_trying.act(None) in range(3)


@pytest.mark.parametrize("name", sorted(BUILT_INS))
def test_every_built_in_fits_acts_and_round_trips(name, fit_data, test_env, tmp_path):
    dim = fit_data.env.observation_space.shape[0]
    settings = {"ppo": {"n_steps": 32, "batch_size": 16, "eval_every": 32}, "fixed": {"block_size": 4}}.get(name, {})
    agent = make_agent(name, fit_data.env.block_sizes, dim, seed=0, **settings)
    agent.fit(fit_data)
    actions = [agent.act(o) for o in fit_data.val.observations]
    assert all(a in range(3) for a in actions)
    if name != "random":
        loaded = Agent.load(agent.save(tmp_path / name))
        assert type(loaded) is type(agent) and loaded.config() == agent.config()
        assert [loaded.act(o) for o in fit_data.val.observations] == actions
        with pytest.raises(ValueError, match=f"trained on {dim}-dim observations, not {dim + 1}"):
            Agent.load(tmp_path / name, observation_dim=dim + 1)
        with pytest.raises(ValueError, match=r"trained for block sizes \[1, 2, 4\], not \[1, 2\]"):
            Agent.load(tmp_path / name, block_sizes=(1, 2))


def test_gap_closed_is_not_reported_when_the_gap_is_timing_noise():
    def records(rewards, best):
        keys = dict(category="code", tokens_per_second=1.0, speedup=1.0, mean_acceptance=1.0, block_size=1, decision_seconds=0.0)
        return [{**keys, "reward": r, "best_reward": b} for r, b in zip(rewards, best)]

    grid = records([10.0, 10.0], [10.0, 11.0])
    assert summarise(records([10.0, 10.5], [10.0, 11.0]), grid)["gap_closed"] == pytest.approx(0.5)
    grid = records([10.0, 10.0], [10.0, 10.01])  # best beats grid by 0.05%
    assert summarise(records([10.0, 10.01], [10.0, 10.01]), grid)["gap_closed"] is None


def test_live_gaps_are_measured_against_the_best_block_as_decoded_in_the_same_run():
    def records(rewards):  # best_reward 40: what the traces simulated, at another time
        keys = dict(category="code", tokens_per_second=1.0, speedup=1.0, mean_acceptance=1.0, block_size=1, decision_seconds=0.0)
        return [{**keys, "reward": r, "best_reward": 40.0} for r in rewards]

    run = {"agent": records([21.0, 30.0]), "grid": records([20.0, 30.0]), "best": records([22.0, 31.0])}
    measured = against_best_as_run(run)
    assert [r["best_reward"] for rows in measured.values() for r in rows] == [22.0, 31.0] * 3
    assert summarise(measured["agent"], measured["grid"])["gap_closed"] == pytest.approx(0.5 / 1.5)  # means: 25.5, 25, 26.5
    assert summarise(measured["best"], measured["grid"])["regret"] == pytest.approx(0)
    assert summarise(run["agent"], run["grid"])["gap_closed"] == pytest.approx(0.5 / 15)  # against the simulated best
    with pytest.raises(ValueError):
        against_best_as_run({**run, "best": records([22.0])})  # a prompt without its best decode


def test_evaluation_runs_the_policy_and_scores_against_grid_and_best(fit_data, test_env):
    grid = make_agent("grid", test_env.block_sizes, 1)
    grid.fit(fit_data)
    grid_records = run_policy(agent_policy(grid), test_env, "grid")
    best_records = run_policy(best_policy(test_env), test_env, "best")
    grid_summary, best_summary = summarise(grid_records, grid_records), summarise(best_records, grid_records)
    assert len(grid_records) == test_env.num_prompts == 3
    assert best_summary["regret"] == pytest.approx(0) and grid_summary["regret"] >= 0
    assert best_summary["reward"] >= grid_summary["reward"]
    if best_summary["reward"] > (1 + MIN_GAP) * grid_summary["reward"]:
        assert best_summary["gap_closed"] == pytest.approx(1) and grid_summary["gap_closed"] == pytest.approx(0)
    assert sum(grid_summary["block_histogram"].values()) == 3 and grid_summary["decision_ms"] >= 0
    assert set(grid_summary["per_category"]) == {"code", "chat"}
    together = run_policies({"grid": agent_policy(grid), "best": best_policy(test_env)}, test_env, seed=1)
    assert [r["reward"] for r in together["grid"]] == [r["reward"] for r in grid_records]
    assert [r["reward"] for r in together["best"]] == [r["reward"] for r in best_records]
    with pytest.raises(ValueError, match=r"bad chose action 3, outside Discrete\(3\)"):
        run_policy(lambda obs, i: 3, test_env, "bad")


def _install_plugin(target: Path) -> None:
    source = shutil.copytree(ROOT / "experiments" / "plugins" / "bp_rl_knn_agent", target.parent / "plugin-source")
    subprocess.run(  # from a copy: building leaves build/ and egg-info beside the sources
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(source)],
        check=True,
    )


def _run_with(path: Path, code: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": f"{path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, cwd=ROOT)


def test_a_plugin_package_registers_an_agent_by_entry_point(tmp_path, tiny_table_path):
    _install_plugin(tmp_path / "site")
    result = _run_with(tmp_path / "site", f"""
        from agents import FitData, LabelledSet, agent_names, make_agent
        from bp_rl.rewards import RewardTable
        from envs import make_table_env
        env = make_table_env({str(tiny_table_path)!r}, "train", "last_hidden")
        train = LabelledSet.from_view(RewardTable.load({str(tiny_table_path)!r}).view("last_hidden", "train"), "speedup")
        agent = make_agent("knn", env.block_sizes, 32, k=3)
        agent.fit(FitData(env=env, budget=0, train=train))
        print("knn" in agent_names(), type(agent).__module__, agent.act(train.observations[0]))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["True", "bp_rl_knn_agent"]
    # and by name on the command line, with no config file for it in this repository
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "run.py"), "agent=knn", "+agent.k=3", "env=table", f"env.table={tiny_table_path}",
         "model.target=tiny-llama", "model.drafter=tiny", "env.feature_set=last_hidden", "fixed_block_size=4",
         f"hydra.run.dir={tmp_path / 'run'}"],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site"), "WANDB_MODE": "disabled"}, capture_output=True, text=True, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["agent"] == "knn"


def test_a_broken_plugin_fails_loudly_with_its_package_name(tmp_path):
    dist = tmp_path / "site" / "broken_pkg-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[bp_rl.agents]\nbroken = no_such_module:Agent\n")
    result = _run_with(tmp_path / "site", "from agents import make_agent; make_agent('ppo', (1, 2), 4)")
    assert result.returncode != 0
    assert "agent plug-in 'broken' from package 'broken-pkg' failed to load" in result.stderr
