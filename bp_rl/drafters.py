"""Drafters by name: the named ones, the trained ones shipped with the package, and `load_drafter`.

The registry sits apart from the `Drafter` base class (`bp_rl.drafter`), so the implementations
import the base and this module imports them: no import circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bp_rl.block_drafter import BlockDrafter
from bp_rl.drafter import Drafter
from bp_rl.models import Target, load_target
from bp_rl.prompt_lookup import PromptLookupDrafter


def _prompt_lookup(target, **options) -> Drafter:
    return PromptLookupDrafter(**options)


def _random_block(target, **options) -> Drafter:
    return BlockDrafter.for_target(target, **options)


#: drafters available by name; anything else is a drafter folder
NAMED_DRAFTERS: dict[str, Callable[..., Drafter]] = {
    "prompt-lookup": _prompt_lookup,  # training-free n-gram lookup
    "random-block": _random_block,  # untrained block drafter: timing and plumbing only
}
#: trained drafters shipped with the package, one folder each, loadable by folder name
SHIPPED_DRAFTERS_DIR = Path(__file__).parent / "data" / "drafters"


def shipped_drafters() -> list[str]:
    if not SHIPPED_DRAFTERS_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DRAFTERS_DIR.iterdir() if (p / "config.json").is_file())


def default_drafter_name(target) -> str:
    """The newest shipped block drafter trained for `target`: `<target>-block-vN` with the highest N
    (`<target>-block` is version 1). Older versions stay loadable by name."""
    base, shipped = f"{target.name}-block", shipped_drafters()
    versions = {1: base} if base in shipped else {}
    for name in shipped:
        suffix = name.removeprefix(f"{base}-v")
        if name != suffix and suffix.isdigit():
            versions[int(suffix)] = name
    if not versions:
        raise FileNotFoundError(
            f"no shipped drafter for target {target.name!r} (shipped: {shipped}); "
            "train one with experiments/train_drafter.py or pass a drafter name or folder"
        )
    return versions[max(versions)]


def resolve_drafter_name(path_or_name: str, target) -> str:
    """The name a table, trace set or profile records: "default" becomes the drafter it stands for."""
    return default_drafter_name(target) if path_or_name == "default" else path_or_name


def load_drafter(path_or_name: str, target, allow_download: bool = False, **options) -> Drafter:
    """A drafter for `target`: "default" (the shipped drafter for this target), a name from
    `NAMED_DRAFTERS` (with its `options`), a shipped drafter name, a `BlockDrafter` folder
    (config.json + safetensors; ours or a public DFlash checkpoint), or, only with
    `allow_download=True`, the hub id of a public DFlash checkpoint (e.g. z-lab/Qwen3-4B-DFlash-b16)."""
    shipped = shipped_drafters()
    path_or_name = resolve_drafter_name(path_or_name, target)
    if path_or_name in NAMED_DRAFTERS:
        try:
            return NAMED_DRAFTERS[path_or_name](target, **options)
        except TypeError as err:  # an option the drafter does not take
            raise ValueError(f"bad option for drafter {path_or_name!r}: {err}") from err
    folder = SHIPPED_DRAFTERS_DIR / path_or_name if path_or_name in shipped else Path(path_or_name)
    if not folder.is_dir() and allow_download:
        from huggingface_hub import snapshot_download  # only a user who opted in reaches the network

        folder = Path(snapshot_download(path_or_name, allow_patterns=["*.json", "*.safetensors"]))
    if folder.is_dir():
        if options:
            raise ValueError(f"a drafter folder takes no options, got {sorted(options)}")
        return BlockDrafter.load(folder, target)
    raise FileNotFoundError(
        f"no drafter {path_or_name!r}: known names {sorted([*NAMED_DRAFTERS, *shipped, 'default'])}, "
        "a drafter folder (config.json + model.safetensors), or a hub id with allow_download=True"
    )


def load_models(target: str, drafter: str, device: str | None = None, dtype: str | None = None,
                allow_download: bool = False) -> tuple[Target, Drafter, str]:
    """The target and drafter an experiment script names (`load_target`, `load_drafter`; hub ids only
    with `allow_download`), and the drafter's name as tables, traces and profiles record it."""
    loaded = load_target(target, device=device, dtype=dtype, allow_download=allow_download)
    name = resolve_drafter_name(drafter, loaded)
    return loaded, load_drafter(name, loaded, allow_download=allow_download), name
