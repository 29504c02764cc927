"""Train a block-size agent on the training split and compare it on held-out prompts.

    python experiments/run.py agent=ppo                       # envs.DEFAULT_TRACES under this machine's profile
    python experiments/run.py agent=linucb seed=1 env.reward=speedup
    python experiments/run.py agent=oracle env=live env.max_prompts=20   # evaluate by real decoding
    python experiments/run.py agent=linucb env=trace env.profile=NAME    # exact traces under a device profile
    python experiments/run.py -m agent=ppo,linucb,oracle,grid seed=0,1,2 # a sweep; then report.py
    python experiments/run.py agent=oracle env=table                    # the shipped timed table, cross-validated

Writes into the Hydra run directory: results.json, config.yaml (resolved), the trained agent,
and plots (tokens/s per agent and category, chosen-block histogram, learning curve); logs the
same to W&B (offline unless told otherwise).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agents import FitData, LabelledSet, Logger, against_best_as_run, agent_policy, best_policy, make_agent, run_policies, summarise
from agents.base import agent_class, seed_everything
from bp_rl.rewards import RewardTable
from bp_rl.trace_table import SimulatedRewards
from envs import DEFAULT_TABLE, make_live_env, make_table_env, simulated_rewards
from reporting import comparison_table, plot_block_histogram, plot_learning_curve, plot_per_category
from tracking import Tracker


CONF = Path(__file__).parent / "conf"
BACKENDS = ("table", "trace", "live")
DEFAULT_FOLDS = 4  # for a table without a train split (measured on the test split only)


def route_plugin_agents(argv: list[str]) -> list[str]:
    """`agent=<name>` with no config file of that name -> `agent=plugin agent.name=<name>`.

    Plug-in packages bring no Hydra config; this lets `agent=my_agent` work for them as is.
    """
    routed = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "agent" and value and "," not in value and not (CONF / "agent" / f"{value}.yaml").is_file():
            routed += ["agent=plugin", f"agent.name={value}"]
        else:
            routed.append(arg)
    return routed


def build_envs(cfg: DictConfig, table: RewardTable | SimulatedRewards, eval_table: RewardTable | SimulatedRewards):
    """(training env, evaluation env, train labels, val labels) as the config asks.

    Training always uses the train split of `table` (val for early stopping); evaluation uses
    `env.split`, replayed from `eval_table`'s medians (simulated ones for traces) or decoded live.
    """
    env = cfg.env

    def replayed(split: str, replay: str, rewards: RewardTable = table):
        return make_table_env(rewards, split, env.feature_set, env.reward, replay, env.normalize_obs, train_table=table)

    def live(split: str, max_prompts: int | None = None):
        return make_live_env(
            cfg.model.target, cfg.model.drafter, split, block_sizes=table.block_sizes, feature_set=env.feature_set,
            reward=env.reward, max_new_tokens=cfg.model.max_new_tokens, temperature=cfg.model.temperature,
            table=table, normalize_obs=env.normalize_obs, device=cfg.model.device, max_prompts=max_prompts,
            dtype=cfg.model.dtype, allow_download=cfg.model.allow_download,
        )

    train_env = replayed("train", env.replay)
    train, val = (LabelledSet.from_view(table.view(env.feature_set, s), env.reward, train_env.normalise) for s in ("train", "val"))
    if env.backend in ("table", "trace"):
        return train_env, replayed(env.split, "median", eval_table), train, val
    return (live("train") if env.train_live else train_env), live(env.split, env.max_prompts), train, val


class Outcome(NamedTuple):
    records: dict[str, list[dict]]  # per policy (the agent and the references), one record per evaluated prompt
    train_seconds: float  # the agent's
    history: list[dict]  # the agent's learning curve


def train_and_evaluate(cfg: DictConfig, table: RewardTable, eval_table: RewardTable, agent_dir: Path) -> Outcome:
    """Fit the agent and the references on `table`'s train split, save the agent, and run them all."""
    train_env, eval_env, train, val = build_envs(cfg, table, eval_table)
    block_sizes, dim = train_env.block_sizes, train_env.observation_space.shape[0]
    agent_settings = {k: v for k, v in OmegaConf.to_container(cfg.agent, resolve=True).items() if k != "name"}
    agent = make_agent(cfg.agent.name, block_sizes, dim, cfg.seed, **agent_settings)
    logger = Logger()
    start = time.perf_counter()
    agent.fit(FitData(env=train_env, budget=cfg.budget, seed=cfg.seed, logger=logger, train=train, val=val))
    train_seconds = time.perf_counter() - start
    agent.save(agent_dir)

    # The references: fixed and grid (fitted on the same training data), and the per-prompt best.
    policies = {cfg.agent.name: agent_policy(agent)}
    for name in cfg.compare:
        if name != cfg.agent.name:
            settings = {"block_size": cfg.fixed_block_size} if name == "fixed" else {}
            reference = make_agent(name, block_sizes, dim, cfg.seed, **settings)
            reference.fit(FitData(env=train_env, budget=cfg.budget, seed=cfg.seed, train=train, val=val))
            policies[name] = agent_policy(reference)
    if all(eval_env.best_action(i) is not None for i in range(eval_env.num_prompts)):
        policies["best"] = best_policy(eval_env)
    records = run_policies(policies, eval_env, cfg.seed)  # live: interleaved by prompt
    if cfg.env.backend == "live" and "best" in records:  # measure the gap against the best block as decoded in this run
        records = against_best_as_run(records)
    return Outcome(records, train_seconds, logger.history)


