"""The trace table: storage round trip, resume, merge, bad files; rewards simulated under a profile;
the trace environment; and the replay of a timed table's decodes, cycle for cycle."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
from conftest import TINY_BLOCKS, TINY_NEW_TOKENS, build_tiny_table, build_tiny_traces, run_script, tiny_profile, tiny_prompts, tiny_table_models, tiny_token_ids
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers the ids)
from bp_rl.drafters import default_drafter_name
from bp_rl.profiles import DeviceProfile, simulate
from bp_rl.rewards import RewardTable
from bp_rl.trace_table import SimulatedRewards, TraceTable
from bp_rl.traces import trace_request
from envs import make_trace_env

ROOT = Path(__file__).resolve().parents[1]
FEATURES = "last_hidden+logit_stats"


@pytest.fixture(scope="module")
def models():
    return tiny_table_models()


def test_a_stored_trace_reads_back_as_traced(tiny_traces_path, models):
    target, drafter = models
    table = TraceTable.load(tiny_traces_path)
    prompt = tiny_prompts()[3]
    fresh = trace_request(target, drafter, tiny_token_ids(tiny_prompts())[prompt.id], TINY_BLOCKS, TINY_NEW_TOKENS)
    stored = table.trace(prompt.id)
    assert stored.tokens == fresh.tokens and stored.accepted == fresh.accepted and stored.prompt_tokens == fresh.prompt_tokens
    for b in TINY_BLOCKS:
        np.testing.assert_allclose(np.array(stored.confidence[b]).reshape(-1), np.array(fresh.confidence[b]).reshape(-1), atol=1e-3)
        np.testing.assert_allclose(np.array(stored.entropy[b]).reshape(-1), np.array(fresh.entropy[b]).reshape(-1), atol=5e-3)
    assert len(table.done_prompts()) == 12 and table.summary()["prompts"] == 12 and table.keeps_entropy
    assert table.continuation(prompt.id) == fresh.tokens and table.continuation("no-such-prompt") is None


def test_a_file_traced_before_entropies_were_kept_still_reads_resumes_and_merges(tmp_path, models):
    target, drafter = models
    old = tmp_path / "old.sqlite"
    build_tiny_traces(old, target, drafter, tiny_prompts()[:2]).close()
    with sqlite3.connect(old) as db:
        db.execute("ALTER TABLE traces DROP COLUMN entropy")  # the layout of files written before it was kept
    table = TraceTable.load(old)
    assert not table.keeps_entropy and table.trace("p00").entropy == {} and table.trace("p00").confidence
    merged = TraceTable.create_or_resume(tmp_path / "new.sqlite", table.meta)
    assert merged.merge_from(table) > 0 and merged.trace("p01").entropy == {} and not merged.keeps_entropy
    table.close()
    resumed = build_tiny_traces(old, target, drafter, tiny_prompts()[:3])  # gains the column; the new row keeps its entropies
    assert resumed.trace("p02").entropy and resumed.trace("p00").entropy == {} and not resumed.keeps_entropy


def test_traces_replay_every_timed_decode_of_the_tiny_table(tiny_traces_path, tiny_table_path):
    """The validation script's exactness check on the tiny tables (same models, prompts and settings)."""
    from validate_traces import acceptance_agreement, exactness

    traces, table = TraceTable.load(tiny_traces_path), RewardTable.load(tiny_table_path)
    lines = exactness(traces, table, None)
    assert lines[0].startswith("exactness: 48 of 48 (prompt, block) pairs") and "disagreeing with their first repeat: 0" in lines[0]
    # exact traces: every block's mean acceptance is the timed one, and at T=0 a timed repeat repeats the first
    rows = [line.split(" | ") for line in acceptance_agreement(traces, table, None)[1].splitlines()[2:]]
    assert [row[0].strip("| ") for row in rows] == ["1", "2", "4"]
    assert all(row[4] == "1.000" and row[5].startswith("1.000 (3 prompts)") for row in rows)


