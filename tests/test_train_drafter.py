"""experiments/train_drafter.py end to end on the embedded target, at toy scale: stages, resume, export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bp_rl import load_drafter, speculative_generate

pytestmark = pytest.mark.real_model

TOY = [
    "data.max_train_prompts=3", "data.gen_max_new_tokens=8", "data.gen_batch_size=2", "data.val_prompts=2",
    "data.text_tokens=512", "data.seq_len=128", "features.shard_tokens=400", "features.batch_size=2",
    "drafter.num_layers=1", "train.seqs_per_step=1", "train.blocks_per_seq=4", "train.eval_every=2",
    "train.eval_prompts=1", "train.eval_new_tokens=6", "train.checkpoint_every=1", "device=cpu",
]


def run(tmp_path, *overrides):
    cmd = [sys.executable, "experiments/train_drafter.py", f"work_dir={tmp_path / 'work'}", f"export.path={tmp_path / 'export'}", *TOY, *overrides]
    return subprocess.run(cmd, capture_output=True, text=True)


def log_steps(tmp_path):
    return [json.loads(line)["step"] for line in (tmp_path / "work" / "train_log.jsonl").read_text().splitlines()]


def test_stages_resume_and_export(tmp_path, smollm2):
    first = run(tmp_path, "train.steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    seqs = {name: (tmp_path / "work" / "sequences" / f"{name}.jsonl").read_text().splitlines() for name in ("generated", "val", "text")}
    assert len(seqs["generated"]) == 6 and len(seqs["val"]) == 2 and len(seqs["text"]) == 4  # 3 prompts x 2 temperatures
    val_ids = {json.loads(line)["id"].split("@")[0] for line in seqs["val"]}
    assert all(i.startswith(("code/", "math/", "chat/", "prose/")) for i in val_ids)
    assert log_steps(tmp_path) == [1, 2]

    # a crash mid-append leaves a torn line: the data stage repairs it and generates nothing twice
    generated = tmp_path / "work" / "sequences" / "generated.jsonl"
    generated.write_text("\n".join(seqs["generated"][:-1]) + "\n" + seqs["generated"][-1][:20])
    again = run(tmp_path, "train.steps=4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and log_steps(tmp_path) == [1, 2, 3, 4]
    lines = generated.read_text().splitlines()
    assert len(lines) == 6 and len({json.loads(line)["id"] for line in lines}) == 6

    exported = run(tmp_path, "stage=export")
    assert exported.returncode == 0, exported.stderr[-3000:]
    card = (tmp_path / "export" / "README.md").read_text()
    assert "4 steps" in card and "| 4 |" in card
    drafter = load_drafter(str(tmp_path / "export"), smollm2)
    out = speculative_generate(smollm2, drafter, "def add(a, b):", 4, max_new_tokens=6)
    assert out.stats.new_tokens >= 1

    # warm start of a fresh run from the exported drafter
    (tmp_path / "work" / "checkpoint.pt").unlink()
    warm = run(tmp_path, "stage=train", "train.steps=1", f"drafter.init_from={tmp_path / 'export'}")
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert "resumed" not in warm.stdout and log_steps(tmp_path) == [1]
    assert len(list((tmp_path / "work").glob("train_log.before-*.jsonl"))) == 1


def test_train_block_larger_than_drafter_is_rejected(tmp_path):
    bad = run(tmp_path, "stage=train", "train.block_size=32")
    assert bad.returncode != 0 and "train.block_size (32) exceeds drafter.block_size (16)" in bad.stderr


def test_unknown_stage_is_rejected(tmp_path):
    bad = run(tmp_path, "stage=fit")
    assert bad.returncode != 0 and "unknown stage 'fit'" in bad.stderr
