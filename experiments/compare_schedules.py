"""Is one decision per request enough? Per-request policies against per-cycle ones, on exact traces.

    python experiments/compare_schedules.py                          # shipped traces, three profiles, seed 0
    python experiments/compare_schedules.py --seeds 0 1 2 --out runs/schedules.md
    python experiments/compare_schedules.py --profiles roofline-h200_smollm2-135m_smollm2-135m-block --learned none
    python experiments/compare_schedules.py --concurrency 1 4 16    # under load (profiles that cover it)

For each profile, on the test split (agents learn on train, thresholds and early stopping use val):
- per request (`BlockSizeTrace-v0`): autoregressive, the grid's fixed block, the supervised oracle,
  LinUCB and PPO, and the per-request per-prompt best (their upper bound);
- per cycle (`BlockSchedule-v0`): Hugging Face's assistant schedule; confidence-threshold verification
  (llama.cpp `p_min` style, threshold tuned on val); AdaEDL's entropy bound (lambda tuned on val; traces
  that keep the drafter's entropies only); "per request, then per cycle" (the oracle's block
  as the assistant schedule's start); LinUCB per cycle (every cycle a bandit round, `CyclesAsEpisodes`)
  over blocks and over (block, verify) pairs; PPO over whole requests (gamma 1); a learned verify rule
  (`bp_rl.learned_schedules`: regret of each verify count regressed on the draft, fitted on train
  against the exact optimum; the block drafted first and the ridge penalty tuned on val);
- the exact per-cycle optimum over each action set (dynamic programming on the trace): an upper bound.

Every figure is SIMULATED: acceptance from the traces (exact at T=0), seconds from the named profile;
under load (`--concurrency B`) each pass costs the forward of B requests verifying as many tokens
each (`DeviceProfile.at_concurrency`; the `flat` model has no load and is skipped there).
Decision times are real (this machine): per request for per-request policies, per cycle for
per-cycle ones, and shown as a share of the mean cycle under a measured profile (not under a model's). Per-cycle learners observe a
small part of the prefill (`--cycle-features`) beside the decode state.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agents import FitData, LabelledSet, agent_policy, best_policy, make_agent, run_policies, summarise
from bp_rl.learned_schedules import fit_verify_rules
from bp_rl.outcomes import request_tokens_per_second
from bp_rl.profiles import DeviceProfile, default_profile, roofline_profile_name, simulate
from bp_rl.schedules import ACTION_SETS, action_set, assistant_schedule, confidence_schedule, entropy_schedule, optimal_schedule
from bp_rl.trace_table import SimulatedRewards, TraceTable
from bp_rl.traces import as_action
from envs import DEFAULT_TRACES, make_schedule_env, make_trace_env
from envs.block_schedule import BlockScheduleEnv, CyclesAsEpisodes
from reporting import markdown_table

THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
RIDGES = (0.1, 10.0, 1000.0)
FEATURES = "last_hidden+logit_stats+prompt_length"
LEARNED = ("all", "none")


def schedule_policy(schedule, env: BlockScheduleEnv):
    """A rule over the decode state (`bp_rl.schedules`) as a policy of `env`'s action indices."""
    return lambda observation, index: env.actions.index(as_action(schedule(env.state)))


def tuned_on_val(rule, values: tuple, val_env: BlockScheduleEnv, seed: int) -> tuple[object, float]:
    """The value of `rule(value)` (a schedule) among `values` with the best mean tokens/s on val, and that tokens/s."""
    scores = {v: np.mean([r["tokens_per_second"] for r in run_policies({"rule": schedule_policy(rule(v), val_env)}, val_env, seed)["rule"]])
              for v in values}
    best = max(scores, key=scores.get)
    return best, scores[best]


def then_per_cycle(agent, request_env, env: BlockScheduleEnv):
    """Per request, then per cycle: the per-request agent's block (from the request's prefill
    observation in `request_env`) starts the assistant schedule, which adapts it from there."""
    if request_env.backend.prompt_ids != env.backend.prompt_ids:
        raise ValueError("the per-request and per-cycle environments must walk the same prompts in the same order")
    blocks = env.block_sizes
    rules: dict[int, object] = {}

    def policy(observation, index):
        if not env.state.history:
            prefill = request_env.normalise(request_env.backend.view.observations[index])
            start = blocks[agent.act(prefill)]
            rules[index] = assistant_schedule(blocks, start_drafts=start - 1)
        return env.actions.index(as_action(rules[index](env.state)))

    return policy


def optimum_records(rewards: SimulatedRewards, split: str, actions: list[tuple[int, int]]) -> list[dict]:
    records = []
    for pid, category, _ in rewards.traces.traced_prompts(split):
        trace = rewards.traces.trace(pid)
        seconds, plan = optimal_schedule(trace, rewards.profile, actions)
        prefill = rewards.profile.prefill_seconds(trace.prompt_tokens)
        baseline = simulate(trace, rewards.profile, 1)  # autoregressive, for the speedup and the return
        tps = request_tokens_per_second(len(trace.tokens), prefill, seconds)
        records.append({"category": category, "tokens_per_second": tps, "speedup": tps / baseline.tokens_per_second,
                        "reward": 1 - seconds / baseline.decode_seconds, "mean_acceptance": len(trace.tokens) / max(1, len(plan)),
                        "best_reward": None, "block_size": plan[0][0] if plan else 1, "block_sizes": [b for b, _ in plan],
                        "decision_seconds": 0.0, "cycles": len(plan), "decode_seconds": seconds})
    return records


