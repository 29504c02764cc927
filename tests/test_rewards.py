"""Reward tables: collection is crash-safe and resumable, views are right, bad files fail clearly."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tqdm import tqdm

import bp_rl.collection as collection
from bp_rl.collection import parse_shard, plan_rows, shard_path
from bp_rl.measurement import AUTOREGRESSIVE
from bp_rl.outcomes import TableView, reward_value
from bp_rl.rewards import RewardTable
from conftest import EXPERIMENTS, TINY_BLOCKS, build_tiny_table, run_script, tiny_prompts, tiny_table_models


@pytest.fixture(scope="module")
def tiny_models():
    return tiny_table_models()


def test_view_holds_every_prompt_with_medians_and_best(tiny_table_path):
    table = RewardTable.load(tiny_table_path)
    assert len(table.done_keys()) == 12 * 4 + 3 * 4  # every (prompt, block or AR), test twice
    view = table.view("last_hidden+prompt_length")
    assert len(view) == 12 and view.observations.shape == (12, 32 + 1)
    tps = view.rewards("tokens_per_second")
    assert tps.shape == (12, len(TINY_BLOCKS)) and (tps > 0).all()
    np.testing.assert_allclose(view.rewards("speedup"), tps / view.ar_tokens_per_second[:, None])
    np.testing.assert_allclose(view.rewards("log_speedup"), np.log(view.rewards("speedup")))
    assert (view.rewards("acceptance_length") >= 1).all()
    assert (view.best_blocks() == tps.argmax(axis=1)).all()
    assert view.grid_block() == tps.mean(axis=0).argmax()
    test = view.subset(view.splits == "test")
    assert len(test) == 3 and all(len(s) == 2 for row in test.samples for s in row)  # two repeats each


def _view_of_tokens_per_second(cells: list[list[list[float]]]) -> TableView:
    """A view whose [prompt][block] cells hold these tokens/s repeats (other columns filler)."""
    samples = [[np.array([[v, 1.0, 64, 64, 64 / v] for v in cell]) for cell in row] for row in cells]
    n = len(cells)
    return TableView([f"p{i}" for i in range(n)], np.array(["chat"] * n), np.array(["test"] * n), (1, 2), "x",
                     np.zeros((n, 1), np.float32), samples, [np.array([10.0])] * n)


def test_noise_ceiling_scores_one_repeat_choices_on_the_other_repeats():
    noisy = [[10, 10], [12, 8]]  # repeat 0 picks b2 (scores 8 on repeat 1); repeat 1 picks b1 (10 vs best 12)
    steady = [[10, 10], [12, 12]]
    single = [[10], [20]]  # one repeat only: ignored
    gap_closed, prompts = _view_of_tokens_per_second([noisy, steady, single]).noise_ceiling(grid=0)
    # chosen (8 + 10 + 12 + 12) / 4 = 10.5, grid 10, held-out best (10 + 12 + 12 + 12) / 4 = 11.5
    assert prompts == 2 and gap_closed == pytest.approx(0.5 / 1.5)
    assert _view_of_tokens_per_second([noisy]).noise_ceiling(grid=0) == (pytest.approx(-1.0), 1)
    assert _view_of_tokens_per_second([single]).noise_ceiling(grid=0) is None
    tie = [[10, 10], [10.01, 10.01]]  # best beats grid by 0.1%: timing noise, no gap to close
    assert _view_of_tokens_per_second([tie]).noise_ceiling(grid=0) == (None, 1)


def test_a_smaller_block_set_keeps_its_columns_and_refuses_unknown_sizes():
    view = _view_of_tokens_per_second([[[10, 11], [12]], [[9], [8, 7]]])
    only_b2 = view.with_blocks([2])
    assert only_b2.block_sizes == (2,) and len(only_b2) == 2 and only_b2.observations is view.observations
    np.testing.assert_allclose(only_b2.median(), [[12], [7.5]])
    assert (view.with_blocks([2, 1]).best_blocks() == [0, 1]).all()  # indices follow the order asked for
    for bad in ([3], [1, 5], [], [2, 2]):
        with pytest.raises(ValueError, match=r"choose distinct sizes among this table's \[1, 2\]"):
            view.with_blocks(bad)


def test_show_prints_headroom_and_noise_of_a_real_table(tiny_table_path):
    def show(*options: str, returncode: int = 0) -> str:
        command = [sys.executable, str(EXPERIMENTS / "table.py"), "show", str(tiny_table_path), "--split", "test", *options]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == returncode, result.stderr[-3000:]
        return result.stdout if returncode == 0 else result.stderr

    text = show()
    assert "| all | 3 |" in text and "prompts whose best block is each size" in text
    acceptance = text.split("mean acceptance length (tokens per verify pass")[1]
    assert "| category | b1 | b2 | b4 |" in acceptance and re.search(r"\| all \| 1\.00 \| \d\.\d\d \| \d\.\d\d \|", acceptance)
    assert "noise between repeats" in text and "(3 prompts with repeats)" in text
    smaller = show("--block-sizes", "4", "1")
    assert "| AR tok/s | b4 | b1 | grid |" in smaller and "grid block (chosen on train)" in smaller
    refused = show("--block-sizes", "5", returncode=2)  # a clean usage error, no traceback
    assert "error: block sizes [5]: choose distinct sizes among this table's [1, 2, 4]" in refused and "Traceback" not in refused


def test_show_counts_decodes_that_ended_before_any_verify_pass(tiny_table_path, tmp_path):
    """A sample whose first token ends the request has no verify pass: show says how many such decodes it averaged."""
    from table import show

    assert "before any verify pass" not in show(str(tiny_table_path), None, "tokens_per_second")
    ended = tmp_path / "ended.sqlite"
    shutil.copy(tiny_table_path, ended)
    with sqlite3.connect(ended) as db:
        db.execute("UPDATE runs SET acceptance = X'', new_tokens = 1 WHERE prompt_id = 'p09' AND block_size = 2 AND repeat = 0")
    assert "1 of 45 decodes ended at the prefill's token, before any verify pass" in show(str(ended), None, "tokens_per_second")


def test_publish_copies_a_table_and_can_keep_only_its_first_repeats(tiny_table_path, tmp_path):
    from table import publish

    repeats = lambda path: sorted(r for (r,) in RewardTable.load(path).db.execute("SELECT DISTINCT repeat FROM runs"))
    whole, first = tmp_path / "whole.sqlite", tmp_path / "first.sqlite"
    publish(str(tiny_table_path), str(whole))
    publish(str(tiny_table_path), str(first), repeats=1)
    assert repeats(whole) == [0, 1] and repeats(first) == [0] and repeats(tiny_table_path) == [0, 1]
    assert RewardTable.load(first).done_keys() == {key for key in RewardTable.load(whole).done_keys() if key[2] == 0}
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"--repeats {bad}: a positive count"):
            publish(str(tiny_table_path), str(tmp_path / "bad.sqlite"), repeats=bad)


def test_cross_validation_folds_test_every_prompt_once(tiny_table_path):
    table = RewardTable.load(tiny_table_path)
    folds = [table.cross_validation_fold(i, 4, seed=3) for i in range(4)]
    tested = [folds[i].view("last_hidden", "test").prompt_ids for i in range(4)]
    assert sorted(sum(tested, [])) == [p.id for p in tiny_prompts()]  # each of the 12 prompts once
    assert [len(t) for t in tested] == [3, 3, 3, 3]
    assert folds[0].view("last_hidden", "val").prompt_ids == tested[1]  # the next fold validates
    assert len(folds[0].view("last_hidden", "train")) == 6
    assert all(set(folds[i].view("last_hidden", "test").categories) == {"code", "chat"} for i in range(4))  # balanced
    assert len(table.view("last_hidden", "test")) == 3  # the table itself keeps its measured splits
    for fold, k in [(0, 2), (4, 4), (-1, 4)]:
        with pytest.raises(ValueError, match=f"fold {fold} of {k}"):
            table.cross_validation_fold(fold, k)


def test_a_table_without_the_split_asked_for_says_which_it_has(tiny_test_only_table_path):
    table = RewardTable.load(tiny_test_only_table_path)
    assert table.splits() == ["test"] and table.cross_validation_fold(0, 4).splits() == ["test", "train", "val"]
    with pytest.raises(ValueError, match=r"no completely measured prompt in split 'train' \(it was measured on \['test'\] only: re-split"):
        table.view("last_hidden", "train")


def test_rows_match_a_direct_measurement_count(tiny_table_path):
    table = RewardTable.load(tiny_table_path)
    ids = {pid for pid, _, _ in table.done_keys()}
    assert ids == {p.id for p in tiny_prompts()}
    for pid, block, repeat in table.done_keys():
        assert block in (AUTOREGRESSIVE, *TINY_BLOCKS) and repeat in (0, 1)


def test_interrupted_collection_loses_nothing_and_resume_never_duplicates(tmp_path, tiny_models, monkeypatch):
    target, drafter = tiny_models
    real_measure, calls = collection.measure, []

    def crashing_measure(*args, **kwargs):
        if len(calls) == 7:
            raise KeyboardInterrupt  # the process is killed while measuring the 8th row
        calls.append(1)
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(collection, "measure", crashing_measure)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_table(tmp_path / "t.sqlite", target, drafter)
    assert len(RewardTable.load(tmp_path / "t.sqlite").done_keys()) == 7

    monkeypatch.setattr(collection, "measure", real_measure)
    table = build_tiny_table(tmp_path / "t.sqlite", target, drafter)  # the same plan again: resumes
    assert len(table.done_keys()) == 60
    assert table.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 60
    assert table.db.execute("SELECT COUNT(DISTINCT prompt_id) FROM observations").fetchone()[0] == 12


def test_refuses_to_mix_rows_from_other_settings(tmp_path, tiny_table_path, tiny_models):
    path = tmp_path / "t.sqlite"
    shutil.copy(tiny_table_path, path)
    with pytest.raises(ValueError, match="refusing to mix rows.*drafter_hash"):
        build_tiny_table(path, *tiny_models, drafter_hash="0123456789abcdef")
    with pytest.raises(ValueError, match="target: table has 'tiny-llama', asked for 'other'"):
        RewardTable.load(path, expect={"target": "other"})


def test_a_table_goes_on_on_another_machine_only_when_asked(tmp_path, tiny_table_path, tiny_models):
    path = tmp_path / "t.sqlite"
    shutil.copy(tiny_table_path, path)
    here = RewardTable.load(path).machines[0]["device"]
    third_repeat = [row for row in plan_rows(tiny_prompts(), TINY_BLOCKS, {"train": 1, "val": 1, "test": 3}, seed=0) if row[2] == 2]
    with pytest.raises(ValueError, match=f"another machine \\(device: table has '{re.escape(here)}', this machine 'Other CPU'\\).*allow_new_machine=true"):
        build_tiny_table(path, *tiny_models, rows=third_repeat, device="Other CPU")
    build_tiny_table(path, *tiny_models, rows=third_repeat, device="Other CPU", allow_new_machine=True).close()
    table = RewardTable.load(path)
    assert [m["device"] for m in table.machines] == [here, "Other CPU"]
    assert table.rows_per_machine() == [60, 12]  # the third repeat of the 3 test prompts, 4 columns each
    assert {len(s) for row in table.view("last_hidden", "test").samples for s in row} == {3}

    # Merging remaps machines: a table begun on "Other CPU" has it as machine 0.
    elsewhere = build_tiny_table(tmp_path / "o.sqlite", *tiny_models, rows=third_repeat, device="Other CPU")
    merged = RewardTable.create_or_resume(tmp_path / "m.sqlite", RewardTable.load(tiny_table_path).meta)
    assert merged.merge_from(RewardTable.load(tiny_table_path)) > 0 and merged.merge_from(elsewhere) > 0
    assert [m["device"] for m in merged.machines] == [here, "Other CPU"] and merged.rows_per_machine() == [60, 12]


def test_shards_merge_into_the_whole(tmp_path, tiny_models):
    rows = plan_rows(tiny_prompts(), TINY_BLOCKS, {"train": 1, "val": 1, "test": 1}, seed=0)
    first = build_tiny_table(tmp_path / "a.sqlite", *tiny_models, rows=rows[:20])
    second = build_tiny_table(tmp_path / "b.sqlite", *tiny_models, rows=rows[15:])
    assert first.merge_from(second) > 0
    assert first.done_keys() == {(p.id, b, r) for p, b, r in rows}
    assert first.merge_from(second) == 0  # idempotent
    other = build_tiny_table(tmp_path / "c.sqlite", *tiny_models, rows=rows[:1], settings={"temperature": 1.0})
    with pytest.raises(ValueError, match="cannot merge.*settings"):
        first.merge_from(other)


def test_plan_visits_every_prompt_before_any_repeat():
    prompts = tiny_prompts()
    rows = plan_rows(prompts, TINY_BLOCKS, {"train": 1, "val": 1, "test": 3}, seed=0)
    assert len(rows) == 12 * 4 + 3 * 2 * 4
    first_repeat_one = next(i for i, row in enumerate(rows) if row[2] == 1)
    assert {row[0].id for row in rows[:first_repeat_one]} == {p.id for p in prompts}
    assert rows == plan_rows(prompts, TINY_BLOCKS, {"train": 1, "val": 1, "test": 3}, seed=0)
    orders = {tuple(b for p, b, r in rows if p.id == pid and r == 0) for pid in ("p00", "p01", "p02", "p03")}
    assert len(orders) > 1  # block order is shuffled per prompt


def test_paused_script_waits_for_a_live_collector_and_ignores_a_stale_acknowledgement(tmp_path):
    table = tmp_path / "t.sqlite"
    pause, paused = Path(f"{table}.pause"), Path(f"{table}.paused")
    script = [str(EXPERIMENTS / "paused.sh"), str(table), "--"]
    env = {"PATH": os.environ["PATH"], "PAUSE_WAIT_S": "3"}

    paused.touch()  # left behind by a collector killed while paused: nobody is listening now
    stale = subprocess.run([*script, "true"], env=env, capture_output=True, text=True)
    assert stale.returncode == 1 and "no collector acknowledged" in stale.stderr
    assert not pause.exists() and not paused.exists()

    stop, pauses = threading.Event(), []

    def collector():  # the loop collect_rows runs between decodes
        while not stop.is_set():
            pauses.append(collection.wait_while_paused(pause, tqdm(disable=True)))
            time.sleep(0.05)
    thread = threading.Thread(target=collector)
    thread.start()
    try:
        live = subprocess.run([*script, "test", "-e", str(paused)], env=env, capture_output=True, text=True)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert live.returncode == 0, live.stderr
    assert True in pauses and not pause.exists() and not paused.exists()


def test_shard_names_and_bad_shards(tmp_path):
    assert parse_shard("1/3") == (1, 3)
    assert shard_path(tmp_path / "t.sqlite", 1, 3).name == "t.shard1of3.sqlite"
    for bad in ("3/3", "a/2", "1", "-1/2"):
        with pytest.raises(ValueError, match="shard must be 'i/n'"):
            parse_shard(bad)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_table_fails_clearly(tmp_path, tiny_table_path, damage):
    path = tmp_path / "t.sqlite"
    data = tiny_table_path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"not a database" * 100)
    with pytest.raises(ValueError, match="not a readable reward table"):
        RewardTable.load(path)


def test_bad_names_fail_with_the_valid_choices(tiny_table_path):
    table = RewardTable.load(tiny_table_path)
    with pytest.raises(ValueError, match="feature set 'mean_hidden' is not in.*last_hidden"):
        table.view("mean_hidden")
    with pytest.raises(ValueError, match="unknown feature 'nope'"):
        table.view("nope")
    with pytest.raises(ValueError, match="unknown split 'dev'.*train"):
        table.view("last_hidden", split="dev")
    with pytest.raises(ValueError, match="unknown reward 'fast'.*tokens_per_second"):
        table.view("last_hidden").rewards("fast")
    with pytest.raises(ValueError, match="unknown reward table 'nope'"):
        RewardTable.load("nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RewardTable.load("/nonexistent/t.sqlite")


def test_empty_split_fails_clearly(tmp_path, tiny_models):
    rows = [row for row in plan_rows(tiny_prompts(), TINY_BLOCKS, {"train": 1, "val": 1, "test": 1}, 0) if row[0].split == "train"]
    table = build_tiny_table(tmp_path / "t.sqlite", *tiny_models, rows=rows)
    with pytest.raises(ValueError, match="no completely measured prompt in split 'test'"):
        table.view("last_hidden", split="test")


def test_reward_value_definitions():
    assert reward_value("speedup", 30.0, 20.0, 1.5) == 1.5
    assert reward_value("acceptance_length", 30.0, 20.0, 1.5) == 1.5
    assert reward_value("log_speedup", 20.0, 20.0, 1.5) == 0.0


@pytest.mark.real_model
def test_collect_script_measures_resumes_and_refuses_bad_input(tmp_path):
    overrides = ["max_prompts=2", "splits=[test]", "block_sizes=[1,3]", "max_new_tokens=8", "warmup=1",
                 f"out={tmp_path}/t.sqlite", f"hydra.run.dir={tmp_path}/hydra"]  # fmt: skip
    args = [sys.executable, str(EXPERIMENTS / "collect.py"), *overrides]
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    table = RewardTable.load(tmp_path / "t.sqlite", expect={"target": "smollm2-135m", "block_sizes": [1, 3]})
    assert len(table.done_keys()) == 2 * 3 * 3  # 2 prompts x (AR, 1, 3) x 3 test repeats
    assert table.meta["settings"]["max_new_tokens"] == 8 and "last_hidden" in table.feature_sets
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0 and "18 rows already measured, 0 to go" in again.stdout
    mixed = run_script("collect", *overrides, "temperature=1.0")  # refusals run in process: no new interpreter's start
    assert mixed.returncode != 0 and "refusing to mix rows" in mixed.stderr
    for bad, message in [("shard=2/2", "shard must be 'i/n'"), ("splits=[dev]", "unknown split(s) ['dev']"), ("block_sizes=[32]", "block_size must be")]:
        result = run_script("collect", *overrides, bad)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-1500:]
