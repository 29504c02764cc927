"""Command line: `python -m bp_rl.generate --prompt "..." --block-size 8 [--drafter PATH]`.

Prints the generated text and the decoding statistics (as JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import sys

from bp_rl.decoding import autoregressive_generate, speculative_generate
from bp_rl.drafters import load_drafter
from bp_rl.models import DEFAULT_TARGET, load_target
from bp_rl.prompts import chat_prompt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bp_rl.generate", description=__doc__.splitlines()[0])
    p.add_argument("--prompt", required=True, help="prompt text (tokenised as-is unless --chat)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn with the target's chat template")
    p.add_argument("--block-size", type=int, default=1, help="draft block size (1 = autoregressive)")
    p.add_argument(
        "--drafter", default="default",
        help="drafter folder or name (prompt-lookup, random-block, a shipped drafter); default: the shipped drafter for --target",
    )
    p.add_argument("--target", default=DEFAULT_TARGET, help="embedded target name or local HF model folder")
    p.add_argument("--allow-download", action="store_true", help="allow --target to be a hub id (downloads)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--compare-ar", action="store_true", help="also decode autoregressively and print the speedup")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text + stats")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = load_target(args.target, device=args.device, dtype=args.dtype, allow_download=args.allow_download)
    try:
        drafter = load_drafter(args.drafter, target) if args.block_size > 1 else None
    except FileNotFoundError as err:
        print(f"--block-size {args.block_size} needs a drafter: {err}", file=sys.stderr)
        return 2
    prompt = chat_prompt(args.prompt, target.tokenizer, who="--chat") if args.chat else args.prompt
    sampling = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    )
    out = speculative_generate(target, drafter, prompt, args.block_size, **sampling)
    result = {"text": out.text, "block_size": args.block_size, "stats": out.stats.as_dict()}
    if args.compare_ar:
        ar = autoregressive_generate(target, prompt, **sampling)
        result["autoregressive_tokens_per_second"] = ar.stats.tokens_per_second
        result["speedup"] = out.stats.tokens_per_second / ar.stats.tokens_per_second
    if args.json:
        print(json.dumps(result))
        return 0
    print(out.text)
    print("---")
    for key, value in {**result["stats"], **{k: v for k, v in result.items() if k not in ("text", "stats")}}.items():
        if key != "acceptance_lengths":
            print(f"{key:>32}: {value:.4g}" if isinstance(value, float) else f"{key:>32}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