def compare(traces: TraceTable, profile: DeviceProfile, seed: int, budget: int, cycle_budget: int, learned: bool,
            cycle_features: str) -> dict[str, dict]:
    """Every policy's summary on the test split under `profile` (one seed)."""
    rewards = SimulatedRewards(traces, profile)
    blocks = traces.block_sizes
    per_request = {s: make_trace_env(traces, profile, s, FEATURES, "tokens_per_second", normalize_obs=True) for s in ("train", "test")}
    train_env = per_request["train"]
    dim = train_env.observation_space.shape[0]
    labelled = {s: LabelledSet.from_view(rewards.view(FEATURES, s), "tokens_per_second", train_env.normalise) for s in ("train", "val")}

    def fitted(name, env, agent_blocks, observation_dim, fit_budget, **settings):
        agent = make_agent(name, agent_blocks, observation_dim, seed, **settings)
        is_request_env = env is train_env
        agent.fit(FitData(env=env, budget=fit_budget, seed=seed, train=labelled["train"] if is_request_env else None,
                          val=labelled["val"] if is_request_env else None))
        return agent

    request_agents = {"grid": fitted("grid", train_env, blocks, dim, budget), "oracle": fitted("oracle", train_env, blocks, dim, budget)}
    if learned:
        request_agents["linucb"] = fitted("linucb", train_env, blocks, dim, budget)
        request_agents["ppo"] = fitted("ppo", train_env, blocks, dim, budget)
    test_env = per_request["test"]
    policies = {f"per-request {n}": agent_policy(a) for n, a in request_agents.items()}
    policies["per-request best (bound)"] = best_policy(test_env)
    records = run_policies(policies, test_env, seed)

    def schedule_env(split, actions, draft_block=None):  # per-cycle observations: `cycle_features` of the prefill + the decode state
        return make_schedule_env(traces, profile, split, actions, cycle_features, normalize_obs=True, draft_block=draft_block)

    block_env, verify_env = schedule_env("test", "block"), schedule_env("test", "verify")
    val_verify = schedule_env("val", "verify")
    grid_block = blocks[request_agents["grid"].choice]
    records.update(run_policies({
        f"grid block {grid_block} through the per-cycle env (replay check)": schedule_policy(lambda state: grid_block, block_env),
        "per-cycle assistant schedule (HF)": schedule_policy(assistant_schedule(blocks), block_env),
        "per-request oracle, then assistant": then_per_cycle(request_agents["oracle"], test_env, block_env),
    }, block_env, seed))
    rules = {"confidence >= {}": confidence_schedule}
    if traces.keeps_entropy:
        rules["AdaEDL entropy bound >= {}"] = entropy_schedule
    for label, rule in rules.items():
        threshold, _ = tuned_on_val(lambda t: rule(t, blocks), THRESHOLDS, val_verify, seed)
        records.update(run_policies({f"per-cycle {label.format(threshold)} (val-tuned)": schedule_policy(rule(threshold, blocks), verify_env)},
                                    verify_env, seed))
    if learned:
        for actions in ("block", "block_verify"):
            train_cycles = schedule_env("train", actions)
            bandit = fitted("linucb", CyclesAsEpisodes(train_cycles), train_cycles.actions, train_cycles.observation_space.shape[0], cycle_budget)
            test_cycles = schedule_env("test", actions)
            records.update(run_policies({f"per-cycle linucb ({actions})": agent_policy(bandit)}, test_cycles, seed))
        train_cycles = schedule_env("train", "block")
        ppo = fitted("ppo", train_cycles, train_cycles.actions, train_cycles.observation_space.shape[0], cycle_budget, gamma=1.0, gae_lambda=0.95,
                     n_steps=1024)
        records.update(run_policies({"per-cycle ppo (block)": agent_policy(ppo)}, block_env, seed))
        train_traces = [traces.trace(pid) for pid, _, _ in traces.traced_prompts("train")]
        tuned = {}  # draft block -> (val tokens/s, rule); a draft of 2 leaves no verify count to choose but 1 or 2
        for draft in [b for b in blocks if b >= 3] or [max(blocks)]:
            fits = fit_verify_rules(train_traces, profile, tuple(b for b in blocks if b <= draft), RIDGES)
            ridge, score = tuned_on_val(fits.get, RIDGES, schedule_env("val", "verify", draft), seed)
            tuned[draft] = (score, fits[ridge])
        draft = max(tuned, key=lambda d: tuned[d][0])
        rule = tuned[draft][1]
        test_verify = schedule_env("test", "verify", draft)
        records.update(run_policies({f"per-cycle learned verify rule (draft {draft}, ridge {rule.ridge:g}; val-tuned)": schedule_policy(rule, test_verify)},
                                    test_verify, seed))
    for actions in ACTION_SETS:
        records[f"per-cycle optimum: {actions} (bound)"] = optimum_records(rewards, "test", action_set(actions, blocks))
    grid = records["per-request grid"]
    summaries = {name: summarise(rows, grid) for name, rows in records.items()}
    ar = np.mean([r["tokens_per_second"] / r["speedup"] for r in grid])
    summaries = {"autoregressive": {"tokens_per_second": float(ar), "speedup": 1.0, "cycle_ms": None}, **summaries}
    for name, summary in summaries.items():
        rows = records.get(name)
        if rows:
            summary["cycle_ms"] = 1000 * float(np.mean([r["decode_seconds"] / max(1, r["cycles"]) for r in rows]))
    return summaries


