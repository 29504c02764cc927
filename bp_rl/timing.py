"""The one timer used everywhere: device-synchronised wall-clock time.

GPU work is asynchronous, so the clock is read only after the device has finished
everything queued so far; otherwise a timing measures kernel launches, not work.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm


def device_sync(device: torch.device | str) -> None:
    """Wait until every queued operation on `device` has finished."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device | str) -> str:
    """A human-readable name for the hardware behind `device`, recorded with every timing."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    cpu = _cpu_model() or platform.processor() or platform.machine()
    return f"CPU {cpu} ({torch.get_num_threads()} threads)"


def _cpu_model() -> str | None:
    """The CPU's model name with its family and model numbers: cloud CPUs often report only
    'AMD EPYC', which covers generations whose pass costs differ by half."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if not line.strip():  # the first processor's block is enough
                    break
    except OSError:
        return None
    name = fields.get("model name")
    if name and "cpu family" in fields and "model" in fields:
        return f"{name}, family {fields['cpu family']} model {fields['model']}"
    return name


@dataclass
class Stopwatch:
    """Context manager: `with Stopwatch(device) as sw: ...; sw.seconds`."""

    device: torch.device | str = "cpu"
    seconds: float = 0.0
    _start: float = field(default=0.0, repr=False)

    def __enter__(self) -> "Stopwatch":
        device_sync(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        device_sync(self.device)
        self.seconds = time.perf_counter() - self._start


@dataclass
class Timing:
    """Median-of-N timing of one callable, with every sample kept."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def measure(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 1, repeats: int = 5) -> Timing:
    """Run `fn` `warmup` times untimed, then `repeats` times timed; return all timed samples."""
    return measure_interleaved({None: fn}, device, warmup, repeats)[None]


def measure_interleaved(fns: dict, device: torch.device | str = "cpu", warmup: int = 1, repeats: int = 5, seed: int = 0,
                        progress: str | None = None) -> dict:
    """Time several callables in rounds (`warmup` untimed calls each first): each round times every
    callable once, in a fresh random order, so a slow spell of the machine (CPU speed drifts by a fifth within minutes)
    slows every callable alike instead of whichever ran then. Returns a `Timing` per key.
    `progress`: a progress bar's label (one step per call), for measurements that take minutes."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    bar = tqdm(total=len(fns) * (warmup + repeats), desc=progress, unit="pass", disable=progress is None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
            bar.update()
    rng = random.Random(seed)
    keys = list(fns)
    samples: dict = {key: [] for key in keys}
    for _ in range(repeats):
        rng.shuffle(keys)
        for key in keys:
            with Stopwatch(device) as sw:
                fns[key]()
            samples[key].append(sw.seconds)
            bar.update()
    bar.close()
    return {key: Timing(times) for key, times in samples.items()}


def machine_load_note() -> str:
    """Why CPU timings may be skewed: other heavy processes share the cores."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"1-min load average {load:.2f} on {os.cpu_count()} cores"
