"""Does the replayed table agree with reality? Decode N prompts live at every block size and compare.

    python experiments/validate_replay.py --split test --prompts 10     # the default table, on its own CPU model

Uses the table's own target, drafter and decoding settings and the same measurement function
that filled it. Per prompt: the Spearman rank correlation between live and table tokens/s over
the block sizes, and whether both pick the same best block; per block size: the ratio of live
to table median tokens/s. Run it on an otherwise idle machine (or pause the collector).
"""

from __future__ import annotations

import argparse
import random

import numpy as np
from tqdm import tqdm

from bp_rl import load_drafter, load_target
from bp_rl.measurement import AUTOREGRESSIVE, DecodeSettings, measure
from bp_rl.prompts import load_prompts, render_prompt
from bp_rl.outcomes import TPS
from bp_rl.rewards import RewardTable
from bp_rl.timing import device_name, machine_load_note
from envs import DEFAULT_TABLE
from reporting import markdown_table


def ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(float)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default=DEFAULT_TABLE)
    parser.add_argument("--split", default="test")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    table = RewardTable.load(args.table)
    meta = table.meta
    view = table.view(next(iter(table.feature_sets)), args.split)
    chosen = sorted(random.Random(args.seed).sample(range(len(view)), min(args.prompts, len(view))))
    target = load_target(meta["target"])
    drafter = load_drafter(meta["drafter"], target)
    settings = DecodeSettings(**meta["settings"])
    by_id = {p.id: p for p in load_prompts(meta["suite"])}
    blocks = [AUTOREGRESSIVE, *view.block_sizes]
    measure(target, drafter, [1, 2, 3], max(view.block_sizes), settings)  # warm-up

    jobs = [(i, b) for i in chosen for b in blocks]
    random.Random(args.seed).shuffle(jobs)
    live: dict[tuple[int, int], float] = {}
    for i, block in tqdm(jobs, unit="decode"):
        prompt = by_id[view.prompt_ids[i]]
        result = measure(target, drafter, target.encode(render_prompt(prompt, target.tokenizer)), block, settings, seed=args.seed)
        live[(i, block)] = result.stats.tokens_per_second

    replay = view.median(TPS)
    rows, correlations, same_best = [], [], 0
    for i in chosen:
        live_row = np.array([live[(i, b)] for b in view.block_sizes])
        rho = spearman(live_row, replay[i])
        agree = live_row.argmax() == replay[i].argmax()
        correlations.append(rho)
        same_best += agree
        rows.append([view.prompt_ids[i], f"{rho:+.2f}", str(view.block_sizes[replay[i].argmax()]), str(view.block_sizes[live_row.argmax()])])
    print(machine_load_note())
    here, measured_on = device_name(target.device), [m["device"] for m in table.machines]
    if here not in measured_on:
        print(f"NOTE: the table was timed on {measured_on}, this run on {here}: the two disagree by the machines' difference too")
    print(markdown_table(rows, ["prompt", "Spearman ρ (block ranking)", "table best", "live best"]))
    ratio_rows = [["AR", f"{np.median([live[(i, AUTOREGRESSIVE)] / view.ar_tokens_per_second[i] for i in chosen]):.3f}"]]
    ratio_rows += [
        [str(b), f"{np.median([live[(i, b)] for i in chosen]) / np.median(replay[chosen, k]):.3f}"] for k, b in enumerate(view.block_sizes)
    ]
    print()
    print(markdown_table(ratio_rows, ["block", "live / table median tokens/s"]))
    print(
        f"\nmean Spearman ρ {np.mean(correlations):+.2f} over {len(chosen)} prompts; "
        f"same best block for {same_best}/{len(chosen)}"
    )


if __name__ == "__main__":
    main()
