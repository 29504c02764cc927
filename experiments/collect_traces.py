"""Collect acceptance traces: every prompt's exact T=0 trace at every block size, and its observations.

    python experiments/collect_traces.py                               # the shipped drafter, whole suite
    python experiments/collect_traces.py temperature=1 seeds=[0,1,2] splits=[test]   # sampled traces (T>0)
    python experiments/collect_traces.py drafter=prompt-lookup continuations=smollm2-135m-block-v6-traces
    python experiments/collect_traces.py -m shard=0/2,1/2 threads=1 hydra/launcher=joblib   # two processes
    python experiments/table.py merge runs/traces/all.sqlite runs/traces/*.shard*.sqlite

A trace holds no timing: collect it anywhere, with anything else running, and get rewards on any
machine from a device profile (`experiments/profile_device.py`). The greedy decode that finds a
prompt's continuation is most of a trace's cost: at T=0 `guess_batch` prompts are first decoded
greedily as one batch (several times cheaper per prompt), and each prompt's decode then takes that
guess as its draft (lossless: a guess a padded batch rounded differently costs time, never
exactness); `guess_batch=1` decodes each prompt alone at `decode_block` (speculatively above 1).
`continuations=<trace table>` reuses the continuations another drafter's traces of the same target
and settings hold, decoding only the prompts that table lacks. Above T=0 a trace is a sample:
one real decode per (block size, seed), each seed's draws its own (`bp_rl.traces.SampledTrace`). Crash-safe and resumable: each
prompt is one SQLite transaction and a re-run skips the prompts already traced. Like
`collect.py`, it honours `<out>.pause` (`experiments/paused.sh`), so timed work can run beside it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from bp_rl.collection import parse_shard, shard_path, shard_prompts, table_metadata, wait_while_paused
from bp_rl.drafter_data import greedy_guesses
from bp_rl.drafters import load_models
from bp_rl.measurement import DecodeSettings
from bp_rl.models import model_slug
from bp_rl.outcomes import DEFAULT_BLOCK_SIZES
from bp_rl.prompts import first_per_category, render_prompt
from bp_rl.table_file import mismatch
from bp_rl.trace_table import TraceTable
from bp_rl.traces import trace_request


@hydra.main(config_path="conf", config_name="collect_traces", version_base="1.3")
def main(cfg: DictConfig) -> None:
    index, count = parse_shard(cfg.shard)
    if not isinstance(cfg.guess_batch, int) or cfg.guess_batch < 1:
        raise ValueError(f"guess_batch must be an integer >= 1 (1: decode each prompt alone), got {cfg.guess_batch!r}")
    prompts = shard_prompts(cfg.suite, list(cfg.splits), cfg.shard)
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    target, drafter, drafter_name = load_models(cfg.target, cfg.drafter, cfg.device, cfg.dtype, cfg.allow_download)
    block_sizes = [int(b) for b in cfg.block_sizes or DEFAULT_BLOCK_SIZES]

    feature_sets = tuple(cfg.feature_sets)
    first = trace_request(target, drafter, render_prompt(prompts[0], target.tokenizer), block_sizes, 2, feature_sets=feature_sets)
    dims = {name: int(vector.shape[0]) for name, vector in first.observations.items()}
    settings = DecodeSettings(cfg.max_new_tokens, temperature=float(cfg.temperature))
    seeds = [int(s) for s in cfg.seeds] if settings.temperature > 0 else None
    meta = table_metadata(target, drafter, drafter_name, cfg.suite, settings, block_sizes, dims, " ".join(sys.argv))
    if seeds:
        meta["seeds"] = seeds
    sampled = f"-t{settings.temperature:g}" if settings.temperature > 0 else ""  # a table holds one temperature
    name = cfg.name or f"{model_slug(cfg.target)}_{model_slug(drafter_name)}_traces{sampled}"
    out = shard_path(Path(hydra.utils.to_absolute_path(cfg.out or f"runs/traces/{name}.sqlite")), index, count)
    table = TraceTable.create_or_resume(out, meta)
    source = continuation_source(cfg.continuations, meta) if cfg.continuations else None
    done = table.done_prompts()
    if cfg.per_category is not None:  # a balanced sample: the first N of each category, in suite order
        prompts = first_per_category(prompts, cfg.per_category)
    todo = [p for p in prompts if p.id not in done][: cfg.max_prompts]
    print(f"{out}: {len(done)} prompts traced, {len(todo)} to go ({drafter_name}, block sizes {block_sizes})")

    pause_file = out.with_name(out.name + ".pause")
    batch = cfg.guess_batch if settings.temperature == 0 and cfg.guess_batch > 1 else 1
    bar = tqdm(total=len(todo), unit="prompt", smoothing=0.05)
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        wait_while_paused(pause_file, bar)
        ids = {p.id: target.encode(render_prompt(p, target.tokenizer)).tolist() for p in chunk}
        continuations = {p.id: source.continuation(p.id) if source else None for p in chunk}
        unknown = [p.id for p in chunk if continuations[p.id] is None] if batch > 1 else []
        started = time.perf_counter()
        guesses = dict(zip(unknown, greedy_guesses(target, [ids[i] for i in unknown], cfg.max_new_tokens))) if unknown else {}
        guess_share = (time.perf_counter() - started) / max(1, len(unknown))  # each guessed prompt's part of the batch
        for prompt in chunk:
            wait_while_paused(pause_file, bar)
            started = time.perf_counter()
            trace = trace_request(target, drafter, ids[prompt.id], block_sizes, cfg.max_new_tokens, settings.temperature,
                                  feature_sets=feature_sets, seeds=seeds, continuation=continuations[prompt.id],
                                  decode_block=cfg.decode_block, guess=guesses.get(prompt.id))
            table.add(prompt, trace, time.perf_counter() - started + (guess_share if prompt.id in guesses else 0.0))
            cycles = trace.acceptance_lengths(max(block_sizes))
            bar.update()
            bar.set_postfix(prompt=prompt.id, accepted=f"{sum(cycles) / max(1, len(cycles)):.2f}")
    bar.close()
    table.close()
    print(f"done: {out}")


def continuation_source(name: str, meta: dict) -> TraceTable:
    """A trace table whose greedy continuations fit traces made under `meta`: same target, dtype,
    suite and decoding settings at T=0 (the drafter may differ: it does not change the continuation)."""
    if meta["settings"]["temperature"] > 0:
        raise ValueError("continuations: above T=0 every trace decodes its own samples; reuse needs temperature=0")
    source = TraceTable.load(name)
    difference = mismatch(source.meta, meta, ("target", "dtype", "suite", "settings"))
    if difference:
        raise ValueError(f"continuations={name!r}: its continuations are not this target's under these settings: {difference}")
    return source


if __name__ == "__main__":
    main()