def test_resume_is_idempotent_and_refuses_other_settings(tmp_path, models):
    target, drafter = models
    path = tmp_path / "t.sqlite"
    build_tiny_traces(path, target, drafter, tiny_prompts()[:2]).close()
    again = build_tiny_traces(path, target, drafter, tiny_prompts()[:3])  # one new prompt, two already there
    assert len(again.done_prompts()) == 3
    assert again.db.execute("SELECT COUNT(*) FROM traces").fetchone()[0] == 3
    with pytest.raises(ValueError, match="other settings, refusing to mix them: block_sizes: table has \\[1, 2, 4\\], asked for \\[1, 2\\]"):
        TraceTable.create_or_resume(path, {**again.meta, "block_sizes": [1, 2]})


def test_shards_merge_into_the_whole(tmp_path, models, tiny_traces_path):
    target, drafter = models
    prompts = tiny_prompts()
    halves = [build_tiny_traces(tmp_path / f"s{i}.sqlite", target, drafter, prompts[i::2]) for i in range(2)]
    merged = TraceTable.create_or_resume(tmp_path / "all.sqlite", halves[0].meta)
    assert sum(merged.merge_from(h) for h in halves) > 0
    whole = TraceTable.load(tiny_traces_path)
    assert merged.done_prompts() == whole.done_prompts()
    assert merged.trace("p05") == whole.trace("p05")


def test_bad_files_are_explained(tmp_path, tiny_table_path, tiny_traces_path):
    truncated = tmp_path / "cut.sqlite"
    truncated.write_bytes(Path(tiny_traces_path).read_bytes()[:3000])
    with pytest.raises(ValueError, match="not a readable trace table"):
        TraceTable.load(truncated)
    with pytest.raises(ValueError, match="not a readable trace table"):
        TraceTable.load(tiny_table_path)  # a reward table has no traces
    with pytest.raises(ValueError, match="unknown trace table 'nope'; shipped: "):
        TraceTable.load("nope")
    with pytest.raises(ValueError, match="does not match what was asked for: drafter: table has 'tiny', asked for 'other'"):
        TraceTable.load(tiny_traces_path, expect={"drafter": "other"})


def test_simulated_rewards_are_the_simulated_decodes_and_say_so(tiny_traces_path, models):
    target, drafter = models
    traces, profile = TraceTable.load(tiny_traces_path), tiny_profile(target, drafter)
    view = SimulatedRewards(traces, profile).view(FEATURES, "test")
    assert view.simulated_under == "tiny-model" and len(view) == 3 and view.observations.shape[1] == 32 + 3
    for i, pid in enumerate(view.prompt_ids):
        trace = traces.trace(pid)
        for k, b in enumerate(TINY_BLOCKS):
            assert view.samples[i][k][0, 0] == pytest.approx(simulate(trace, profile, b).tokens_per_second)
        assert view.ar_samples[i][0] == pytest.approx(simulate(trace, profile, 1).tokens_per_second)


def test_profiles_that_do_not_fit_are_refused(tiny_traces_path, models, tmp_path):
    target, drafter = models
    traces = TraceTable.load(tiny_traces_path)
    other = DeviceProfile(**{**tiny_profile(target, drafter).__dict__, "drafter_hash": "feedbeef", "drafter": "other"})
    with pytest.raises(ValueError, match="does not fit tiny-traces.sqlite: drafter 'other' \\(feedbeef\\), the traces 'tiny'"):
        SimulatedRewards(traces, other)
    short = tiny_profile(target, drafter)
    del short.verify[4]
    with pytest.raises(ValueError, match="no cost for block sizes \\[4\\]"):
        SimulatedRewards(traces, short)
    (tmp_path / "bad.json").write_text("{\"name\": ")
    with pytest.raises(ValueError, match="not a readable device profile"):
        DeviceProfile.load(tmp_path / "bad.json")


