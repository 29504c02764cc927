"""One evaluation for every agent: run its policy on every prompt of a split, then summarise.

The policy is really run (observation in, action out, timed); outcomes come from the
environment, so the same code scores an agent on a replayed table (`replay="median"`, exact
and deterministic) or on live decoding. Summaries follow the evaluation protocol: tokens/s,
speedup over autoregressive, acceptance, fraction of the grid-to-best gap closed
`(agent - grid) / (best - grid)` (not reported when best beats grid by under `MIN_GAP`, as
that gap is timing noise), regret to the per-prompt best, per category, the chosen-block
histogram and the decision time.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

import numpy as np
from tqdm import tqdm

from agents.base import Agent
from bp_rl.outcomes import gap_closed

Policy = Callable[[np.ndarray, int], int]  # (observation, prompt index) -> action


def agent_policy(agent: Agent) -> Policy:
    def policy(observation: np.ndarray, index: int) -> int:
        return agent.act(observation, deterministic=True)

    return policy


def best_policy(env) -> Policy:
    """The per-prompt optimum from the table: a reference, not an agent (it reads the answer)."""

    def policy(observation: np.ndarray, index: int) -> int:
        action = env.best_action(index)
        if action is None:
            raise ValueError("the per-prompt best is unknown for this environment: it needs a measured table")
        return action

    return policy


def run_policies(policies: dict[str, Policy], env, seed: int = 0) -> dict[str, list[dict]]:
    """Every policy on every prompt of `env`'s split: one episode each, one record per prompt.

    An episode is one decision in `BlockSizeEnv` and one per cycle in `BlockScheduleEnv`; a record
    holds the episode's last `info`, its return as `reward` and the mean decision time per step.
    Policies take turns prompt by prompt, in a seeded random order per prompt, so on a live
    environment machine drift cannot favour whichever policy would have run first.
    """
    rng = np.random.default_rng(seed)
    records: dict[str, list[dict]] = {name: [] for name in policies}
    for index in tqdm(range(env.num_prompts), desc=f"evaluate {', '.join(policies)}", unit="prompt", leave=False):
        for name in rng.permutation(list(policies)):
            observation, _ = env.reset(seed=index, options={"prompt_index": index})
            actions, decisions, total, done = [], [], 0.0, False
            while not done:
                start = time.perf_counter()
                action = policies[name](observation, index)
                decisions.append(time.perf_counter() - start)
                if not env.action_space.contains(action):
                    meaning = getattr(env, "actions", env.block_sizes)  # (block, verify) pairs per cycle, else block sizes
                    raise ValueError(f"{name} chose action {action!r}, outside Discrete({env.action_space.n}) for {list(meaning)}")
                observation, reward, done, _, info = env.step(action)
                actions.append(int(action))
                total += reward
            records[name].append({**info, "action": actions[0], "reward": total, "decision_seconds": float(np.mean(decisions))})
    return records


def against_best_as_run(records: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """`records` with each prompt's `best_reward` set to what the `best` policy earned on it in this run.

    Live, the per-prompt best block comes from a table or traces whose rewards were timed (or simulated)
    at another time, and the machine's speed drifts between the two: regret and gap closed must compare
    decodes of one run. Policies take turns prompt by prompt, so record i of every policy is prompt i.
    """
    best = [r["reward"] for r in records["best"]]
    return {name: [{**r, "best_reward": b} for r, b in zip(rows, best, strict=True)] for name, rows in records.items()}


def run_policy(policy: Policy, env, name: str = "policy") -> list[dict]:
    """One policy on every prompt of `env`'s split."""
    return run_policies({name: policy}, env)[name]


def summarise(records: list[dict], grid: list[dict] | None = None) -> dict:
    """The protocol's metrics over `records`, overall and per category; `grid` records give `gap_closed`."""
    summary = _metrics(records, grid)
    categories = sorted({r["category"] for r in records})
    summary["per_category"] = {
        c: _metrics([r for r in records if r["category"] == c], grid and [g for g in grid if g["category"] == c])
        for c in categories
    }
    summary["block_histogram"] = dict(sorted(Counter(b for r in records for b in r.get("block_sizes", [r["block_size"]])).items()))
    summary["decision_ms"] = 1000 * float(np.mean([r["decision_seconds"] for r in records]))
    return summary


def _mean(records: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in records]))


def _metrics(records: list[dict], grid: list[dict] | None) -> dict:
    metrics = {
        "prompts": len(records),
        "reward": _mean(records, "reward"),
        "tokens_per_second": _mean(records, "tokens_per_second"),
        "speedup": _mean(records, "speedup"),
        "mean_acceptance": _mean(records, "mean_acceptance"),
        "regret": None,
        "gap_closed": None,
    }
    if all(r["best_reward"] is not None for r in records):
        best = _mean(records, "best_reward")
        metrics["regret"] = best - metrics["reward"]
        if grid:
            metrics["gap_closed"] = gap_closed(metrics["reward"], _mean(grid, "reward"), best)
    return metrics