def report(summaries_by_seed: list[dict[str, dict]], profile: DeviceProfile) -> str:
    names = list(summaries_by_seed[0])
    best = np.array([s["per-request best (bound)"]["tokens_per_second"] for s in summaries_by_seed])
    grid = np.array([s["per-request grid"]["tokens_per_second"] for s in summaries_by_seed])
    rows = []
    for name in names:
        tps = np.array([s[name]["tokens_per_second"] for s in summaries_by_seed])
        # (policy - grid) / (per-request best - grid), each seed's own: "closes half the gap on every seed" reads off it
        gap = " / ".join(f"{g:.2f}" for g in (tps - grid) / (best - grid)) if np.all(best > grid) else ""
        speedup = np.mean([s[name]["speedup"] for s in summaries_by_seed])
        decision = [s[name].get("decision_ms") for s in summaries_by_seed]
        cycle = summaries_by_seed[0][name].get("cycle_ms")
        # a share only of a measured cycle: decisions are timed here, a model profile's cycle is another machine's
        share = f"{100 * np.mean(decision) / cycle:.2f}%" if decision[0] and cycle and profile.kind == "measured" else ""
        spread = f" ± {tps.std():.2f}" if len(tps) > 1 else ""
        rows.append([name, f"{tps.mean():,.2f}{spread}", f"{speedup:.3f}x", f"{100 * (tps.mean() / grid.mean() - 1):+.1f}%",
                     f"{100 * (tps.mean() / best.mean() - 1):+.1f}%", gap, f"{np.mean(decision):.3f}" if decision[0] else "", share])
    return markdown_table(rows, ["policy", "tokens/s", "speedup vs AR", "vs grid", "vs per-request best", "gap closed (per seed)",
                                 "decision ms", "of a cycle"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", default=DEFAULT_TRACES, help="a trace table (name or path)")
    parser.add_argument("--profiles", nargs="+", default=None,
                        help="profile names or paths (default: this machine's measured profile, its flat model, roofline-h200)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--budget", type=int, default=20000, help="training episodes of each per-request learner")
    parser.add_argument("--cycle-budget", type=int, default=60000, help="training cycles of each per-cycle learner")
    parser.add_argument("--learned", choices=LEARNED, default="all", help="none: rules, oracle, grid and bounds only (fast)")
    parser.add_argument("--cycle-features", default="logit_stats+prompt_length",
                        help="prefill features in per-cycle observations (beside the decode state); small keeps decisions cheap")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1],
                        help="requests served together (simulated load); each profile at each it covers")
    parser.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = parser.parse_args(argv)

    traces = TraceTable.load(args.traces)
    if args.profiles is None:
        measured = default_profile(traces.meta["drafter_hash"])
        args.profiles = [measured.name, f"flat-{measured.name}", roofline_profile_name("h200", measured.target, measured.drafter)]
    runs = []
    for name in args.profiles:
        base = DeviceProfile.load(name)
        covered = [c for c in args.concurrency if c in base.concurrencies]
        if len(covered) < len(args.concurrency):
            print(f"profile {base.name!r} covers concurrency {list(base.concurrencies)}: skipping {sorted(set(args.concurrency) - set(covered))}")
        runs += [base.at_concurrency(c) for c in covered]
    if not runs:
        raise ValueError(f"no profile covers concurrency {args.concurrency}: measure one with experiments/profile_device.py")
    sections = []
    for profile in runs:
        start = time.perf_counter()
        by_seed = [compare(traces, profile, seed, args.budget, args.cycle_budget, args.learned == "all", args.cycle_features)
                   for seed in tqdm(args.seeds, desc=profile.name)]
        prompts = len(traces.traced_prompts("test"))
        load = (f" Load: {profile.concurrency} concurrent requests, every pass the batch's forward (simulated from batched "
                f"forwards at context {profile.batched_context})." if profile.concurrency > 1 else "")
        section = (f"### {profile.name} ({profile.kind}: {profile.device})\n\nSIMULATED: test split, {prompts} prompts, seeds {args.seeds}, "
                   f"{time.perf_counter() - start:.0f} s.{load}\n\n{report(by_seed, profile)}\n")
        print(section)
        sections.append(section)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"# Per-request vs per-cycle schedules ({traces.path.name})\n\n" + "\n".join(sections))
    traces.close()


if __name__ == "__main__":
    main()