def sampled_tiny_traces(target, drafter, prompts, seeds=(0, 1, 2)) -> tuple[dict, dict]:
    """T=1 traces of `prompts` (one seeded decode per block and seed) and the metadata of their table, less its seeds."""
    from bp_rl.collection import table_metadata
    from bp_rl.measurement import DecodeSettings

    token_ids = tiny_token_ids(tiny_prompts())
    settings = DecodeSettings(max_new_tokens=TINY_NEW_TOKENS, temperature=1.0)
    traces = {p.id: trace_request(target, drafter, token_ids[p.id], TINY_BLOCKS, TINY_NEW_TOKENS, 1.0, feature_sets=("last_hidden", "logit_stats"),
                                  seeds=list(seeds)) for p in prompts}
    dims = {name: len(v) for name, v in next(iter(traces.values())).observations.items()}
    return traces, table_metadata(target, drafter, "tiny", "tiny-suite", settings, TINY_BLOCKS, dims)


def test_sampled_traces_store_one_repeat_per_seed_and_refuse_per_cycle_replay(tmp_path, models, tiny_profile_path):
    from envs import make_schedule_env

    target, drafter = models
    prompts = tiny_prompts()[:4]
    traces, meta = sampled_tiny_traces(target, drafter, prompts)
    with pytest.raises(ValueError, match="needs its seeds"):
        TraceTable.create_or_resume(tmp_path / "t1.sqlite", meta)
    table = TraceTable.create_or_resume(tmp_path / "t1.sqlite", {**meta, "seeds": [0, 1, 2]})
    for prompt in prompts:
        table.add(prompt, traces[prompt.id], seconds=0.01)
    with pytest.raises(ValueError, match="refusing to mix"):
        TraceTable.create_or_resume(tmp_path / "t1.sqlite", {**meta, "seeds": [5]})
    table = TraceTable.load(tmp_path / "t1.sqlite")
    assert table.sampled and table.done_prompts() == {p.id for p in prompts}
    pid = prompts[0].id
    assert table.trace(pid).cycles == traces[pid].cycles
    profile = DeviceProfile.load(tiny_profile_path)
    view = SimulatedRewards(table, profile).view(FEATURES)
    i = view.prompt_ids.index(pid)
    for k, b in enumerate(TINY_BLOCKS):
        expected = [simulate(traces[pid], profile, b, seed_index=j).tokens_per_second for j in range(3)]
        assert view.samples[i][k][:, 0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="per-cycle replay needs an exact T=0 trace"):
        make_schedule_env(str(tmp_path / "t1.sqlite"), str(tiny_profile_path), "train", "block", FEATURES).reset(seed=0)
    env = make_trace_env(str(tmp_path / "t1.sqlite"), str(tiny_profile_path), "train", FEATURES, reward="tokens_per_second")
    rewards = set()
    for episode in range(12):  # one seeded decode drawn per episode
        env.reset(seed=episode, options={"prompt_index": 0})
        rewards.add(round(env.step(2)[1], 6))
    assert 1 < len(rewards) <= 3
    show = [sys.executable, str(ROOT / "experiments" / "table.py"), "show", str(tmp_path / "t1.sqlite"), "--profile", str(tiny_profile_path)]
    result = subprocess.run(show, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sampled T=1 traces (a sample" in result.stdout and "exact" not in result.stdout and "AUC" not in result.stdout


def test_sampled_traces_are_validated_against_a_table_timed_at_their_temperature(tmp_path, models, tiny_profile_path, tiny_table_path,
                                                                                  capsys, monkeypatch):
    """Above T=0 no decode repeats another: validate_traces.py compares mean acceptance and simulated speed, not cycles,
    and refuses a table timed at another temperature."""
    import validate_traces
    from bp_rl.collection import plan_rows

    target, drafter = models
    prompts = tiny_prompts()[:4]
    traces, meta = sampled_tiny_traces(target, drafter, prompts, seeds=(0, 1))
    table = TraceTable.create_or_resume(tmp_path / "t1.sqlite", {**meta, "seeds": [0, 1]})
    for prompt in prompts:
        table.add(prompt, traces[prompt.id], seconds=0.01)
    rows = plan_rows(prompts, TINY_BLOCKS, {"train": 3, "val": 1, "test": 1}, seed=0)
    build_tiny_table(tmp_path / "timed-t1.sqlite", target, drafter, rows, temperature=1.0).close()

    def validate(table_path) -> str:
        monkeypatch.setattr(sys, "argv", ["validate_traces.py", "--traces", str(tmp_path / "t1.sqlite"), "--table", str(table_path),
                                          "--profile", str(tiny_profile_path)])
        validate_traces.main()
        return capsys.readouterr().out

    out = validate(tmp_path / "timed-t1.sqlite")
    assert "acceptance at T=1" in out and "seeds [0, 1]" in out and "exactness" not in out and "timing: SIMULATED" in out
    # mean acceptance per block, recomputed here from the stored cycles of both sides
    timed = RewardTable.load(tmp_path / "timed-t1.sqlite")
    for block in TINY_BLOCKS:
        timed_mean = np.mean([np.mean([np.frombuffer(a, np.uint8).mean() for (a,) in timed.db.execute(
            "SELECT acceptance FROM runs WHERE prompt_id = ? AND block_size = ?", (p.id, block))]) for p in prompts])
        traced_mean = np.mean([np.mean([np.mean(traces[p.id].acceptance_lengths(block, j)) for j in range(2)]) for p in prompts])
        assert f"| {block} | 4 | {timed_mean:.3f} | {traced_mean:.3f} | {traced_mean / timed_mean:.3f} |" in out
    with sqlite3.connect(tmp_path / "timed-t1.sqlite") as db:  # a sample whose first token ended it: no verify pass to count
        db.execute("UPDATE runs SET acceptance = X'', new_tokens = 1 WHERE prompt_id = 'p00' AND block_size = 2 AND repeat = 0")
    assert "left out, as they ran no verify pass: 1 timed and 0 traced decodes" in validate(tmp_path / "timed-t1.sqlite")
    with pytest.raises(SystemExit):
        validate(tiny_table_path)  # timed at T=0
    assert "settings: the traces have temperature=1.0, the table 0.0" in capsys.readouterr().err


def test_trace_env_passes_the_checkers_and_rewards_the_simulated_speed(tiny_traces_path, tiny_profile_path):
    env = make_trace_env(str(tiny_traces_path), str(tiny_profile_path), split="train", feature_set=FEATURES)
    check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    made = gym.make("bp_rl/BlockSizeTrace-v0", traces=str(tiny_traces_path), profile=str(tiny_profile_path), split="test", feature_set=FEATURES)
    view = made.unwrapped.backend.view
    for episode in range(6):  # deterministic: every visit of a (prompt, action) gets the same reward
        _, info = made.reset(seed=episode)
        i = view.prompt_ids.index(info["prompt_id"])
        _, reward, terminated, _, step = made.step(episode % 3)
        assert terminated and reward == pytest.approx(view.samples[i][episode % 3][0, 0])
        assert step["best_block"] == view.block_sizes[int(view.rewards().argmax(axis=1)[i])]
    assert made.unwrapped.backend.trace(0).tokens == TraceTable.load(tiny_traces_path).trace(view.prompt_ids[0]).tokens


def test_run_py_trains_and_evaluates_on_traces(tiny_traces_path, tiny_profile_path, tiny_table_path, tmp_path):
    overrides = ["env=trace", f"env.traces={tiny_traces_path}", f"env.profile={tiny_profile_path}", "agent=linucb",
                 "model.target=tiny-llama", f"env.feature_set={FEATURES}", "budget=128", "fixed_block_size=4", f"hydra.run.dir={tmp_path}"]

    def run_py(*more):
        return subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), *overrides, *more], cwd=ROOT, capture_output=True,
                              text=True, timeout=600, env={"WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"})

    result = run_py()  # model.drafter unset: the traces' own
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["env"] == "trace" and results["profile"] == "tiny-model" and set(results["references"]) >= {"grid", "best"}
    assert "rewards SIMULATED from the traces tiny-traces.sqlite under profile 'tiny-model'" in result.stdout
    assert "drafter: tiny\n" in (tmp_path / "config.yaml").read_text()
    timed = run_py(f"env.eval_table={tiny_table_path}")  # trained on the traces, evaluated on a timed table of the same drafter
    assert timed.returncode == 0, timed.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["eval_table"] == str(tiny_table_path)
    assert "on trace / test, evaluated on tiny.sqlite: 3 prompts" in timed.stdout
    other = run_script("run", *overrides, "model.drafter=smollm2-135m-block")
    assert other.returncode != 0 and "drafter: table has 'tiny', asked for 'smollm2-135m-block'" in other.stderr


