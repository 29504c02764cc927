"""Measure the device cost profile of this machine: what each pass of speculative decoding costs here.

    python experiments/profile_device.py                        # the embedded target and shipped drafter
    python experiments/profile_device.py drafter=default repeats=20

Times (median of repeats, after warm-up, device-synchronised, all passes interleaved round by
round against the machine's drift) a target forward over n tokens at several context lengths, a
drafter proposal at every block size, prefills of several lengths and the per-cycle overhead of the
decoding loop (a real decode per block size beyond its isolated passes), batched target forwards
(B concurrent requests x n tokens, for the `concurrency` of the trace environments), and writes them with the
device's name and library versions as one JSON (`bp_rl.DeviceProfile`). With `flat=true` it also writes the `flat` model
profile derived from it (every cycle costs one 1-token step), and with `roofline=[h200]` roofline
models of accelerators (from weight bytes, bandwidth and peak FLOPs): models, labelled so. A trace table
collected anywhere then gives this machine's tokens/s: `run.py env=trace env.profile=<name>`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bp_rl.drafters import load_models
from bp_rl.models import model_slug
from bp_rl.outcomes import DEFAULT_BLOCK_SIZES
from bp_rl.profiles import flat_profile, measure_profile, roofline_profile
from bp_rl.timing import device_name


def device_slug(device: str) -> str:
    """'CPU AMD EPYC, family 26 model 2 (2 threads)' -> 'cpu-amd-epyc-f26m2-2t': a file-name-safe machine name."""
    slug = re.sub(r"\((\d+) threads\)", r"\1t", device.lower())
    slug = re.sub(r"family (\d+) model (\d+)", r"f\1m\2", slug)
    slug = re.sub(r"\(r\)|\(tm\)|processor|cpu @.*", "", slug)
    return re.sub(r"[^a-z0-9]+", "-", slug).strip("-")


@hydra.main(config_path="conf", config_name="profile_device", version_base="1.3")
def main(cfg: DictConfig) -> None:
    target, drafter, drafter_name = load_models(cfg.target, cfg.drafter, cfg.device, cfg.dtype, cfg.allow_download)
    out_dir = Path(hydra.utils.to_absolute_path(cfg.out_dir))
    block_sizes = tuple(cfg.block_sizes or DEFAULT_BLOCK_SIZES)
    for accelerator in cfg.roofline:
        model = roofline_profile(target, drafter, drafter_name, accelerator, block_sizes=block_sizes, contexts=tuple(cfg.contexts),
                                 prompt_lengths=tuple(cfg.prompt_lengths), concurrencies=tuple(cfg.concurrencies))
        print(f"model profile {model.name!r} -> {model.save(out_dir / f'{model.name}.json')}")
    if not cfg.measure:
        return
    name = cfg.name or f"{model_slug(cfg.target)}_{model_slug(drafter_name)}_{device_slug(device_name(target.device))}"
    started = time.perf_counter()
    profile = measure_profile(
        target, drafter, drafter_name, name, block_sizes, tuple(cfg.contexts), tuple(cfg.prompt_lengths), cfg.repeats,
        concurrencies=tuple(cfg.concurrencies),
    )
    print(f"{profile.device}: measured in {time.perf_counter() - started:.0f} s -> {profile.save(out_dir / f'{name}.json')}")
    one_step = {c: round(t * 1e3, 1) for c, t in profile.verify[1].items()}
    print(f"1-token target step (ms by context): {one_step}")
    print("loop overhead ms per cycle by block: " + ", ".join(f"b{b}: {t * 1e3:.1f}" for b, t in profile.overhead.items()))
    print("verify ms by block (shortest context): " + ", ".join(f"b{b}: {min(by_c.items())[1] * 1e3:.1f}" for b, by_c in profile.verify.items()))
    print("draft ms by block: " + ", ".join(f"b{b}: {t * 1e3:.1f}" for b, t in profile.draft.items()))
    for c, by_n in profile.batched.items():
        print(f"batched forward, {c} requests, ms by tokens each: " + ", ".join(f"n{n}: {t * 1e3:.1f}" for n, t in by_n.items()))
    if cfg.flat:
        flat = flat_profile(profile)
        print(f"model profile {flat.name!r} -> {flat.save(out_dir / f'{flat.name}.json')}")

if __name__ == "__main__":
    main()
