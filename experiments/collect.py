"""Measure a reward table: every (prompt, block size, repeat) decoded for real and timed.

    python experiments/collect.py                                  # the shipped default, T=0
    python experiments/collect.py temperature=1.0 splits=[test]    # the paper's setting
    python experiments/collect.py drafter=prompt-lookup shard=0/2  # one of two processes

Crash-safe and resumable: each decode is committed as its own SQLite transaction, and a
re-run skips the rows already there. Prompts are visited in a seeded random order (so a
partial table covers every split) and, within a prompt, the block sizes and the
autoregressive baseline run in a seeded random order (so drift does not favour one size).
To run something else on this machine without skewing a timing: `touch <out>.pause`, wait
until `<out>.paused` appears (the collector is idle), do the work, `rm <out>.pause`. A decode
that overlapped the request is measured again (`experiments/paused.sh` does the handshake).
A table begun on another machine (device or library versions) goes on here only with
`allow_new_machine=true`; every row records its machine.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bp_rl.collection import collect_rows, parse_shard, plan_rows, shard_path, shard_prompts, table_metadata
from bp_rl.decoding import check_block_size
from bp_rl.drafters import load_models
from bp_rl.measurement import DecodeSettings, measure
from bp_rl.models import model_slug
from bp_rl.outcomes import DEFAULT_BLOCK_SIZES
from bp_rl.prompts import SPLITS, first_per_category, render_prompt
from bp_rl.rewards import RewardTable


@hydra.main(config_path="conf", config_name="collect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    index, count = parse_shard(cfg.shard)
    prompts = shard_prompts(cfg.suite, list(cfg.splits), cfg.shard)
    repeats = {split: int(cfg.repeats.get(split, 1)) for split in SPLITS}

    target, drafter, drafter_name = load_models(cfg.target, cfg.drafter, cfg.device, cfg.dtype, cfg.allow_download)
    block_sizes = [int(b) for b in cfg.block_sizes or DEFAULT_BLOCK_SIZES]
    for block in block_sizes:
        check_block_size(drafter, block)
    settings = DecodeSettings(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)

    if cfg.per_category is not None:  # a balanced sample: the first N of each category in a seeded order
        prompts = first_per_category(random.Random(cfg.seed).sample(prompts, len(prompts)), cfg.per_category)
    if cfg.max_prompts is not None:
        prompts = random.Random(cfg.seed).sample(prompts, min(cfg.max_prompts, len(prompts)))
    token_ids = {p.id: target.encode(render_prompt(p, target.tokenizer)) for p in prompts}

    # Warm-up (untimed) also tells the dimension of every feature set.
    feature_sets = tuple(cfg.feature_sets)
    for _ in range(max(1, cfg.warmup)):
        warm = measure(target, drafter, token_ids[prompts[0].id], max(block_sizes), settings, feature_sets, seed=0)
    dims = {name: int(vector.shape[0]) for name, vector in warm.observations.items()}
    meta = table_metadata(target, drafter, drafter_name, cfg.suite, settings, block_sizes, dims, " ".join(sys.argv))
    name = cfg.name or f"{model_slug(cfg.target)}_{model_slug(drafter_name)}_t{settings.temperature:g}"
    out = shard_path(Path(hydra.utils.to_absolute_path(cfg.out or f"runs/tables/{name}.sqlite")), index, count)
    table = RewardTable.create_or_resume(out, meta, allow_new_machine=cfg.allow_new_machine)
    done = table.done_keys()
    todo = [row for row in plan_rows(prompts, block_sizes, repeats, cfg.seed) if (row[0].id, row[1], row[2]) not in done]
    print(f"{out}: {len(done)} rows already measured, {len(todo)} to go ({len(prompts)} prompts, {meta['device']})")

    collect_rows(table, target, drafter, todo, token_ids, settings, feature_sets, cfg.seed, out.with_name(out.name + ".pause"))
    table.close()
    print(f"done: {out}")


if __name__ == "__main__":
    main()
