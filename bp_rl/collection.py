"""Measuring a reward table: which rows to measure, in what order, and the loop that measures them.

`experiments/collect.py` is the command-line front; this module is what it and the tests run.
"""

from __future__ import annotations

import datetime
import os
import random
import time
import zlib
from pathlib import Path

import torch
import transformers
from tqdm import tqdm

from bp_rl.drafter import Drafter, drafter_fingerprint
from bp_rl.measurement import AUTOREGRESSIVE, DecodeSettings, measure
from bp_rl.models import Target
from bp_rl.prompts import SPLITS, Prompt, load_prompts
from bp_rl.rewards import SCHEMA_VERSION, RewardTable
from bp_rl.timing import device_name


def parse_shard(shard: str) -> tuple[int, int]:
    index, _, count = str(shard).partition("/")
    if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise ValueError(f"shard must be 'i/n' with 0 <= i < n, got {shard!r}")
    return int(index), int(count)


def shard_prompts(suite: str, splits: list[str], shard: str) -> list[Prompt]:
    """The prompts of `splits` that shard 'i/n' takes: every n-th by id, from the i-th."""
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; valid: {list(SPLITS)}")
    index, count = parse_shard(shard)
    prompts = sorted((p for split in splits for p in load_prompts(suite, split=split)), key=lambda p: p.id)[index::count]
    if not prompts:
        raise ValueError(f"no prompts in splits {list(splits)} of suite {suite!r} (shard {shard})")
    return prompts


def shard_path(out: Path, index: int, count: int) -> Path:
    return out if count == 1 else out.with_name(f"{out.stem}.shard{index}of{count}{out.suffix}")


def plan_rows(prompts: list[Prompt], block_sizes: list[int], repeats: dict, seed: int) -> list[tuple[Prompt, int, int]]:
    """(prompt, block size, repeat) in measuring order: repeat 0 of every prompt first, then repeat 1, ..."""
    order = sorted(prompts, key=lambda p: p.id)
    random.Random(seed).shuffle(order)
    rows = []
    for repeat in range(max(repeats[p.split] for p in prompts)):
        for prompt in order:
            if repeat < repeats[prompt.split]:
                blocks = [AUTOREGRESSIVE, *block_sizes]
                random.Random(f"{seed}/{prompt.id}/{repeat}").shuffle(blocks)
                rows.extend((prompt, block, repeat) for block in blocks)
    return rows


def row_seed(seed: int, prompt: Prompt, block: int, repeat: int) -> int:
    return zlib.crc32(f"{seed}/{prompt.id}/{block}/{repeat}".encode())


def wait_while_paused(pause_file: Path, bar: tqdm) -> bool:
    """Block while `pause_file` exists, saying so in `<pause_file>d`; True if we waited.

    The handshake lets other CPU work wait for `<out>.paused` before it starts, so no timed
    decode ever overlaps it.
    """
    if not pause_file.exists():
        return False
    acknowledged = pause_file.with_name(pause_file.name + "d")
    bar.set_postfix_str(f"paused: remove {pause_file} to go on")
    try:
        while pause_file.exists():
            acknowledged.touch()  # every second: a waiter may have cleared a stale acknowledgement
            time.sleep(1)
    finally:
        acknowledged.unlink(missing_ok=True)
    return True


def collect_rows(
    table: RewardTable,
    target: Target,
    drafter: Drafter,
    rows: list[tuple[Prompt, int, int]],
    token_ids: dict[str, list[int]],
    settings: DecodeSettings,
    feature_sets: tuple[str, ...],
    seed: int,
    pause_file: Path | None = None,
) -> None:
    """Measure `rows` in order, committing each to `table` as soon as it is measured.

    With a `pause_file`, a decode during which a pause was requested is thrown away and
    measured again after the pause, as other work may have overlapped it.
    """
    observed = {pid for (pid,) in table.db.execute("SELECT DISTINCT prompt_id FROM observations")}
    rewarm_block = max(table.block_sizes)
    bar = tqdm(rows, unit="decode", smoothing=0.05)
    for prompt, block, repeat in bar:
        while True:
            if pause_file is not None and wait_while_paused(pause_file, bar):
                measure(target, drafter, token_ids[prompt.id], rewarm_block, settings, seed=0)
            wanted = () if prompt.id in observed else feature_sets
            result = measure(target, drafter, token_ids[prompt.id], block, settings, wanted, row_seed(seed, prompt, block, repeat))
            if pause_file is None or not pause_file.exists():
                break
        table.add(prompt, result, repeat, load=os.getloadavg()[0])
        observed.add(prompt.id)
        bar.set_postfix(prompt=prompt.id, block=block or "AR", tok_s=f"{result.stats.tokens_per_second:.1f}")


def table_metadata(
    target: Target,
    drafter: Drafter,
    drafter_name: str,
    suite: str,
    settings: DecodeSettings,
    block_sizes: list[int],
    feature_dims: dict[str, int],
    command: str = "",
) -> dict:
    """Everything a table's numbers depend on: `IDENTITY_KEYS` must match for rows to mix, `MACHINE_KEYS` say where."""
    return {
        "schema_version": SCHEMA_VERSION,
        "suite": suite,
        "target": target.name,
        "dtype": str(target.dtype).removeprefix("torch."),
        "drafter": drafter_name,
        "drafter_hash": drafter_fingerprint(drafter),
        "device": device_name(target.device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "settings": settings.as_dict(),
        "block_sizes": list(block_sizes),
        "feature_sets": dict(feature_dims),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }
