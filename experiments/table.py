"""Inspect, merge and publish reward tables and trace tables.

    python experiments/table.py show smollm2-135m-block-v8-t0-intel-f6m167 [--split test] [--reward speedup] [--block-sizes 1 4 8]
    python experiments/table.py show runs/traces/t.sqlite --profile flat-amd-epyc   # a trace table, under a profile
    python experiments/table.py profiles smollm2-135m-block-v8-traces        # the profiles that can price it
    python experiments/table.py profiles smollm2-135m-block-v6-traces --near smollm2-135m-block-v6-t1-intel-f6m207
    python experiments/table.py merge runs/tables/all.sqlite runs/tables/t.shard0of2.sqlite runs/tables/t.shard1of2.sqlite
    python experiments/table.py publish runs/tables/t.sqlite bp_rl/data/tables/t.sqlite [--repeats 2]

`show` prints what the policies compete for: per category and overall, the tokens/s of
autoregressive decoding, of every fixed block size, of the best fixed (grid) block and of the
per-prompt best block, the headroom best/grid - 1, how often each size is a prompt's best, the
mean acceptance length of each size, the noise between timed repeats and how much of the gap
survives it; `--block-sizes` asks the same of a smaller action set. A trace table's tokens/s are
simulated under the `--profile` named (and say so). `merge` and `publish` take either kind. `publish` copies a consistent
snapshot (SQLite backup, safe while a collector is still writing) and compacts it, atomically.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
from pathlib import Path

import numpy as np

from bp_rl.outcomes import ACCEPTANCE, DEFAULT_REWARD, MIN_GAP, REWARDS, SAMPLE_COLUMNS, TPS
from bp_rl.profiles import DeviceProfile, shipped_profiles
from bp_rl.rewards import RewardTable
from bp_rl.timing import device_name
from bp_rl.trace_table import SimulatedRewards, TraceTable, is_trace_table
from reporting import markdown_table


def open_table(path: str) -> RewardTable | TraceTable:
    return TraceTable.load(path) if is_trace_table(path) else RewardTable.load(path)


def show(path: str, split: str | None, reward: str, block_sizes: list[int] | None = None, profile: str | None = None) -> str:
    table = open_table(path)
    meta = table.meta
    if isinstance(table, TraceTable):
        if profile is None:
            fitting = shipped_profiles(table.meta["drafter_hash"])
            raise ValueError(f"{path} is a trace table: name a device profile (--profile NAME); shipped for its drafter: {fitting}")
        rewards = SimulatedRewards(table, DeviceProfile.load(profile))
        kind = (f"sampled T={table.temperature:g} traces (a sample: one real decode per block and seed {table.meta['seeds']})"
                if table.sampled else "exact T=0 acceptance traces")
        source = [f"{kind} of {table.summary()['prompts']} prompts; tokens/s SIMULATED under profile "
                  f"{rewards.profile.name!r} ({rewards.profile.kind}: {rewards.profile.device})"]
    else:
        if profile is not None:
            raise ValueError(f"--profile applies to trace tables; {path} is a timed reward table")
        rewards = table
        source = [
            *[f"measured on {m['device']}, torch {m['torch']}, transformers {m['transformers']}: {rows} decodes"
              for m, rows in zip(table.machines, table.rows_per_machine())],
            f"{table.summary()['runs']} timed decodes",
        ]
    any_features = next(iter(table.feature_sets))  # observations play no part here
    view = rewards.view(any_features, split)
    # grid is chosen on the training split, as an agent would; fall back to this split if absent
    try:
        grid_view, grid_split = rewards.view(any_features, "train"), "train"
    except ValueError:
        grid_view, grid_split = view, "this split"
    if block_sizes:
        view, grid_view = view.with_blocks(block_sizes), grid_view.with_blocks(block_sizes)
    grid = grid_view.grid_block(reward)
    tps = view.median(TPS)
    best = view.best_blocks(reward)
    lines = [
        f"table {table.path.name}: target {meta['target']}, drafter {meta['drafter']} ({meta['drafter_hash']}), {meta['settings']}",
        *source,
        f"{len(view)} complete prompts in split {split or 'all'}; reward {reward}; grid block (chosen on {grid_split}): {view.block_sizes[grid]}",
        "",
    ]
    headers = ["category", "prompts", "AR tok/s", *[f"b{b}" for b in view.block_sizes], "grid", "best", "headroom best/grid-1", "best≠grid"]
    acceptance = view.median(ACCEPTANCE)  # the drafter's side of the trade: machine-independent at T=0
    rows, acceptance_rows = [], []
    for category in [*sorted(set(view.categories)), "all"]:
        mask = np.ones(len(view), bool) if category == "all" else view.categories == category
        acceptance_rows.append([category, *[f"{a:.2f}" for a in acceptance[mask].mean(axis=0)]])
        per_prompt_best = tps[mask][np.arange(mask.sum()), best[mask]]
        grid_tps, best_tps = tps[mask, grid].mean(), per_prompt_best.mean()
        rows.append(
            [category, str(mask.sum()), f"{view.ar_tokens_per_second[mask].mean():.2f}"]
            + [f"{v:.2f}" for v in tps[mask].mean(axis=0)]
            + [f"{grid_tps:.2f}", f"{best_tps:.2f}", f"{best_tps / grid_tps - 1:+.1%}", f"{(best[mask] != grid).mean():.0%}"]
        )
    lines.append(markdown_table(rows, headers))
    counts = np.bincount(best, minlength=len(view.block_sizes))
    lines += ["", "prompts whose best block is each size: " + ", ".join(f"b{b}: {c}" for b, c in zip(view.block_sizes, counts))]
    lines += ["", "mean acceptance length (tokens per verify pass, bonus included; mean over prompts):",
              markdown_table(acceptance_rows, ["category", *[f"b{b}" for b in view.block_sizes]])]
    # above T=0 a sample can end at its first token, before any verify pass: say how often, as it pulls means down
    cycles = SAMPLE_COLUMNS.index("cycles")
    ended = sum(int((s[:, cycles] == 0).sum()) for row in view.samples for s in row)
    if ended:
        lines.append(f"{ended} of {sum(len(s) for row in view.samples for s in row)} decodes ended at the prefill's token, before any verify "
                     "pass: counted as acceptance 0, at the tokens/s of one token")
    if isinstance(table, TraceTable) and not table.sampled:
        block = max(view.block_sizes)
        right, auc = first_draft_calibration(table, split, block)
        lines.append(f"first drafted token at block {block}: right at {right:.1%} of anchors; its top-1 probability "
                     f"ranks right above wrong with AUC {auc:.3f} (0.5: uninformative)")
    spreads = [np.std(s[:, TPS]) / np.mean(s[:, TPS]) for row in view.samples for s in row if len(s) > 1]
    if spreads:
        lines.append(
            f"noise between repeats: coefficient of variation of tokens/s, median {np.median(spreads):.1%}, "
            f"90th percentile {np.percentile(spreads, 90):.1%} ({len(spreads)} (prompt, block) cells with repeats)"
        )
    ceiling = view.noise_ceiling(grid, reward)
    if ceiling and ceiling[0] is None:
        lines.append(
            f"noise ceiling: on held-out repeats the per-prompt best beats grid by under {MIN_GAP:.1%} "
            f"({ceiling[1]} prompts with repeats): no gap to close"
        )
    elif ceiling:
        lines.append(
            f"noise ceiling: picking each prompt's best block from one repeat and scoring it on the others closes "
            f"{ceiling[0]:.2f} of the grid-to-best gap ({ceiling[1]} prompts with repeats); "
            "a policy learning from one-repeat labels aims at this, not at 1.0"
        )
    loads = [] if isinstance(table, TraceTable) else [row[0] for row in table.db.execute("SELECT load FROM runs WHERE load IS NOT NULL")]
    if loads:
        lines.append(f"1-min load average while measuring: median {np.median(loads):.2f}, max {max(loads):.2f}")
    return "\n".join(lines)


def first_draft_calibration(table: TraceTable, split: str | None, block: int) -> tuple[float, float]:
    """How often the first drafted token is accepted, over every anchor of an exact trace table, and how
    well the drafter's confidence in it predicts that: the AUC (ties count half), what a per-cycle
    rule that reads the confidence can hope to use."""
    confidence, right = [], []
    for prompt_id, _, _ in table.traced_prompts(split):
        trace = table.trace(prompt_id)
        confidence += [slots[0] for slots in trace.confidence[block]]
        right += [accepted >= 1 for accepted in trace.accepted[block]]
    confidence, right = np.asarray(confidence), np.asarray(right, dtype=bool)
    wrong = np.sort(confidence[~right])
    below = np.searchsorted(wrong, confidence[right], side="left")
    ties = np.searchsorted(wrong, confidence[right], side="right") - below
    auc = float((below + 0.5 * ties).sum() / max(1, right.sum() * len(wrong)))
    return float(right.mean()), auc


def profiles_for(path: str, near: str | None = None) -> list[str]:
    """The shipped profiles made for a trace table's drafter (what `show --profile` takes): measured
    ones first, the one nearest this machine first, or nearest the machine that timed table `near`."""
    table = open_table(path)
    if not isinstance(table, TraceTable):
        raise ValueError(f"{path} is a timed reward table: profiles price trace tables")
    if near is None:
        device = device_name("cpu")  # as env=trace's default profile
    else:
        timed = open_table(near)
        if not isinstance(timed, RewardTable):
            raise ValueError(f"--near {near}: a timed reward table, whose machine orders the profiles; {near} is a trace table")
        device = timed.machines[0]["device"]
    return shipped_profiles(table.meta["drafter_hash"], near=device)


def merge(out: str, inputs: list[str]) -> str:
    first = open_table(inputs[0])
    kind = type(first)
    table = kind.create_or_resume(out, first.meta)
    added = 0
    for path in inputs:
        other = open_table(path)
        if not isinstance(other, kind):
            raise ValueError(f"{path} is a {type(other).__name__}, {inputs[0]} a {kind.__name__}: merge tables of one kind")
        added += table.merge_from(other)
    held = len(table.done_prompts()) if isinstance(table, TraceTable) else len(table.done_keys())
    return f"{out}: {added} rows added, {held} {'traced prompts' if isinstance(table, TraceTable) else 'timed decodes'} in all"


def publish(source: str, destination: str, repeats: int | None = None) -> str:
    """Copy `source` to `destination` consistently (safe while a collector writes it), compacted; with
    `repeats`, a reward table keeps only its first `repeats` timed repeats (a table still being collected)."""
    table = open_table(source)  # validate before copying
    if repeats is not None and not (isinstance(table, RewardTable) and repeats >= 1):
        raise ValueError(f"--repeats {repeats!r}: a positive count, and only for a timed reward table ({source} is a {type(table).__name__})")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(tmp) as dst:
        src.backup(dst)
        if repeats is not None:
            dst.execute("DELETE FROM runs WHERE repeat >= ?", (repeats,))
        dst.commit()
        dst.execute("VACUUM")
    os.replace(tmp, destination)
    summary = open_table(str(destination)).summary()
    return f"{destination}: {summary.get('runs', summary.get('prompts'))} rows, {destination.stat().st_size / 1e6:.2f} MB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("show", help="headroom, per category, noise")
    p.add_argument("table", help="a shipped table name or a .sqlite path")
    p.add_argument("--split", choices=["train", "val", "test"], default=None)
    p.add_argument("--reward", choices=REWARDS, default=DEFAULT_REWARD)
    p.add_argument("--block-sizes", type=int, nargs="+", default=None, help="only these block sizes, e.g. 1 4 8")
    p.add_argument("--profile", default=None, help="trace tables: the device profile to simulate seconds under (name or JSON path)")
    p = commands.add_parser("profiles", help="the shipped device profiles that can price a trace table, one per line")
    p.add_argument("table", help="a shipped trace table name or a .sqlite path")
    p.add_argument("--near", default=None, help="a timed table: list the profile measured nearest its machine first (default: this machine)")
    p = commands.add_parser("merge", help="merge shards (same settings) into one table")
    p.add_argument("out")
    p.add_argument("inputs", nargs="+")
    p = commands.add_parser("publish", help="consistent compact snapshot of a table (e.g. into bp_rl/data/tables)")
    p.add_argument("source")
    p.add_argument("destination")
    p.add_argument("--repeats", type=int, default=None, help="reward tables: keep only the first N repeats")
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            print(show(args.table, args.split, args.reward, args.block_sizes, args.profile))
        elif args.command == "profiles":
            print("\n".join(profiles_for(args.table, args.near)))
        elif args.command == "merge":
            print(merge(args.out, args.inputs))
        else:
            print(publish(args.source, args.destination, args.repeats))
    except (ValueError, FileNotFoundError) as err:  # bad input: the message names the value and the choices
        parser.error(str(err))


if __name__ == "__main__":
    main()