@hydra.main(config_path="conf", config_name="run", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.env.backend not in BACKENDS:
        raise ValueError(f"unknown env backend {cfg.env.backend!r}; valid: {list(BACKENDS)} (env=table, env=trace or env=live)")
    folds = cfg.env.get("folds")
    if folds is not None and cfg.env.backend != "table":
        raise ValueError(f"env.folds={folds!r} re-splits a measured table; it does not apply to env.backend={cfg.env.backend!r}")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    agent_class(cfg.agent.name)  # fail fast on an unknown agent, before loading anything
    seed_everything(cfg.seed)

    # model.drafter null: whichever drafter the rewards were measured with (a name checks that they were)
    expect = {"target": cfg.model.target} | ({"drafter": cfg.model.drafter} if cfg.model.drafter is not None else {})
    if cfg.env.backend == "trace" or (cfg.env.backend == "live" and cfg.env.table is None):  # live: trained on traces
        table = simulated_rewards(cfg.env.traces, cfg.env.profile, expect, cfg.env.get("concurrency"))
        print(f"rewards SIMULATED from the traces {table.path.name} under profile {table.profile.name!r} ({table.profile.kind}: {table.profile.device})")
    else:
        table = RewardTable.load(cfg.env.table or DEFAULT_TABLE, expect=expect)
    expect["drafter"] = cfg.model.drafter = table.meta["drafter"]  # an eval_table must be the same drafter's
    eval_table = table if cfg.env.get("eval_table") is None else RewardTable.load(cfg.env.eval_table, expect=expect)
    if eval_table.block_sizes != table.block_sizes:
        raise ValueError(
            f"env.eval_table {cfg.env.eval_table!r} has block sizes {list(eval_table.block_sizes)}, "
            f"the training table {list(table.block_sizes)}: an agent can only be evaluated on the actions it learned"
        )
    measured_splits = table.splits() if cfg.env.backend == "table" else None
    if folds is None and measured_splits is not None and "train" not in measured_splits:
        folds = cfg.env.folds = DEFAULT_FOLDS
        print(f"{table.path.name} was measured on {measured_splits} only: {folds}-fold cross-validation over its prompts (env.folds)")
    tracker = Tracker(cfg, run_dir)
    if folds is None:
        parts = [train_and_evaluate(cfg, table, eval_table, run_dir / "agent")]
    else:  # every prompt is evaluated once, by the agent trained without it
        parts = [
            train_and_evaluate(cfg, *(t.cross_validation_fold(i, folds, cfg.seed) for t in (table, eval_table)), run_dir / "agent" / f"fold{i}")
            for i in range(folds)
        ]
    records = {name: [row for part in parts for row in part.records[name]] for name in parts[0].records}
    train_seconds = sum(part.train_seconds for part in parts) / len(parts)  # one agent's training
    history = parts[0].history  # learning curves: the first fold's
    grid = records.get("grid")
    summaries = {name: summarise(rows, grid) for name, rows in records.items()}

    results = {
        "agent": cfg.agent.name,
        "overrides": list(HydraConfig.get().overrides.task),  # report.py names sweep variants by them
        "seed": cfg.seed,
        "split": cfg.env.split,
        "env": cfg.env.backend,
        "table": str(table.path),
        "profile": table.profile.name if isinstance(table, SimulatedRewards) else None,
        "eval_table": str(eval_table.path),
        "reward": cfg.env.reward,
        "folds": folds,
        "train_seconds": train_seconds,
        "metrics": summaries[cfg.agent.name],
        "references": {name: s for name, s in summaries.items() if name != cfg.agent.name},
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    plots = [
        plot_per_category(summaries, run_dir / "tokens_per_second.png"),
        plot_block_histogram(summaries, table.block_sizes, run_dir / "block_histogram.png"),
        plot_learning_curve(history, run_dir / "learning_curve.png", cfg.agent.name),
    ]
    tracker.finish(history, summaries, [p for p in plots if p is not None], run_dir / "agent", results)
    evaluated_on = f"{cfg.env.backend} / {cfg.env.split}" + (f", evaluated on {eval_table.path.name}" if eval_table is not table else "")
    print(f"\n{cfg.agent.name} (seed {cfg.seed}) on {evaluated_on}: "
          f"{len(records[cfg.agent.name])} prompts{f' ({folds}-fold cross-validation)' if folds else ''}, reward {cfg.env.reward}, trained in {train_seconds:.1f} s\n")
    print(comparison_table(summaries))
    print(f"\nresults: {run_dir / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    sys.argv = route_plugin_agents(sys.argv)
    main()
