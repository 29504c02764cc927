"""Shared fixtures: tiny random targets (fast, for logic) and the real embedded target (marked)."""

from __future__ import annotations

import contextlib
import importlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from bp_rl import BlockDrafter, Target

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))  # tests import the scripts and their helpers (table, tracking, ...) as the scripts do


def run_script(name: str, *overrides: str) -> subprocess.CompletedProcess:
    """What `python experiments/<name>.py <overrides>` returns, run in this process.

    For the runs that only check how bad input is refused: a new interpreter would spend most of their
    seconds importing torch and transformers again. End-to-end runs stay subprocesses, as a user types them.
    """
    main = importlib.import_module(name).main  # a @hydra.main function: it reads sys.argv, and exits 1 on an error
    args = [str(EXPERIMENTS / f"{name}.py"), *overrides]
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        patch.setattr(sys, "argv", args)
        patch.setenv("HYDRA_MAIN_MODULE", "__main__")  # Hydra finds conf/ beside the script only for a __main__ module
        patch.delenv("HYDRA_FULL_ERROR", raising=False)  # which would re-raise instead of exiting 1
        try:
            main()
            returncode = 0
        except SystemExit as exit:
            returncode = exit.code if isinstance(exit.code, int) else 1
    return subprocess.CompletedProcess(args, returncode, stdout.getvalue(), stderr.getvalue())


TINY_SHAPES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
    # Larger-than-usual init so logits are peaked: no near-ties for argmax to flip on rounding.
    initializer_range=0.5,
)


def make_tiny_target(arch: str = "llama", vocab_size: int = 64, seed: int = 0, **shape) -> Target:
    """A randomly initialised causal LM small enough to decode in milliseconds."""
    torch.manual_seed(seed)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[arch]
    config = config_cls(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=1, **{**TINY_SHAPES, **shape})
    model = model_cls(config).eval()
    return Target(name=f"tiny-{arch}", model=model, tokenizer=None, device=torch.device("cpu"))


def dflash_reference_config(target) -> Qwen3Config:
    """The config of a tiny drafter for `target` in the public DFlash format (the reference package's)."""
    return Qwen3Config(
        vocab_size=target.vocab_size,
        **{**TINY_SHAPES, "num_hidden_layers": 2, "intermediate_size": 48, "initializer_range": 0.2},
        num_target_layers=target.num_layers,
        block_size=16,
        dflash_config={"target_layer_ids": [0, 2], "mask_token_id": target.vocab_size - 1},
    )


@pytest.fixture(scope="session", params=["llama", "qwen3"])
def tiny_target(request) -> Target:
    return make_tiny_target(request.param)


@pytest.fixture(scope="session")
def tiny_drafter(tiny_target) -> BlockDrafter:
    return BlockDrafter.for_target(tiny_target, num_layers=2, block_size=16, seed=1)


@pytest.fixture(scope="session")
def smollm2():
    from bp_rl import load_target

    return load_target("smollm2-135m", device="cpu")


TINY_BLOCKS = [1, 2, 4]
TINY_FEATURES = ("last_hidden", "logit_stats", "prompt_length")


def tiny_prompts() -> list:
    """Twelve token-id prompts over two categories: 6 train, 3 val, 3 test."""
    from bp_rl.prompts import Prompt

    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    return [
        Prompt(id=f"p{i:02d}", category=("code", "chat")[i % 2], source="test", license="MIT", chat=False, text="", split=split)
        for i, split in enumerate(splits)
    ]


TINY_NEW_TOKENS = 12


def tiny_token_ids(prompts) -> dict[str, list[int]]:
    """The token ids of the tiny prompts (the same for every table built from them)."""
    generator = torch.Generator().manual_seed(0)
    return {p.id: torch.randint(2, 64, (5 + i,), generator=generator).tolist() for i, p in enumerate(prompts)}


