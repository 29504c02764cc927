"""`experiments/run.py` and `report.py` end to end, on a tiny real table (seconds per run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import run_script

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "experiments" / "conf"
AGENT_CONFIGS = sorted(p.stem for p in (CONF / "agent").glob("*.yaml") if p.stem != "plugin")
TINY = ["env=table", "model.target=tiny-llama", "model.drafter=tiny", "env.feature_set=last_hidden+logit_stats", "budget=128", "fixed_block_size=4"]
FAST = {
    "ppo": ["agent.n_steps=32", "agent.batch_size=16", "agent.eval_every=64"],
    "oracle": ["agent.epochs=50"],
    "fixed": ["agent.block_size=4"],  # the tiny table's block sizes are 1, 2, 4
}


def run(args: list[str], cwd: Path, mode: str = "disabled") -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": mode, "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_py(table: Path, out: Path, *overrides: str, mode: str = "disabled") -> subprocess.CompletedProcess:
    return run([str(ROOT / "experiments" / "run.py"), f"env.table={table}", *TINY, f"hydra.run.dir={out}", *overrides], ROOT, mode)


@pytest.mark.parametrize("name", AGENT_CONFIGS)
def test_every_agent_runs_end_to_end(name, tiny_table_path, tmp_path):
    result = run_py(tiny_table_path, tmp_path, f"agent={name}", *FAST.get(name, []))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["agent"] == name and results["seed"] == 0 and results["split"] == "test"
    metrics = results["metrics"]
    for key in ("tokens_per_second", "speedup", "mean_acceptance", "gap_closed", "regret", "decision_ms", "per_category"):
        assert key in metrics
    assert set(results["references"]) >= {"grid", "best"} - {name}
    assert (tmp_path / "agent" / "agent.json").is_file() and (tmp_path / "config.yaml").is_file()
    assert (tmp_path / "tokens_per_second.png").is_file() and (tmp_path / "block_histogram.png").is_file()
    assert "| agent | prompts | tokens/s" in result.stdout
    assert not (tmp_path / "wandb").exists()  # logger disabled: W&B writes nothing


def test_wandb_offline_run_holds_the_metrics(tiny_table_path, tmp_path):
    result = run_py(tiny_table_path, tmp_path, "agent=grid", "logger.mode=offline", mode="offline")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # the offline log is protobuf records whose values are JSON text: the logged numbers are in it
    log = next(runs[0].glob("*.wandb")).read_bytes()
    metrics = json.loads((tmp_path / "results.json").read_text())["metrics"]
    assert b"eval/tokens_per_second" in log and repr(metrics["tokens_per_second"]).encode() in log
    assert b"train/mean_reward" in log and b"eval/table" in log and b"agent-grid-s0" in log
    assert list((runs[0] / "files" / "media" / "images").rglob("block_histogram*.png"))


def test_sweep_and_report(tiny_table_path, tmp_path):
    sweep = tmp_path / "sweep"
    result = run(
        [str(ROOT / "experiments" / "run.py"), "-m", "agent=oracle", "agent.hidden_size=8,16", "seed=0,1",
         f"env.table={tiny_table_path}", *TINY, f"hydra.sweep.dir={sweep}"],
        ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(sweep.rglob("results.json"))) == 4
    report = run([str(ROOT / "experiments" / "report.py"), str(sweep)], ROOT)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (sweep / "report.md").read_text()
    # hyperparameter variants stay apart (one row each, over both seeds); the references come once per seed
    assert "| oracle agent.hidden_size=8 | 0,1 |" in text and "| oracle agent.hidden_size=16 | 0,1 |" in text
    assert text.index("hidden_size=8 |") < text.index("hidden_size=16 |")  # numbers in numeric order
    assert "| grid | 0,1 |" in text and "| best | 0,1 |" in text
    assert (sweep / "tokens_per_second.png").is_file()


def test_agents_evaluate_on_another_table(tiny_table_path, tmp_path):
    """Trained on the T=0 table, evaluated on a T=1 table of the test split only: the T=1 rewards count."""
    from bp_rl.collection import plan_rows
    from bp_rl.rewards import RewardTable
    from conftest import TINY_BLOCKS, build_tiny_table, tiny_prompts, tiny_table_models

    hot = tmp_path / "t1.sqlite"
    test_prompts = [p for p in tiny_prompts() if p.split == "test"]
    rows = plan_rows(test_prompts, TINY_BLOCKS, {"test": 2}, seed=0)
    build_tiny_table(hot, *tiny_table_models(), rows=rows, temperature=1.0).close()
    result = run_py(tiny_table_path, tmp_path / "run", "agent=oracle", *FAST["oracle"], f"env.eval_table={hot}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["eval_table"] == str(hot) and results["metrics"]["prompts"] == len(test_prompts)
    assert f"evaluated on t1.sqlite: {len(test_prompts)} prompts" in result.stdout
    per_prompt_best = RewardTable.load(hot).view("last_hidden+logit_stats", "test").rewards("tokens_per_second").max(axis=1)
    assert results["references"]["best"]["tokens_per_second"] == pytest.approx(per_prompt_best.mean())

    fewer_blocks = tmp_path / "blocks.sqlite"
    build_tiny_table(fewer_blocks, *tiny_table_models(), rows=[], block_sizes=[1, 2]).close()
    result = run_py(tiny_table_path, tmp_path / "bad", f"env.eval_table={fewer_blocks}")
    assert result.returncode != 0 and "has block sizes [1, 2], the training table [1, 2, 4]" in result.stderr


def test_cross_validation_evaluates_every_prompt_once(tiny_table_path, tmp_path):
    from bp_rl.rewards import RewardTable

    result = run_py(tiny_table_path, tmp_path, "agent=oracle", *FAST["oracle"], "env.folds=3")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["folds"] == 3 and results["metrics"]["prompts"] == 12  # all splits, each prompt held out once
    assert sorted(p.name for p in (tmp_path / "agent").iterdir()) == ["fold0", "fold1", "fold2"]
    per_prompt_best = RewardTable.load(tiny_table_path).view("last_hidden+logit_stats").rewards("tokens_per_second").max(axis=1)
    assert results["references"]["best"]["tokens_per_second"] == pytest.approx(per_prompt_best.mean())


def test_a_table_timed_on_the_test_split_only_is_cross_validated_by_default(tiny_test_only_table_path, tmp_path):
    result = run_py(tiny_test_only_table_path, tmp_path, "agent=grid")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "was measured on ['test'] only: 4-fold cross-validation" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["folds"] == 4 and results["metrics"]["prompts"] == 12


@pytest.mark.parametrize(
    "override, message",
    [
        ("agent=nope", "unknown agent 'nope'; known agents: ["),
        ("agent.learning_rat=0.1", "learning_rat"),
        ("+agent.learning_rat=0.1", "agent 'ppo' does not accept ['learning_rat']"),
        ("agent.learning_rate=fast", "agent 'ppo' setting learning_rate must be a float (default 0.0003), got 'fast'"),
        ("env.table=/nonexistent/t.sqlite", "reward table '/nonexistent/t.sqlite' does not exist"),
        ("env.reward=fast", "unknown reward 'fast'"),
        ("env.split=dev", "unknown split 'dev'"),
        ("env.folds=2", "fold 0 of 2: need at least 3 folds"),
        ("logger.mode=loud", "unknown logger.mode 'loud'"),
    ],
)
def test_bad_overrides_fail_with_a_message(override, message, tiny_table_path, tmp_path, monkeypatch):
    from run import route_plugin_agents

    monkeypatch.setenv("WANDB_MODE", "disabled")
    result = run_script("run", *route_plugin_agents([f"env.table={tiny_table_path}", *TINY, f"hydra.run.dir={tmp_path}", override]))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("group, options", [("agent", AGENT_CONFIGS), ("env", ["table", "trace", "live"]), ("model", ["smollm2-135m", "qwen3-4b-dflash"])])
def test_every_config_composes(group, options):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for option in options:
            cfg = compose(config_name="run", overrides=[f"{group}={option}"])
            assert cfg[group] is not None


@pytest.mark.slow
@pytest.mark.real_model
def test_live_evaluation_decodes_the_agent_and_grid_side_by_side(tmp_path):
    result = run(
        [str(ROOT / "experiments" / "run.py"), "agent=oracle", "env=live", "env.max_prompts=3", "compare=[grid]", f"hydra.run.dir={tmp_path}"],
        ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["env"] == "live" and results["metrics"]["prompts"] == 3
    assert results["references"]["grid"]["prompts"] == 3 and results["metrics"]["tokens_per_second"] > 0
