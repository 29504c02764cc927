"""Decoding benchmark: every block size against autoregressive decoding, on the same prompts, in one run.

For each block size b it prints tokens/s, mean acceptance length and speedup over autoregressive
decoding, overall and per prompt category, and how often a prompt's own best block differs
from the best fixed block. It also measures the engine's ceiling on this device: an oracle
drafter that proposes the target's own greedy continuation (every draft accepted) should reach
b / t_verify(b), where t_verify(b) is the raw time of one target forward over b tokens, measured
in the same run. Speeds are only compared as ratios within one run. Do not run it beside
another heavy job: it skews every number.

    python experiments/bench_decode.py --drafter prompt-lookup --split test --max-new-tokens 64
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
from transformers import DynamicCache

from bp_rl import OracleDrafter, Target, load_drafter, load_target, speculative_generate
from bp_rl.prompts import DEFAULT_SUITE, SPLITS, Prompt, load_prompts, render_prompt
from bp_rl.timing import machine_load_note, device_name, measure


@dataclass
class Row:
    mode: str  # "drafter" or "oracle"; block size 1 of both is autoregressive decoding
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
        "--drafter", default="default",
        help="drafter folder or name: default (the shipped drafter for --target), prompt-lookup, random-block (untrained), none",
    )
    p.add_argument("--block-sizes", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 12, 16])
    p.add_argument("--suite", default=DEFAULT_SUITE, help="prompt suite name or JSONL path")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--category", default=None, help="only this category")
    p.add_argument("--per-category", type=int, default=None, help="only the first N prompts of each category")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each (prompt, block); the median is used per prompt")
    p.add_argument("--stop-at-eos", action="store_true", help="stop at EOS (default: always decode max-new-tokens)")
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle-drafter ceiling")
    p.add_argument("--verify-repeats", type=int, default=20, help="timed repeats of each raw verify forward")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write all rows and the summary as JSON here")
    return p.parse_args()


def select_prompts(args) -> list[Prompt]:
    prompts = load_prompts(args.suite, split=args.split, category=args.category)
    if args.per_category is None:
        return prompts
    seen: Counter[str] = Counter()
    kept = []
    for p in prompts:
        seen[p.category] += 1
        if seen[p.category] <= args.per_category:
            kept.append(p)
    return kept


def verify_forward_seconds(target: Target, context_ids: torch.Tensor, block_size: int, repeats: int) -> float:
    """Median time of one target forward over `block_size` new tokens after `context_ids` (KV cached)."""
    cache = DynamicCache()
    with torch.inference_mode():
        target.model(input_ids=context_ids[None], past_key_values=cache, use_cache=True, logits_to_keep=1)
        block = context_ids[-block_size:][None]

        def forward():
            target.model(input_ids=block, past_key_values=cache, use_cache=True)
            cache.crop(-block_size)

        return measure(forward, target.device, warmup=2, repeats=repeats).median


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    target = load_target(args.target, device=args.device)
    drafter = load_drafter(args.drafter, target) if args.drafter != "none" else None
    sizes = sorted(set(args.block_sizes) | {1})
    if drafter is None:
        print("--drafter none: measuring only autoregressive decoding and the oracle ceiling")
    prompts = select_prompts(args)
    texts = [render_prompt(p, target.tokenizer) for p in prompts]
    decode = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, stop_token_ids=None if args.stop_at_eos else [])

    # warm-up: first calls pay for lazy initialisation and allocator growth
    speculative_generate(target, drafter, texts[0], max(sizes) if drafter else 1, **{**decode, "max_new_tokens": 8}, seed=0)

    rows: list[Row] = []
    rng = random.Random(args.seed)
    for i, (prompt, text) in enumerate(zip(tqdm(prompts, desc="prompts"), texts)):
        reference = speculative_generate(target, None, text, 1, **decode, seed=i)
        jobs = [("drafter", b) for b in sizes for _ in range(args.repeats) if drafter is not None or b == 1]
        if not args.no_oracle and args.temperature == 0:
            oracle = OracleDrafter(reference.stats.prompt_tokens, reference.token_ids)
            jobs += [("oracle", b) for b in sizes if b > 1 for _ in range(args.repeats)]
        rng.shuffle(jobs)  # random order, so slow drift does not favour one block size
        for mode, b in jobs:
            out = speculative_generate(target, drafter if mode == "drafter" else oracle, text, b, **decode, seed=i)
            if args.temperature == 0 and out.token_ids != reference.token_ids:
                raise AssertionError(f"lossless decoding violated at block {b} ({mode}) on prompt {prompt.id}")
            s = out.stats
            rows.append(Row(mode, b, prompt.id, prompt.category, s.new_tokens, s.decode_seconds, s.acceptance_lengths))

    # raw verify cost on a context as long as a typical mid-generation one
    context = target.encode(texts[0])
    context = torch.cat([context, context.new_full((args.max_new_tokens // 2,), int(context[-1]))])
    t_verify = {b: verify_forward_seconds(target, context, b, args.verify_repeats) for b in sizes}

    summary = summarise(rows, sizes, t_verify, has_drafter=drafter is not None)
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


def summarise(rows: list[Row], sizes: list[int], t_verify: dict[int, float], has_drafter: bool) -> dict:
    # block size 1 is autoregressive decoding, the same rows for both modes
    ar_rows = [r for r in rows if r.mode == "drafter" and r.block_size == 1]
    group = defaultdict(list)
    for r in rows:
        for mode in ("drafter", "oracle") if r.block_size == 1 else (r.mode,):
            group[(mode, r.block_size)].append(r)
            group[(mode, r.block_size, r.category)].append(r)
    ar_rate = throughput(ar_rows)
    summary: dict = {"autoregressive_tokens_per_second": ar_rate, "blocks": {}, "per_category": {}}
    for b in sizes:
        entry: dict = {"verify_seconds": t_verify[b], "bound_tokens_per_second": b / t_verify[b]}
        if has_drafter:
            entry["drafter"] = block_stats(group[("drafter", b)], ar_rate)
        if any(r.mode == "oracle" for r in rows):
            entry["oracle"] = block_stats(group[("oracle", b)], ar_rate)
            # the bound covers verify passes only, so count the tokens they committed (not the prefill's)
            oracle = group[("oracle", b)]
            verify_rate = sum(sum(r.acceptance) for r in oracle) / sum(r.decode_seconds for r in oracle)
            entry["oracle"]["ceiling_ratio"] = verify_rate / entry["bound_tokens_per_second"]
        summary["blocks"][b] = entry
    if not has_drafter:
        return summary
    best_fixed = max(sizes, key=lambda b: summary["blocks"][b]["drafter"]["tokens_per_second"])
    best = best_blocks([r for r in rows if r.mode == "drafter"])
    category_of = {r.prompt_id: r.category for r in rows}
    summary["best_fixed_block"] = best_fixed
    for category in sorted({r.category for r in rows}):
        ar_cat = throughput(group[("drafter", 1, category)])
        cat_best = [b for pid, b in best.items() if category_of[pid] == category]
        summary["per_category"][category] = {
            "blocks": {b: block_stats(group[("drafter", b, category)], ar_cat) for b in sizes},
            "prompts": len(cat_best),
            "share_best_differs_from_fixed": sum(b != best_fixed for b in cat_best) / len(cat_best),
            "best_block_counts": dict(sorted(Counter(cat_best).items())),
        }
    summary["share_best_differs_from_fixed"] = sum(b != best_fixed for b in best.values()) / len(best)
    return summary


def print_report(args, target: Target, prompts: list[Prompt], summary: dict) -> None:
    print(f"\ndevice: {device_name(target.device)}; {machine_load_note()}")
    print(
        f"target: {target.name} ({target.dtype}); drafter: {args.drafter or 'none'}; suite {args.suite}/{args.split}: "
        f"{len(prompts)} prompts; max_new_tokens {args.max_new_tokens}; temperature {args.temperature}; repeats {args.repeats}"
    )
    print(f"autoregressive: {summary['autoregressive_tokens_per_second']:.2f} tokens/s\n")
    print("| block | drafter tok/s | speedup vs AR | mean acceptance | oracle tok/s | oracle speedup | t_verify ms | bound b/t_verify | oracle/bound |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b, e in summary["blocks"].items():
        d, o = e.get("drafter"), e.get("oracle")
        cells = [f"{d['tokens_per_second']:.2f}", f"{d['speedup']:.2f}x", f"{d['mean_acceptance']:.2f}"] if d else ["-"] * 3
        cells += [f"{o['tokens_per_second']:.2f}", f"{o['speedup']:.2f}x"] if o else ["-"] * 2
        cells += [f"{e['verify_seconds'] * 1e3:.1f}", f"{e['bound_tokens_per_second']:.2f}", f"{o['ceiling_ratio']:.2f}" if o else "-"]
        print(f"| {b} | " + " | ".join(cells) + " |")
    if not summary["per_category"]:
        return
    print(f"\nper category (drafter); best fixed block overall: {summary['best_fixed_block']}")
    sizes = list(summary["blocks"])
    print("| category | prompts | " + " | ".join(f"b{b} tok/s (speedup, accept)" for b in sizes) + " | best block differs from fixed | best-block counts |")
    print("|---|---:|" + "---:|" * len(sizes) + "---:|---|")
    for category, c in summary["per_category"].items():
        cells = [f"{v['tokens_per_second']:.1f} ({v['speedup']:.2f}x, {v['mean_acceptance']:.2f})" for v in c["blocks"].values()]
        counts = ", ".join(f"b{b}: {n}" for b, n in c["best_block_counts"].items())
        print(f"| {category} | {c['prompts']} | " + " | ".join(cells) + f" | {c['share_best_differs_from_fixed']:.0%} | {counts} |")
    print(f"\nshare of prompts whose best block differs from the best fixed block: {summary['share_best_differs_from_fixed']:.0%}")


if __name__ == "__main__":
    main()
