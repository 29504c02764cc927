"""The GPU user's path, end to end on tiny local Hugging Face folders: a Qwen3 target (with a tokenizer)
and a drafter saved by the public DFlash package, through profile_device.py, collect_traces.py,
collect.py and run.py, as the README's GPU recipe runs them with hub ids. Hub ids are refused unless
the user opts in (`allow_download=true`); the download itself is stubbed here (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import dflash_reference_config, make_tiny_target
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from bp_rl import BlockDrafter, load_drafter
from bp_rl.models import model_slug
from bp_rl.prompts import Prompt, write_suite

dflash_model = pytest.importorskip("dflash.model", reason="the reference `dflash` package is a test-only dependency")

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = "[1,2,4]"
WORDS = "def return the a of to and is in for it you what how write code number print list".split()


def tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `vocab_size` ids with a chat template, as a chat target has."""
    vocab = {"<s>": 0, "</s>": 1, "[UNK]": 2, **{w: 3 + i for i, w in enumerate(WORDS)}}
    vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")
    tokenizer.chat_template = "{% for m in messages %}user {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}you {% endif %}"
    return tokenizer


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """(target folder, DFlash drafter folder, suite path): what a GPU user points the scripts at."""
    root = tmp_path_factory.mktemp("hf")
    target = make_tiny_target("qwen3")
    target.model.save_pretrained(root / "Qwen3-tiny")
    tiny_tokenizer(target.vocab_size).save_pretrained(root / "Qwen3-tiny")
    torch.manual_seed(0)
    dflash_model.DFlashDraftModel(dflash_reference_config(target)).eval().save_pretrained(root / "Qwen3-tiny-DFlash")
    texts = ["write code to print a list", "what is the number of it", "how to return the list", "def print and return"]
    prompts = [Prompt(id=f"q{i}", category=("code", "chat")[i % 2], source="test", license="MIT", chat=bool(i % 2),
                      text=texts[i % 4], split=split) for i, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2)]
    write_suite(prompts, root / "suite.jsonl")
    return root / "Qwen3-tiny", root / "Qwen3-tiny-DFlash", root / "suite.jsonl"


def script(name: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / name), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_profile_traces_table_and_agents_from_local_hf_folders(hf_folders, tmp_path):
    target, drafter, suite = hf_folders
    models = [f"target={target}", f"drafter={drafter}", "device=cpu"]
    run = [f"hydra.run.dir={tmp_path / 'hydra'}"]

    profiled = script("profile_device.py", *models, f"block_sizes={BLOCKS}", "contexts=[16,48]", "prompt_lengths=[8,32]",
                      "repeats=1", "concurrencies=[1]", "roofline=[h200]", f"out_dir={tmp_path}", *run)
    assert profiled.returncode == 0, profiled.stderr[-3000:]
    measured = list(tmp_path.glob("Qwen3-tiny_Qwen3-tiny-DFlash_cpu-*.json"))  # named from the folders, not their paths
    assert len(measured) == 1 and (tmp_path / "roofline-h200_Qwen3-tiny_Qwen3-tiny-DFlash.json").is_file()

    traces = tmp_path / "traces.sqlite"
    traced = script("collect_traces.py", *models, f"suite={suite}", f"block_sizes={BLOCKS}", "max_new_tokens=8", f"out={traces}", *run)
    assert traced.returncode == 0, traced.stderr[-3000:]
    assert f"({drafter}, block sizes [1, 2, 4])" in traced.stdout

    table = tmp_path / "table.sqlite"
    timed = script("collect.py", *models, f"suite={suite}", "splits=[test]", "repeats={test: 1}", f"block_sizes={BLOCKS}",
                   "max_new_tokens=8", "warmup=1", f"out={table}", *run)
    assert timed.returncode == 0, timed.stderr[-3000:]

    # the recipe's last step: agents on the traces under the measured profile, with the GPU model config
    agents = script("run.py", "model=qwen3-4b-dflash", f"model.target={target}", f"model.drafter={drafter}", "agent=grid", "env=trace", f"env.traces={traces}",
                    f"env.profile={measured[0]}", "env.feature_set=last_hidden+logit_stats", "fixed_block_size=4",
                    f"hydra.run.dir={tmp_path / 'run'}")
    assert agents.returncode == 0, agents.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["env"] == "trace" and results["profile"] == measured[0].stem
    assert "rewards SIMULATED from the traces traces.sqlite" in agents.stdout


def test_hub_ids_need_the_users_opt_in(tmp_path):
    refused = script("collect_traces.py", "target=Qwen/Qwen3-4B", "drafter=z-lab/Qwen3-4B-DFlash-b16", f"out={tmp_path / 't.sqlite'}",
                     f"hydra.run.dir={tmp_path}")
    assert refused.returncode != 0 and "unknown target 'Qwen/Qwen3-4B'" in refused.stderr and "allow_download=True" in refused.stderr


def test_a_hub_drafter_downloads_only_with_allow_download(hf_folders, monkeypatch):
    import huggingface_hub
    from bp_rl import load_target

    target_folder, drafter_folder, _ = hf_folders
    target = load_target(str(target_folder), device="cpu")
    with pytest.raises(FileNotFoundError, match=r"no drafter 'z-lab/Qwen3-4B-DFlash-b16'.*a hub id with allow_download=True"):
        load_drafter("z-lab/Qwen3-4B-DFlash-b16", target)
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: asked.append(repo) or str(drafter_folder))
    drafter = load_drafter("z-lab/Qwen3-4B-DFlash-b16", target, allow_download=True)
    assert asked == ["z-lab/Qwen3-4B-DFlash-b16"] and isinstance(drafter, BlockDrafter) and drafter.target_layer_ids == (0, 2)


def test_model_slugs_are_file_names():
    assert model_slug("smollm2-135m-block-v5") == "smollm2-135m-block-v5"
    assert model_slug("z-lab/Qwen3-4B-DFlash-b16") == "Qwen3-4B-DFlash-b16"
    assert model_slug("/models/Qwen3-4B/") == "Qwen3-4B"
