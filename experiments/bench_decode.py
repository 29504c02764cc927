"""Decoding benchmark: every block size of one or more drafters against autoregressive decoding, on the
same prompts, in one run.

For each drafter and block size b it prints tokens/s, mean acceptance length and speedup over
autoregressive decoding, overall and per prompt category, and how often a prompt's own best block
differs from the best fixed block. It times the raw passes in the same run: t_verify(b), one target
forward over b tokens, and t_draft(b), one drafter proposal of b - 1 tokens, with its share of a
1-token target step. And it measures the engine's ceiling on this device: a continuation drafter that
proposes the target's own greedy continuation (every draft accepted) should reach b / t_verify(b).
Speeds are only compared as ratios within one run. Do not run it beside another heavy job: it
skews every number.

    python experiments/bench_decode.py --drafter default prompt-lookup --split test --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from bp_rl import ContinuationDrafter, Target, load_drafter, load_target, speculative_generate
from bp_rl.outcomes import DEFAULT_BLOCK_SIZES
from bp_rl.profiles import draft_seconds, verify_forward_seconds
from bp_rl.prompts import DEFAULT_SUITE, SPLITS, Prompt, first_per_category, load_prompts, render_prompt
from bp_rl.timing import device_name, machine_load_note


AR = "autoregressive"  # block size 1: the same rows for every drafter
CEILING = "continuation-drafter"  # proposes the target's own greedy continuation: the engine's ceiling


@dataclass
class Row:
    mode: str  # a drafter name, CEILING, or AR (block size 1)
    block_size: int
    prompt_id: str
    category: str
    new_tokens: int
    decode_seconds: float
    acceptance: list[int]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="smollm2-135m")
    p.add_argument(
        "--drafter", nargs="+", default=["default"],
        help="one or more drafter folders or names, all measured in the same run: default (the shipped drafter for "
        "--target), a shipped drafter's name, prompt-lookup, random-block (untrained); or none",
    )
    p.add_argument("--block-sizes", type=int, nargs="+", default=list(DEFAULT_BLOCK_SIZES))
    p.add_argument("--suite", default=DEFAULT_SUITE, help="prompt suite name or JSONL path")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--category", default=None, help="only this category")
    p.add_argument("--per-category", type=int, default=None, help="only the first N prompts of each category")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each (prompt, block); the median is used per prompt")
    p.add_argument("--stop-at-eos", action="store_true", help="stop at EOS (default: always decode max-new-tokens)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the continuation-drafter ceiling")
    p.add_argument("--verify-repeats", type=int, default=20, help="timed repeats of each raw verify forward and draft pass")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write all rows and the summary as JSON here")
    return p.parse_args()


def select_prompts(args) -> list[Prompt]:
    prompts = load_prompts(args.suite, split=args.split, category=args.category)
    return prompts if args.per_category is None else first_per_category(prompts, args.per_category)


def draft_vocabulary_coverage(drafter, token_ids: list[int]) -> float | None:
    """Share of the target's tokens that the drafter's (reduced) vocabulary can propose."""
    ids = getattr(drafter, "draft_token_ids", None)
    if ids is None or not token_ids:
        return None
    return float(torch.isin(torch.tensor(token_ids), ids.cpu()).float().mean())


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    target = load_target(args.target, device=args.device)
    names = [] if args.drafter == ["none"] else args.drafter
    if "none" in names:
        raise SystemExit(f"--drafter none measures autoregressive decoding alone; it cannot be combined with {names}")
    drafters = {name: load_drafter(name, target) for name in names}
    sizes = sorted(set(args.block_sizes) | {1})
    if not drafters:
        print("--drafter none: measuring only autoregressive decoding and the ceiling")
    prompts = select_prompts(args)
    texts = [render_prompt(p, target.tokenizer) for p in prompts]
    decode = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, stop_token_ids=None if args.stop_at_eos else [])

    # warm-up: first calls pay for lazy initialisation and allocator growth
    for drafter in drafters.values():
        speculative_generate(target, drafter, texts[0], max(sizes), **{**decode, "max_new_tokens": 8}, seed=0)

    rows: list[Row] = []
    written: list[int] = []  # the target's own tokens, for the draft vocabulary's coverage
    rng = random.Random(args.seed)
    for i, (prompt, text) in enumerate(zip(tqdm(prompts, desc="prompts"), texts)):
        reference = speculative_generate(target, None, text, 1, **decode, seed=i)
        written += reference.token_ids
        jobs = [(AR, 1)] * args.repeats + [(name, b) for name in drafters for b in sizes if b > 1 for _ in range(args.repeats)]
        if not args.no_ceiling and args.temperature == 0:
            ceiling = ContinuationDrafter(reference.stats.prompt_tokens, reference.token_ids)
            jobs += [(CEILING, b) for b in sizes if b > 1 for _ in range(args.repeats)]
        rng.shuffle(jobs)  # random order, so slow drift does not favour one drafter or block size
        for mode, b in jobs:
            drafter = ceiling if mode == CEILING else drafters.get(mode)  # AR: no drafter
            out = speculative_generate(target, drafter, text, b, **decode, seed=i)
            if args.temperature == 0 and out.token_ids != reference.token_ids:
                raise AssertionError(f"lossless decoding violated at block {b} ({mode}) on prompt {prompt.id}")
            s = out.stats
            rows.append(Row(mode, b, prompt.id, prompt.category, s.new_tokens, s.decode_seconds, s.acceptance_lengths))

    # raw pass costs on a context as long as a typical mid-generation one
    context = target.encode(texts[0])
    context = torch.cat([context, context.new_full((args.max_new_tokens // 2,), int(context[-1]))])
    t_verify = {b: verify_forward_seconds(target, context, b, args.verify_repeats) for b in sizes}
    t_draft = {name: {b: draft_seconds(target, d, context, b, args.verify_repeats) for b in sizes if b > 1} for name, d in drafters.items()}

    summary = summarise(rows, sizes, t_verify, list(drafters))
    for name, drafter in drafters.items():
        summary["drafters"][name]["draft_seconds"] = t_draft[name]
        summary["drafters"][name]["draft_vocabulary_coverage"] = draft_vocabulary_coverage(drafter, written)
    print_report(args, target, prompts, summary)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"args": vars(args), "device": device_name(target.device), "summary": summary, "rows": [asdict(r) for r in rows]},
                f,
                indent=1,
            )


def throughput(rows: list[Row]) -> float:
    return sum(r.new_tokens for r in rows) / sum(r.decode_seconds for r in rows)


def mean_acceptance(rows: list[Row]) -> float:
    return statistics.mean(a for r in rows for a in r.acceptance)


def block_stats(rows: list[Row], ar_rate: float) -> dict:
    rate = throughput(rows)
    return {"tokens_per_second": rate, "speedup": rate / ar_rate, "mean_acceptance": mean_acceptance(rows)}


def best_blocks(rows: list[Row]) -> dict[str, int]:
    """Each prompt's best block size by its median tokens/s over repeats."""
    rates: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        rates[r.prompt_id][r.block_size].append(r.new_tokens / r.decode_seconds)
    return {pid: max(by_block, key=lambda b: statistics.median(by_block[b])) for pid, by_block in rates.items()}


