"""experiments/train_drafter.py end to end on the embedded target, at toy scale: stages, resume, export."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bp_rl import load_drafter, speculative_generate
from bp_rl.prompts import load_prompts
from conftest import run_script

pytestmark = pytest.mark.real_model

TOY = [
    "data.max_train_prompts=2", "data.user_turns=2", "data.code_prompts=2", "data.prose_prompts=2", "data.math_prompts=2",
    "data.gen_max_new_tokens=8", "data.gen_batch_size=4", "data.shard_sequences=4", "data.val_prompts=2", "data.top_k=4",
    "drafter.num_layers=1", "drafter.draft_vocab_size=256", "train.seqs_per_step=1", "train.blocks_per_seq=4",
    "train.eval_every=2", "train.decode_every=4", "train.eval_prompts=1", "train.eval_new_tokens=6", "train.checkpoint_every=1",
    "device=cpu", "data.continuations=null",
]


def run(tmp_path, *overrides, work="work", in_process=False):
    """train_drafter.py at toy scale; in_process for the runs that only check how bad input is refused."""
    args = [f"work_dir={tmp_path / work}", f"export.path={tmp_path / 'export'}", *TOY, *overrides]
    if in_process:
        return run_script("train_drafter", *args)
    return subprocess.run([sys.executable, "experiments/train_drafter.py", *args], capture_output=True, text=True)


def log_steps(tmp_path):
    return [json.loads(line)["step"] for line in (tmp_path / "work" / "train" / "main" / "train_log.jsonl").read_text().splitlines()]


def shard_ids(tmp_path, name):
    return [i for meta in (tmp_path / "work" / "shards").glob(f"{name}-*.json") for i in json.loads(meta.read_text())["ids"]]


def shard_tokens(work):
    """prompt id -> its regenerated token ids, over every shard of a work dir."""
    found = {}
    for meta_path in (work / "shards").glob("*.json"):
        meta = json.loads(meta_path.read_text())
        tokens = np.load(meta_path.with_suffix(".tokens.npy")).tolist()
        found |= {i: tokens[meta["offsets"][j] : meta["offsets"][j + 1]] for j, i in enumerate(meta["ids"])}
    return found


def test_stages_resume_and_export(tmp_path, smollm2):
    first = run(tmp_path, "train.steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = [json.loads(line) for line in (tmp_path / "work" / "prompts-train.jsonl").read_text().splitlines()]
    sources = {row["id"].split("/")[0] for row in manifest}
    assert {"suite", "code", "prose", "math"} <= sources
    assert sum(row["id"].startswith("suite/") for row in manifest) == 4  # 2 prompts x 2 temperatures
    held_out = {p.text for p in load_prompts("bp-v1") if p.split != "train"}
    assert not any(row["text"] in held_out for row in manifest)
    assert sorted(shard_ids(tmp_path, "train")) == sorted(row["id"] for row in manifest)
    assert all(i.startswith("val/") for i in shard_ids(tmp_path, "val")) and len(shard_ids(tmp_path, "val")) == 2
    assert log_steps(tmp_path) == [1, 2]

    # a crash before the last shard's meta: that shard is regenerated, nothing twice
    last = sorted((tmp_path / "work" / "shards").glob("train-*.json"))[-1]
    last.unlink()
    again = run(tmp_path, "train.steps=4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and log_steps(tmp_path) == [1, 2, 3, 4]
    ids = shard_ids(tmp_path, "train")
    assert len(ids) == len(set(ids)) == len(manifest)

    # what a new machine does with the kept continuations: rebuild every shard without decoding
    (tmp_path / "work2").mkdir()
    for name in ("prompts-train.jsonl", "prompts-val.jsonl"):
        (tmp_path / "work2" / name).write_text((tmp_path / "work" / name).read_text())
    rebuilt = run(tmp_path, "stage=regenerate", f"data.continuations={tmp_path / 'work' / 'continuations.jsonl.gz'}", work="work2")
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert f"stored continuations: {len(manifest) + 2} of {len(manifest) + 2} prompts" in rebuilt.stdout
    assert shard_tokens(tmp_path / "work2") == shard_tokens(tmp_path / "work")

    exported = run(tmp_path, "stage=export")
    assert exported.returncode == 0, exported.stderr[-3000:]
    card = (tmp_path / "export" / "README.md").read_text()
    assert "4 steps" in card and "| 4 |" in card and "256 tokens the target wrote most often" in card
    drafter = load_drafter(str(tmp_path / "export"), smollm2)
    assert drafter.draft_vocab_size == 256
    out = speculative_generate(smollm2, drafter, "def add(a, b):", 4, max_new_tokens=6)
    assert out.stats.new_tokens >= 1

    # warm start of a fresh run from the exported drafter, stopped by its time limit long before its
    # schedule ends and before any scheduled evaluation: it still ends evaluated
    (tmp_path / "work" / "train" / "main" / "checkpoint.pt").unlink()
    warm = run(tmp_path, "stage=train", "train.steps=1000", "train.eval_every=1000", "train.max_minutes=0.02",
               f"drafter.init_from={tmp_path / 'export'}")
    assert warm.returncode == 0, warm.stderr[-3000:]
    steps = log_steps(tmp_path)
    assert "resumed" not in warm.stdout and steps == list(range(1, len(steps) + 1)) and len(steps) < 1000
    last = json.loads((tmp_path / "work" / "train" / "main" / "train_log.jsonl").read_text().splitlines()[-1])
    assert "val_loss" in last and "val_replay_acceptance_b16" in last
    assert len(list((tmp_path / "work" / "train" / "main").glob("train_log.before-*.jsonl"))) == 1


@pytest.mark.slow  # a minute of generation; `make test-slow` runs it
def test_a_later_round_appends_new_prompts_once(tmp_path, smollm2):
    manifest = tmp_path / "work" / "prompts-train.jsonl"
    assert run(tmp_path, "stage=prompts").returncode == 0
    first = manifest.read_text().splitlines()
    grown = run(tmp_path, "stage=prompts", "data.round=1")
    assert grown.returncode == 0, grown.stderr[-3000:]
    rows = manifest.read_text().splitlines()
    assert rows[: len(first)] == first  # every earlier row, in order: its stored continuation still applies
    added = [json.loads(line) for line in rows[len(first) :]]
    assert added and all(row["id"].startswith("r1/") for row in added)
    seen = {(row["temperature"], *row["token_ids"]) for row in map(json.loads, first)}
    assert not any((row["temperature"], *row["token_ids"]) in seen for row in added)
    assert "regeneration prompts added (round 1)" in grown.stdout
    assert run(tmp_path, "stage=prompts", "data.round=1").returncode == 0
    assert manifest.read_text().splitlines() == rows  # appended once
    bad = run(tmp_path, "stage=prompts", "data.round=-1", in_process=True)
    assert bad.returncode != 0 and "data.round must be 0" in bad.stderr


def test_train_block_larger_than_drafter_is_rejected(tmp_path):
    bad = run(tmp_path, "stage=train", "train.block_size=32", in_process=True)
    assert bad.returncode != 0 and "train.block_size (32) exceeds drafter.block_size (16)" in bad.stderr


def test_train_before_regenerating_is_explained(tmp_path):
    bad = run(tmp_path, "stage=train", in_process=True)
    assert bad.returncode != 0 and "run stage=prompts and stage=regenerate first" in bad.stderr


def test_unknown_stage_is_rejected(tmp_path):
    bad = run(tmp_path, "stage=fit", in_process=True)
    assert bad.returncode != 0 and "unknown stage 'fit'" in bad.stderr


def test_unknown_autocast_dtype_is_rejected(tmp_path):
    bad = run(tmp_path, "stage=regenerate", "data.teacher_autocast=bf16", in_process=True)
    assert bad.returncode != 0 and "data.teacher_autocast='bf16' is not a mixed-precision dtype; valid: ['bfloat16', 'float16', None]" in bad.stderr
