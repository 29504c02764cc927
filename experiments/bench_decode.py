"""Decoding benchmark: every block size against autoregressive decoding, on the same prompts, in one run.

For each block size b it prints tokens/s, mean acceptance length and speedup over autoregressive
decoding, plus the engine's ceiling on this device: an oracle drafter that proposes the target's
own greedy continuation (every draft accepted) should reach b / t_verify(b), where t_verify(b)
is the raw time of one target forward over b tokens, measured in the same run. Speeds are only
compared as ratios within this run. Do not run it beside another heavy job: it skews every number.

    python experiments/bench_decode.py --drafter prompt-lookup --block-sizes 1 2 4 8 16 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections import defaultdict
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import DynamicCache

from bp_rl import OracleDrafter, Target, load_drafter, load_target, speculative_generate
from bp_rl.timing import cpu_threads_note, device_name, measure

# Used until a prompt suite is given with --prompts: a few varied requests.
DEFAULT_PROMPTS = [
    ("code", "Write a Python function that returns the n-th Fibonacci number iteratively."),
    ("code", "Write a Python function `is_palindrome(s)` that ignores case and spaces, with a docstring."),
    ("chat", "Give me three tips for staying focused while working from home."),
    ("chat", "Explain what a hash table is to a beginner programmer."),
    ("prose", "Continue the story: The lighthouse keeper had not seen a ship in eleven days when"),
    ("prose", "Describe the water cycle in a short paragraph."),
]


@dataclass
class Row:
    mode: str  # "drafter", "oracle" or "autoregressive"
    block_size: int
    category: str
    new_tokens: int
    decode_seconds: float
    acceptance: list[int]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="smollm2-135m")
    p.add_argument("--drafter", default=None, help="drafter folder or name: prompt-lookup, random-block (untrained)")
    p.add_argument("--block-sizes", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 12, 16])
    p.add_argument("--prompts", default=None, help="JSONL file with 'text' and 'category' per line")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True, help="apply the chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--stop-at-eos", action="store_true", help="stop at EOS (default: always decode max-new-tokens)")
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle-drafter ceiling")
    p.add_argument("--verify-repeats", type=int, default=20, help="timed repeats of each raw verify forward")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write all rows and the summary as JSON here")
    return p.parse_args()


def load_prompts(args, target: Target) -> list[tuple[str, str]]:
    if args.prompts:
        with open(args.prompts) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        prompts = [(r["category"], r["text"]) for r in rows]
    else:
        prompts = DEFAULT_PROMPTS
    prompts = prompts[: args.limit]
    if args.chat and target.tokenizer is not None and target.tokenizer.chat_template:
        return [
            (cat, target.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True))
            for cat, text in prompts
        ]
    return prompts


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
    drafter = load_drafter(args.drafter, target) if args.drafter else None
    sizes = sorted(set(args.block_sizes) | {1})
    if drafter is None:
        print("no --drafter: measuring only autoregressive decoding and the oracle ceiling")
    prompts = load_prompts(args, target)
    stop = None if args.stop_at_eos else []
    decode = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, stop_token_ids=stop)

    # warm-up: first calls pay for lazy initialisation and allocator growth
    speculative_generate(target, drafter, prompts[0][1], max(sizes) if drafter else 1, **{**decode, "max_new_tokens": 8}, seed=0)

    rows: list[Row] = []
    rng = random.Random(args.seed)
    for i, (category, prompt) in enumerate(tqdm(prompts, desc="prompts")):
        ar = speculative_generate(target, None, prompt, 1, **decode, seed=i)
        rows.append(Row("autoregressive", 1, category, ar.stats.new_tokens, ar.stats.decode_seconds, ar.stats.acceptance_lengths))
        jobs = [("drafter", b) for b in sizes if b > 1 and drafter is not None]
        if not args.no_oracle and args.temperature == 0:
            oracle = OracleDrafter(ar.stats.prompt_tokens, ar.token_ids)
            jobs += [("oracle", b) for b in sizes if b > 1]
        rng.shuffle(jobs)  # random order, so slow drift does not favour one block size
        for mode, b in jobs:
            out = speculative_generate(target, drafter if mode == "drafter" else oracle, prompt, b, **decode, seed=i)
            if args.temperature == 0 and out.token_ids != ar.token_ids:
                raise AssertionError(f"lossless decoding violated at block {b} ({mode}) on prompt {i}")
            rows.append(Row(mode, b, category, out.stats.new_tokens, out.stats.decode_seconds, out.stats.acceptance_lengths))

    # raw verify cost on a context as long as a typical mid-generation one
    context = target.encode(prompts[0][1])
    context = torch.cat([context, context.new_full((args.max_new_tokens // 2,), int(context[-1]))])
    t_verify = {b: verify_forward_seconds(target, context, b, args.verify_repeats) for b in sizes}

    summary = summarise(rows, sizes, t_verify)
    print_report(args, target, drafter, prompts, summary, t_verify)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "device": device_name(target.device), "summary": summary, "rows": [r.__dict__ for r in rows]}, f, indent=1)


def throughput(rows: list[Row]) -> float:
    return sum(r.new_tokens for r in rows) / sum(r.decode_seconds for r in rows)


def mean_acceptance(rows: list[Row]) -> float:
    lengths = [a for r in rows for a in r.acceptance]
    return statistics.mean(lengths) if lengths else float("nan")


def summarise(rows: list[Row], sizes: list[int], t_verify: dict[int, float]) -> dict:
    by = defaultdict(list)
    for r in rows:
        # autoregressive decoding is block size 1 of every mode
        for mode in ("autoregressive", "drafter", "oracle") if r.mode == "autoregressive" else (r.mode,):
            by[(mode, r.block_size)].append(r)
            by[(mode, r.block_size, r.category)].append(r)
    measured_modes = {r.mode for r in rows}
    ar_rate = throughput(by[("autoregressive", 1)])
    summary = {"autoregressive_tokens_per_second": ar_rate, "blocks": {}, "per_category": {}}
    for b in sizes:
        entry = {"verify_seconds": t_verify[b], "bound_tokens_per_second": b / t_verify[b]}
        for mode in ("drafter", "oracle"):
            group = by.get((mode, b))
            if group and mode in measured_modes:
                rate = throughput(group)
                entry[mode] = {"tokens_per_second": rate, "speedup": rate / ar_rate, "mean_acceptance": mean_acceptance(group)}
        if "oracle" in entry:
            entry["oracle"]["ceiling_ratio"] = entry["oracle"]["tokens_per_second"] / entry["bound_tokens_per_second"]
        summary["blocks"][b] = entry
    for category in sorted({r.category for r in rows}) if "drafter" in measured_modes else []:
        ar_cat = throughput(by[("autoregressive", 1, category)])
        summary["per_category"][category] = {
            b: {
                "tokens_per_second": throughput(by[("drafter", b, category)]),
                "speedup": throughput(by[("drafter", b, category)]) / ar_cat,
                "mean_acceptance": mean_acceptance(by[("drafter", b, category)]),
            }
            for b in sizes
            if by.get(("drafter", b, category))
        }
    return summary


def print_report(args, target, drafter, prompts, summary, t_verify) -> None:
    print(f"\ndevice: {device_name(target.device)}; {cpu_threads_note()}")
    print(
        f"target: {target.name} ({target.dtype}); drafter: {args.drafter or 'none'}; prompts: {len(prompts)}; "
        f"max_new_tokens: {args.max_new_tokens}; temperature: {args.temperature}"
    )
    print(f"autoregressive: {summary['autoregressive_tokens_per_second']:.2f} tokens/s\n")
    print("| block | drafter tok/s | speedup vs AR | mean acceptance | oracle tok/s | oracle speedup | t_verify ms | bound b/t_verify | oracle/bound |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b, e in summary["blocks"].items():
        d, o = e.get("drafter"), e.get("oracle")
        print(
            f"| {b} | {d['tokens_per_second']:.2f} | {d['speedup']:.2f}x | {d['mean_acceptance']:.2f} | " if d else f"| {b} | - | - | - | ",
            end="",
        )
        print(
            f"{o['tokens_per_second']:.2f} | {o['speedup']:.2f}x | {t_verify[b] * 1e3:.1f} | {e['bound_tokens_per_second']:.2f} | {o['ceiling_ratio']:.2f} |"
            if o else f"- | - | {t_verify[b] * 1e3:.1f} | {e['bound_tokens_per_second']:.2f} | - |"
        )
    if any(summary["per_category"].values()):
        print("\nper category (drafter): tokens/s / speedup / mean acceptance")
        for category, blocks in summary["per_category"].items():
            cells = "  ".join(f"b{b}: {v['tokens_per_second']:.1f}/{v['speedup']:.2f}x/{v['mean_acceptance']:.2f}" for b, v in blocks.items())
            print(f"  {category:>6}: {cells}")


if __name__ == "__main__":
    main()