def summarise(rows: list[Row], sizes: list[int], t_verify: dict[int, float], drafters: list[str]) -> dict:
    # block size 1 is autoregressive decoding: the same rows stand in every drafter's block-1 entry
    group = defaultdict(list)
    modes = [*drafters, CEILING] if any(r.mode == CEILING for r in rows) else list(drafters)
    for r in rows:
        for mode in modes if r.mode == AR else (r.mode,):
            group[(mode, r.block_size)].append(r)
            group[(mode, r.block_size, r.category)].append(r)
    ar_rows = [r for r in rows if r.mode == AR]
    ar_rate = throughput(ar_rows)
    summary: dict = {"autoregressive_tokens_per_second": ar_rate, "blocks": {}, "drafters": {}}
    for b in sizes:
        entry: dict = {"verify_seconds": t_verify[b], "bound_tokens_per_second": b / t_verify[b]}
        if CEILING in modes and b > 1:
            entry["ceiling"] = block_stats(group[(CEILING, b)], ar_rate)
            # the bound covers verify passes only, so count the tokens they committed (not the prefill's)
            ceiling = group[(CEILING, b)]
            verify_rate = sum(sum(r.acceptance) for r in ceiling) / sum(r.decode_seconds for r in ceiling)
            entry["ceiling"]["ceiling_ratio"] = verify_rate / entry["bound_tokens_per_second"]
        summary["blocks"][b] = entry
    category_of = {r.prompt_id: r.category for r in rows}
    categories = sorted(set(category_of.values()))
    for name in drafters:
        blocks = {b: block_stats(group[(name, b)], ar_rate) for b in sizes}
        best_fixed = max(sizes, key=lambda b: blocks[b]["tokens_per_second"])
        best = best_blocks([r for r in rows if r.mode in (name, AR)])
        per_category = {}
        for category in categories:
            ar_cat = throughput(group[(name, 1, category)])
            cat_best = [b for pid, b in best.items() if category_of[pid] == category]
            cat_blocks = {b: block_stats(group[(name, b, category)], ar_cat) for b in sizes}
            per_category[category] = {
                "blocks": cat_blocks,
                "best_fixed_block": max(sizes, key=lambda b: cat_blocks[b]["tokens_per_second"]),
                "prompts": len(cat_best),
                "share_best_differs_from_fixed": sum(b != best_fixed for b in cat_best) / len(cat_best),
                "best_block_counts": dict(sorted(Counter(cat_best).items())),
            }
        summary["drafters"][name] = {
            "blocks": blocks,
            "best_fixed_block": best_fixed,
            "per_category": per_category,
            "share_best_differs_from_fixed": sum(b != best_fixed for b in best.values()) / len(best),
        }
    return summary