def build_tiny_table(path, target, drafter, rows=None, temperature=0.0, allow_new_machine=False, **overrides):
    """A real (tiny) reward table: every row decoded and timed by the collection loop."""
    from bp_rl.collection import collect_rows, plan_rows, table_metadata
    from bp_rl.measurement import DecodeSettings, measure
    from bp_rl.rewards import RewardTable

    settings = DecodeSettings(max_new_tokens=TINY_NEW_TOKENS, temperature=temperature)
    prompts = tiny_prompts()
    token_ids = tiny_token_ids(prompts)
    warm = measure(target, drafter, token_ids["p00"], 2, settings, TINY_FEATURES)
    dims = {name: len(vector) for name, vector in warm.observations.items()}
    meta = table_metadata(target, drafter, "tiny", "tiny-suite", settings, TINY_BLOCKS, dims)
    meta.update(overrides)
    table = RewardTable.create_or_resume(path, meta, allow_new_machine)
    if rows is None:
        rows = plan_rows(prompts, TINY_BLOCKS, {"train": 1, "val": 1, "test": 2}, seed=0)
    collect_rows(table, target, drafter, rows, token_ids, settings, TINY_FEATURES, seed=0)
    return table


def tiny_table_models() -> tuple[Target, BlockDrafter]:
    """The target and drafter every tiny table is measured with (so tables built apart can merge)."""
    target = make_tiny_target("llama")
    return target, BlockDrafter.for_target(target, num_layers=1, block_size=4, seed=1)


@pytest.fixture(scope="session")
def tiny_table_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "tiny.sqlite"
    build_tiny_table(path, *tiny_table_models()).close()
    return path


@pytest.fixture(scope="session")
def tiny_test_only_table_path(tiny_table_path, tmp_path_factory):
    """The tiny table with every prompt in the test split, as a table timed on the test split only is."""
    import shutil
    import sqlite3

    path = tmp_path_factory.mktemp("tables") / "tiny-test-only.sqlite"
    shutil.copy(tiny_table_path, path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE prompts SET split = 'test'")
    return path


def build_tiny_traces(path, target, drafter, prompts=None):
    """A real (tiny) trace table of the tiny prompts: the same prompts, models and settings as the tiny reward table."""
    from bp_rl.collection import table_metadata
    from bp_rl.measurement import DecodeSettings
    from bp_rl.trace_table import TraceTable
    from bp_rl.traces import trace_request

    prompts = tiny_prompts() if prompts is None else prompts
    token_ids = tiny_token_ids(tiny_prompts())
    traces = {p.id: trace_request(target, drafter, token_ids[p.id], TINY_BLOCKS, TINY_NEW_TOKENS, feature_sets=TINY_FEATURES) for p in prompts}
    dims = {name: len(vector) for name, vector in next(iter(traces.values())).observations.items()}
    meta = table_metadata(target, drafter, "tiny", "tiny-suite", DecodeSettings(max_new_tokens=TINY_NEW_TOKENS), TINY_BLOCKS, dims)
    table = TraceTable.create_or_resume(path, meta)
    for prompt in prompts:
        table.add(prompt, traces[prompt.id], seconds=0.01)
    return table


def tiny_profile(target, drafter, name: str = "tiny-model"):
    """A hand-written (model) profile for the tiny models: a verify pass costs more the more tokens it checks."""
    from bp_rl.drafter import drafter_fingerprint
    from bp_rl.profiles import DeviceProfile

    return DeviceProfile(
        name=name, kind="model", device="model: tiny", target=target.name, drafter="tiny", drafter_hash=drafter_fingerprint(drafter),
        verify={b: {8: 0.010 + 0.002 * b, 64: 0.012 + 0.003 * b} for b in TINY_BLOCKS}, draft={b: 0.002 for b in TINY_BLOCKS if b > 1},
        prefill={8: 0.02, 64: 0.05}, overhead=0.001, note="test model",
        # under load, a pass's cost grows with the tokens the whole batch verifies
        batched={1: {b: 0.010 + 0.002 * b for b in TINY_BLOCKS}, 4: {b: 0.012 + 0.010 * b for b in TINY_BLOCKS}}, batched_context=32,
    )


@pytest.fixture(scope="session")
def tiny_traces_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("traces") / "tiny-traces.sqlite"
    build_tiny_traces(path, *tiny_table_models()).close()
    return path


@pytest.fixture(scope="session")
def tiny_profile_path(tmp_path_factory):
    return tiny_profile(*tiny_table_models()).save(tmp_path_factory.mktemp("profiles") / "tiny-model.json")
