"""Do acceptance traces (and a device profile) reproduce timed decoding? Compare them with a timed table.

    python experiments/validate_traces.py            # the default traces vs the default timed table
    python experiments/validate_traces.py --traces runs/traces/t.sqlite --table TABLE --profile PROFILE [--speed-prompts 5]

1. Exactness (machine-independent): for every (prompt, block size) in both, whether the trace's replay
   of a fixed-block decode gives the acceptance sequence the timed decode recorded, cycle for cycle.
   Every mismatch is listed with its first differing cycle. Above T=0 (sampled traces against a table
   timed at the same temperature) no decode repeats another, so instead: mean acceptance per block
   size, the traces' seeds against the timed repeats, beside the timed table's own repeat-to-repeat
   difference (what sampling alone moves).
2. Under a profile of the CPU model that timed the table (`--profile`; by default the shipped one, if any): simulated vs timed tokens/s per (prompt, block size): median absolute error,
   the per-prompt Spearman rank correlation over block sizes and how often both pick the same best
   block; beside it the same figures for one timed repeat against the median of the others (what
   the timed table itself reproduces). The profile must come from the CPU model that timed the table.
3. With `--speed-prompts N`: the cost of tracing a prompt (every block size) against one repeat of
   timed collection (the baseline and every block size), both timed here in this run; the trace's
   greedy decode at each of `--decode-blocks` (1: autoregressive; above 1 speculative, and its tokens
   checked against the autoregressive trace's); with `--guess-batch B`, also from the guesses of
   batched greedy decoding, B prompts a batch (its time shared out), as `collect_traces.py` does by
   default. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bp_rl.outcomes import ACCEPTANCE, AUTOREGRESSIVE, SAMPLE_COLUMNS, TPS
from bp_rl.profiles import DeviceProfile, shipped_profiles
from bp_rl.rewards import RewardTable
from bp_rl.trace_table import SimulatedRewards, TraceTable
from envs import DEFAULT_TABLE, DEFAULT_TRACES
from reporting import markdown_table
from validate_replay import spearman


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first cycle where the two sequences differ (None: equal)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def exactness(traces: TraceTable, table: RewardTable, split: str | None) -> list[str]:
    traced = {pid for pid, _, s in traces.traced_prompts(split)}
    rows = table.db.execute("SELECT prompt_id, block_size, repeat, new_tokens, acceptance FROM runs ORDER BY prompt_id, block_size, repeat")
    pairs, equal, cycles, agreeing, mismatches, repeat_disagreements = 0, 0, 0, 0, [], 0
    seen: dict[tuple[str, int], list[int]] = {}
    cache: dict[str, object] = {}
    for pid, block, repeat, new_tokens, acceptance in rows:
        if pid not in traced:
            continue
        live = list(np.frombuffer(acceptance, dtype=np.uint8))
        if (pid, block) in seen:  # further repeats: at T=0 they must agree with the first
            repeat_disagreements += live != seen[(pid, block)]
            continue
        seen[(pid, block)] = live
        trace = cache.setdefault(pid, traces.trace(pid))
        replayed = trace.acceptance_lengths(1 if block == AUTOREGRESSIVE else block)
        pairs += 1
        cycles += len(live)
        where = first_difference(live, replayed)
        if where is None:
            equal += 1
            agreeing += len(live)
        else:
            agreeing += where
            mismatches.append((pid, block, where, live[where : where + 3], replayed[where : where + 3], new_tokens, len(trace.tokens)))
    lines = [
        f"exactness: {equal} of {pairs} (prompt, block) pairs replay the timed decode's acceptance sequence exactly "
        f"({equal / max(1, pairs):.1%}); {agreeing} of {cycles} cycles agree up to each pair's first difference "
        f"({agreeing / max(1, cycles):.2%}); timed repeats disagreeing with their first repeat: {repeat_disagreements}",
    ]
    if mismatches:
        lines.append(markdown_table(
            [[pid, "AR" if b == AUTOREGRESSIVE else str(b), str(w), str(live), str(rep), str(n_live), str(n_trace)] for pid, b, w, live, rep, n_live, n_trace in mismatches],
            ["prompt", "block", "first differing cycle", "timed (from there)", "trace (from there)", "timed new tokens", "traced new tokens"],
        ))
    return lines


def acceptance_agreement(traces: TraceTable, table: RewardTable, split: str | None) -> list[str]:
    """Mean acceptance length per block size over the prompts both hold: every seed of the traces against
    every timed repeat. Above T=0 each decode draws its own samples, so beside it stands the timed table
    against itself (its first decode of each (prompt, block) against the others: what sampling alone moves the mean by)."""
    timed = table.view(next(iter(traces.feature_sets)), split)  # per (prompt, block): each repeat's mean acceptance and cycles
    traced = {pid for pid, _, _ in traces.traced_prompts(split)}
    blocks = [b for b in timed.block_sizes if b in traces.block_sizes]
    cycles = SAMPLE_COLUMNS.index("cycles")
    # a decode whose first token ended it ran no verify pass: it says nothing of acceptance, and is left out on both sides
    without_cycles = [0, 0]  # timed, traced
    timed_means, traced_means, repeated = ({b: [] for b in blocks} for _ in range(3))
    for i, pid in enumerate(timed.prompt_ids):
        if pid not in traced:
            continue
        trace = traces.trace(pid)
        for block in blocks:
            runs = timed.samples[i][timed.block_sizes.index(block)]
            ran = runs[runs[:, cycles] > 0, ACCEPTANCE]  # in repeat order
            decodes = [trace.acceptance_lengths(block, j) for j in range(len(trace.seeds))] if traces.sampled else [trace.acceptance_lengths(block)]
            without_cycles[0] += len(runs) - len(ran)
            without_cycles[1] += sum(not c for c in decodes)
            if len(ran) and any(decodes):
                timed_means[block].append(ran.mean())
                traced_means[block].append(np.mean([np.mean(c) for c in decodes if c]))
                if len(ran) > 1:
                    repeated[block].append(ran)
    rows = []
    for block in blocks:
        if not timed_means[block]:
            continue
        timed_mean, traced_mean, again = np.mean(timed_means[block]), np.mean(traced_means[block]), repeated[block]
        self_ratio = f"{np.mean([r[0] for r in again]) / np.mean([r[1:].mean() for r in again]):.3f} ({len(again)} prompts)" if again else "-"
        rows.append([str(block), str(len(timed_means[block])), f"{timed_mean:.3f}", f"{traced_mean:.3f}", f"{traced_mean / timed_mean:.3f}", self_ratio])
    seeds_said = f"seeds {traces.meta['seeds']}" if traces.sampled else "exact"
    return [
        f"acceptance at T={traces.temperature:g} (tokens per verify pass, bonus included; mean over prompts): traces ({seeds_said}) vs "
        f"every timed repeat; left out, as they ran no verify pass: {without_cycles[0]} timed and {without_cycles[1]} traced decodes",
        markdown_table(rows, ["block", "prompts", "timed", "traced", "traced/timed", "first timed decode / the others (sampling alone)"]),
    ]


def timing_agreement(traces: TraceTable, table: RewardTable, profile: DeviceProfile, split: str | None) -> list[str]:
    features = next(iter(traces.feature_sets))
    timed = table.view(features, split)
    simulated = SimulatedRewards(traces, profile).view(features, split)
    common = [pid for pid in timed.prompt_ids if pid in set(simulated.prompt_ids)]
    t_index = [timed.prompt_ids.index(p) for p in common]
    s_index = [simulated.prompt_ids.index(p) for p in common]
    blocks = [b for b in timed.block_sizes if b in simulated.block_sizes]  # a sample of traces may hold fewer sizes
    t_cols = [timed.block_sizes.index(b) for b in blocks]
    t_tps = np.column_stack([timed.ar_tokens_per_second[t_index], timed.median(TPS)[t_index][:, t_cols]])
    s_tps = np.column_stack([simulated.ar_tokens_per_second[s_index], simulated.median(TPS)[s_index][:, [simulated.block_sizes.index(b) for b in blocks]]])

    def agreement(predicted: np.ndarray, measured: np.ndarray) -> tuple[float, float, float, float]:
        error = np.median(np.abs(predicted / measured - 1))
        rho = np.mean([spearman(p[1:], m[1:]) for p, m in zip(predicted, measured)])
        same_best = np.mean(predicted[:, 1:].argmax(axis=1) == measured[:, 1:].argmax(axis=1))
        # the level drifts with the machine's speed (between a profile's window and a table's); the speedup
        # over the prompt's own AR decode carries no such drift, and it is what a block choice rests on
        speedup_error = np.median(np.abs((predicted[:, 1:] / predicted[:, :1]) / (measured[:, 1:] / measured[:, :1]) - 1))
        return error, rho, same_best, speedup_error

    sim = agreement(s_tps, t_tps)
    # the timed table against itself: repeat 0 predicting the median of the other repeats
    held = [i for i in t_index if all(len(timed.samples[i][k]) >= 2 for k in t_cols) and len(timed.ar_samples[i]) >= 2]
    rows = [["simulated (trace x profile) vs timed median", str(len(common)), *[f"{v:.3f}" for v in sim]]]
    if held:
        first = np.array([[timed.ar_samples[i][0], *[timed.samples[i][k][0, TPS] for k in t_cols]] for i in held])
        rest = np.array([[np.median(timed.ar_samples[i][1:]), *[np.median(timed.samples[i][k][1:, TPS]) for k in t_cols]] for i in held])
        noise = agreement(first, rest)
        rows.append(["timed repeat 0 vs median of the other repeats", str(len(held)), *[f"{v:.3f}" for v in noise]])
    per_block = [["AR", f"{t_tps[:, 0].mean():.2f}", f"{s_tps[:, 0].mean():.2f}", f"{np.median(s_tps[:, 0] / t_tps[:, 0]):.3f}"]] + [
        [f"b{b}", f"{t_tps[:, k + 1].mean():.2f}", f"{s_tps[:, k + 1].mean():.2f}", f"{np.median(s_tps[:, k + 1] / t_tps[:, k + 1]):.3f}"]
        for k, b in enumerate(blocks)
    ]
    return [
        f"timing: SIMULATED under profile {profile.name!r} ({profile.kind}, {profile.device}) vs the table timed on "
        f"{', '.join(m['device'] for m in table.machines)}",
        markdown_table(rows, ["comparison", "prompts", "median |error| per (prompt, block)", "mean Spearman rho per prompt", "same best block",
                              "median |error| of the speedup over AR"]),
        "",
        markdown_table(per_block, ["block", "timed tok/s (mean)", "simulated tok/s (mean)", "median simulated/timed"]),
    ]


def collection_speed(traces: TraceTable, table: RewardTable, prompts: int, decode_blocks: list[int], guess_batch: int) -> list[str]:
    """Trace each prompt (its continuation decoded at each of `decode_blocks`, and with `guess_batch`
    from the guesses of batched greedy decodes of that many prompts, their time shared out) vs one
    timed repeat of it (baseline + every block size), alternating, in this run."""
    from bp_rl import load_drafter, load_target
    from bp_rl.drafter_data import greedy_guesses
    from bp_rl.measurement import DecodeSettings, measure
    from bp_rl.prompts import load_prompts, render_prompt
    from bp_rl.traces import trace_request

    meta = traces.meta
    target = load_target(meta["target"])
    drafter = load_drafter(meta["drafter"], target)
    settings = DecodeSettings(**table.meta["settings"])
    test = load_prompts(meta["suite"], split="test")
    chosen = test[:: max(1, len(test) // prompts)][:prompts]  # spread over the split's categories
    feature_sets = tuple(traces.feature_sets)
    encoded = [target.encode(render_prompt(prompt, target.tokenizer)) for prompt in chosen]
    # how the continuation is found -> (trace_request options for prompt i, seconds each prompt is charged beforehand)
    methods = {f"decoded {'autoregressively' if b == 1 else f'at block {b}'}": (lambda i, b=b: {"decode_block": b}, 0.0) for b in decode_blocks}
    if guess_batch:
        started = time.perf_counter()
        guesses = [guess for first in range(0, len(encoded), guess_batch)
                   for guess in greedy_guesses(target, [ids.tolist() for ids in encoded[first : first + guess_batch]], settings.max_new_tokens)]
        share = (time.perf_counter() - started) / len(chosen)
        methods[f"guessed by batched greedy decoding, {guess_batch} prompts a batch ({share:.2f} s a prompt), then checked"] = (
            lambda i: {"guess": guesses[i]}, share)
    trace_seconds: dict[str, list[float]] = {how: [] for how in methods}
    timed_seconds, same_trace = [], {how: 0 for how in methods}
    for i, ids in enumerate(encoded):
        made = {}
        for how, (options, charged) in methods.items():
            started = time.perf_counter()
            made[how] = trace_request(target, drafter, ids, list(traces.block_sizes), settings.max_new_tokens, feature_sets=feature_sets, **options(i))
            trace_seconds[how].append(charged + time.perf_counter() - started)
        started = time.perf_counter()
        for block in (AUTOREGRESSIVE, *table.block_sizes):
            measure(target, drafter, ids, block, settings, feature_sets if block == AUTOREGRESSIVE else (), seed=0)
        timed_seconds.append(time.perf_counter() - started)
        first = next(iter(made.values()))
        for how, trace in made.items():
            same_trace[how] += (trace.tokens, trace.accepted) == (first.tokens, first.accepted)
    lines = [f"collection speed ({len(chosen)} test prompts, this run): one timed repeat {np.mean(timed_seconds):.1f} s per prompt "
             f"(AR + {len(table.block_sizes)} block sizes)"]
    reference = next(iter(methods))
    for how, seconds in trace_seconds.items():
        ratio = sum(timed_seconds) / sum(seconds)
        check = "" if how == reference else f"; the same trace as {reference} for {same_trace[how]} of {len(chosen)} prompts"
        lines.append(f"- tracing with the continuation {how}: {np.mean(seconds):.2f} s per prompt (every block size): "
                     f"{ratio:.1f}x per timed repeat, {3 * ratio:.1f}x against the 3 repeats the test split is timed with{check}")
    return lines


def shipped_profile_of(drafter_hash: str, devices: list[str]) -> DeviceProfile | None:
    """The shipped measured profile of this drafter timed on one of `devices` (None: not shipped)."""
    profiles = [DeviceProfile.load(name) for name in shipped_profiles(drafter_hash)]
    return next((p for p in profiles if p.kind == "measured" and p.device in devices), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", default=DEFAULT_TRACES, help="a trace table (name or path)")
    parser.add_argument("--table", default=DEFAULT_TABLE, help="a timed reward table of the same target, drafter and settings")
    parser.add_argument("--profile", default=None,
                        help="a device profile of the CPU model that timed the table (default: the shipped measured one, if any; none: skip)")
    parser.add_argument("--split", choices=["train", "val", "test"], default=None)
    parser.add_argument("--speed-prompts", type=int, default=0, help="also time tracing against timed collection on N prompts")
    parser.add_argument("--decode-blocks", type=int, nargs="+", default=[1],
                        help="with --speed-prompts: the block sizes a trace's greedy decode is timed at (1: autoregressive)")
    parser.add_argument("--guess-batch", type=int, default=0,
                        help="with --speed-prompts: also time traces whose continuations batched greedy decoding guessed, N prompts a batch "
                             "(collect_traces.py's guess_batch; 0: off)")
    args = parser.parse_args()
    try:
        traces, table = TraceTable.load(args.traces), RewardTable.load(args.table)
        for key in ("target", "drafter_hash", "suite"):
            if traces.meta[key] != table.meta[key]:
                raise ValueError(f"{key}: the traces have {traces.meta[key]!r}, the table {table.meta[key]!r}")
        for key in sorted(traces.meta["settings"].keys() | table.meta["settings"].keys()):  # max_new_tokens, temperature, ...
            if traces.meta["settings"].get(key) != table.meta["settings"].get(key):
                raise ValueError(f"settings: the traces have {key}={traces.meta['settings'].get(key)!r}, "
                                 f"the table {table.meta['settings'].get(key)!r}")
        devices = [m["device"] for m in table.machines]  # the CPU models that timed the table
        if args.profile is None:
            profile = shipped_profile_of(table.meta["drafter_hash"], devices)
        else:
            profile = None if args.profile == "none" else DeviceProfile.load(args.profile)
        if profile is not None and profile.device not in devices and profile.kind == "measured":
            raise ValueError(f"profile {profile.name!r} was measured on {profile.device}; the table on {devices}: "
                             "compare timings of one CPU model only")
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    lines = [f"traces {traces.path.name} ({traces.meta['drafter']}) vs timed table {table.path.name}, split {args.split or 'all'}", ""]
    lines += acceptance_agreement(traces, table, args.split) if traces.sampled else exactness(traces, table, args.split)
    if profile is not None:
        lines += ["", *timing_agreement(traces, table, profile, args.split)]
    elif args.profile is None:
        lines += ["", f"no shipped profile of {devices} times this drafter: simulated vs timed skipped "
                      "(on that CPU model: python experiments/profile_device.py)"]
    if args.speed_prompts:
        lines += ["", *collection_speed(traces, table, args.speed_prompts, args.decode_blocks, args.guess_batch)]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