def test_table_py_shows_a_trace_table_under_a_profile_only(tiny_traces_path, tiny_profile_path):
    show = [sys.executable, str(ROOT / "experiments" / "table.py"), "show", str(tiny_traces_path)]
    result = subprocess.run([*show, "--profile", str(tiny_profile_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SIMULATED under profile 'tiny-model' (model: model: tiny)" in result.stdout and "| all | 12 |" in result.stdout
    assert "first drafted token at block" in result.stdout and "ranks right above wrong with AUC" in result.stdout
    result = subprocess.run(show, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "is a trace table: name a device profile (--profile NAME); shipped for its drafter: []" in result.stderr


def test_first_draft_calibration_counts_every_pair_of_anchors(tiny_traces_path):
    """The AUC `table.py show` prints equals the share of (right, wrong) anchor pairs whose confidences
    are ordered right over wrong, ties counting half."""
    from table import first_draft_calibration

    table = TraceTable.load(tiny_traces_path)
    block = max(table.block_sizes)
    right_share, auc = first_draft_calibration(table, None, block)
    pairs = [(slots[0], accepted >= 1) for pid, _, _ in table.traced_prompts() for slots, accepted in
             zip(table.trace(pid).confidence[block], table.trace(pid).accepted[block])]
    right, wrong = [c for c, ok in pairs if ok], [c for c, ok in pairs if not ok]
    assert right and wrong  # a test of the ranking needs both kinds
    expected = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong) / (len(right) * len(wrong))
    assert auc == pytest.approx(expected) and right_share == pytest.approx(len(right) / len(pairs))


@pytest.mark.real_model
def test_trace_collection_resumes_and_loses_nothing(tmp_path):
    """collect_traces.py on the real embedded target: two prompts (their continuations guessed as one
    batch, then checked), then a re-run that adds one decoded alone."""
    out = tmp_path / "t.sqlite"
    base = [sys.executable, str(ROOT / "experiments" / "collect_traces.py"), f"out={out}", "splits=[test]", "block_sizes=[1,4]",
            "max_new_tokens=8", "feature_sets=[prompt_length]", f"hydra.run.dir={tmp_path / 'h'}"]
    for more, batch in ((2, 16), (1, 1)):
        result = subprocess.run([*base, f"max_prompts={more}", f"guess_batch={batch}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    result = run_script("collect_traces", *base[2:], "guess_batch=0")
    assert result.returncode != 0 and "guess_batch must be an integer >= 1 (1: decode each prompt alone), got 0" in result.stderr
    table = TraceTable.load(out)
    # drafter=default is recorded as the drafter it stands for, the newest shipped one
    assert len(table.done_prompts()) == 3 and table.meta["drafter"] == default_drafter_name(SimpleNamespace(name="smollm2-135m"))
    with sqlite3.connect(out) as db:
        assert db.execute("SELECT COUNT(DISTINCT prompt_id) FROM observations").fetchone()[0] == 3
    sampled = [*base[:2], f"out={tmp_path / 't1.sqlite'}", *base[3:], "temperature=1", "seeds=[0,1]", "max_prompts=1"]
    result = subprocess.run(sampled, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = TraceTable.load(tmp_path / "t1.sqlite")
    assert table.sampled and table.meta["seeds"] == [0, 1] and len(table.done_prompts()) == 1
    trace = table.trace(next(iter(table.done_prompts())))
    assert all(len(trace.cycles[b]) == 2 for b in (1, 4))
    # another drafter's traces start from the stored continuations instead of decoding them again
    lookup = [*base[:2], f"out={tmp_path / 'lookup.sqlite'}", *base[3:], "drafter=prompt-lookup", f"continuations={out}", "max_prompts=3"]
    result = subprocess.run(lookup, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reused, source = TraceTable.load(tmp_path / "lookup.sqlite"), TraceTable.load(out)
    assert reused.done_prompts() == source.done_prompts() and reused.meta["drafter"] == "prompt-lookup"
    assert all(reused.trace(pid).tokens == source.trace(pid).tokens for pid in source.done_prompts())


def test_continuations_come_only_from_traces_of_the_same_target_and_settings(tiny_traces_path):
    from collect_traces import continuation_source

    meta = TraceTable.load(tiny_traces_path).meta
    assert continuation_source(str(tiny_traces_path), {**meta, "drafter": "another"}).continuation("p00")
    with pytest.raises(ValueError, match="not this target's under these settings: settings: table has"):
        continuation_source(str(tiny_traces_path), {**meta, "settings": {**meta["settings"], "max_new_tokens": 99}})
    with pytest.raises(ValueError, match="reuse needs temperature=0"):
        continuation_source(str(tiny_traces_path), {**meta, "settings": {**meta["settings"], "temperature": 1.0}})


@pytest.mark.real_model
def test_a_joblib_multirun_over_two_shards_merges_into_one_table(tmp_path):
    """The scale-out route: one Hydra job per shard through the joblib launcher, then `table.py merge`."""
    out = tmp_path / "t.sqlite"
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "collect_traces.py"), "-m", "shard=0/2,1/2", "hydra/launcher=joblib",
         "hydra.launcher.n_jobs=2", "threads=1", f"out={out}", "splits=[test]", "block_sizes=[1,4]", "max_new_tokens=4",
         "max_prompts=1", "feature_sets=[prompt_length]", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shards = sorted(tmp_path.glob("t.shard*of2.sqlite"))
    assert [p.name for p in shards] == ["t.shard0of2.sqlite", "t.shard1of2.sqlite"]
    merge = subprocess.run([sys.executable, str(ROOT / "experiments" / "table.py"), "merge", str(out), *map(str, shards)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert merge.returncode == 0, merge.stderr[-2000:]
    assert "2 traced prompts in all" in merge.stdout
    assert {p[0] for p in TraceTable.load(out).traced_prompts()} == set().union(*(TraceTable.load(s).done_prompts() for s in shards))


def test_the_shipped_traces_under_the_default_profile(capsys):
    """`env=trace` with no profile named: this machine's shipped profile, or the closest one, said so."""
    env = make_trace_env(split="test")
    said = capsys.readouterr().out
    profile = env.unwrapped.backend.rewards.profile
    assert profile.kind == "measured" and (profile.name in said or "no shipped profile" not in said)
    check_env(env, skip_render_check=True)
    view = env.backend.view
    assert len(view) == 129 and view.simulated_under == profile.name


def test_table_py_lists_the_shipped_profiles_that_price_a_trace_table_measured_first():
    from envs import DEFAULT_TABLE, DEFAULT_TRACES
    from table import profiles_for

    names = profiles_for(DEFAULT_TRACES)
    profiles = [DeviceProfile.load(name) for name in names]
    assert profiles and {p.drafter_hash for p in profiles} == {TraceTable.load(DEFAULT_TRACES).meta["drafter_hash"]}
    kinds = [p.kind for p in profiles]
    assert kinds[0] == "measured" and kinds == sorted(kinds)  # "measured" < "model"
    with pytest.raises(ValueError, match="is a timed reward table: profiles price trace tables"):
        profiles_for(DEFAULT_TABLE)
    # --near TABLE: the profile of the CPU model that timed the table first (it is shipped), the same set
    near = profiles_for(DEFAULT_TRACES, near=DEFAULT_TABLE)
    assert sorted(near) == sorted(names)
    assert DeviceProfile.load(near[0]).device == RewardTable.load(DEFAULT_TABLE).machines[0]["device"]
    with pytest.raises(ValueError, match="--near .*a timed reward table"):
        profiles_for(DEFAULT_TRACES, near=DEFAULT_TRACES)