def print_report(args, target: Target, prompts: list[Prompt], summary: dict) -> None:
    print(f"\ndevice: {device_name(target.device)}; {machine_load_note()}")
    print(
        f"target: {target.name} ({target.dtype}); drafters: {', '.join(summary['drafters']) or 'none'}; suite {args.suite}/{args.split}: "
        f"{len(prompts)} prompts; max_new_tokens {args.max_new_tokens}; temperature {args.temperature}; repeats {args.repeats}"
    )
    print(f"autoregressive: {summary['autoregressive_tokens_per_second']:.2f} tokens/s\n")
    step = summary["blocks"][1]["verify_seconds"]
    print(f"raw passes (median of {args.verify_repeats}); a 1-token target step takes {step * 1e3:.1f} ms")
    names = list(summary["drafters"])
    print("| block | t_verify ms | bound b/t_verify | " + " | ".join(f"{n}: t_draft ms (share of a step)" for n in names) + " | ceiling tok/s | ceiling/bound |")
    print("|---:|---:|---:|" + "---:|" * len(names) + "---:|---:|")
    for b, e in summary["blocks"].items():
        drafts = [summary["drafters"][n]["draft_seconds"].get(b) for n in names]
        cells = [f"{e['verify_seconds'] * 1e3:.1f}", f"{e['bound_tokens_per_second']:.2f}"]
        cells += [f"{t * 1e3:.1f} ({t / step:.0%})" if t is not None else "-" for t in drafts]
        o = e.get("ceiling")
        cells += [f"{o['tokens_per_second']:.2f}", f"{o['ceiling_ratio']:.2f}"] if o else ["-", "-"]
        print(f"| {b} | " + " | ".join(cells) + " |")
    for name, d in summary["drafters"].items():
        coverage = d["draft_vocabulary_coverage"]
        note = f"; its draft vocabulary covers {coverage:.1%} of the target's tokens on these prompts" if coverage is not None else ""
        print(f"\n{name}: best fixed block {d['best_fixed_block']}{note}")
        print("| block | tok/s | speedup vs AR | mean acceptance |")
        print("|---:|---:|---:|---:|")
        for b, v in d["blocks"].items():
            print(f"| {b} | {v['tokens_per_second']:.2f} | {v['speedup']:.2f}x | {v['mean_acceptance']:.2f} |")
        sizes = list(d["blocks"])
        print("| category | prompts | " + " | ".join(f"b{b} tok/s (speedup, accept)" for b in sizes) + " | best fixed | best block differs from fixed | best-block counts |")
        print("|---|---:|" + "---:|" * len(sizes) + "---:|---:|---|")
        for category, c in d["per_category"].items():
            cells = [f"{v['tokens_per_second']:.1f} ({v['speedup']:.2f}x, {v['mean_acceptance']:.2f})" for v in c["blocks"].values()]
            counts = ", ".join(f"b{b}: {n}" for b, n in c["best_block_counts"].items())
            print(f"| {category} | {c['prompts']} | " + " | ".join(cells) + f" | b{c['best_fixed_block']} | {c['share_best_differs_from_fixed']:.0%} | {counts} |")
        print(f"share of prompts whose best block differs from the best fixed block: {d['share_best_differs_from_fixed']:.0%}")
    if len(names) > 1:
        print("\nbest fixed block per category, each drafter (tok/s, speedup vs AR)")
        print("| category | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for category in summary["drafters"][names[0]]["per_category"]:
            cells = []
            for n in names:
                c = summary["drafters"][n]["per_category"][category]
                v = c["blocks"][c["best_fixed_block"]]
                cells.append(f"b{c['best_fixed_block']}: {v['tokens_per_second']:.1f} ({v['speedup']:.2f}x)")
            print(f"| {category} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
