"""Tables and plots shared by `run.py` (one run) and `report.py` (a sweep)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLUMNS = ("tokens_per_second", "speedup", "mean_acceptance", "gap_closed", "regret", "decision_ms")
HEADERS = ("tokens/s", "speedup", "acceptance", "gap closed", "regret", "decision ms")
# Learning-curve keys worth plotting, by agent family (the first present ones are drawn).
CURVE_KEYS = ("val/reward", "train/regret", "train/reward", "rollout/ep_rew_mean", "train/loss", "train/mean_reward")


def fmt(value, spread=None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    text = f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"
    return text if spread is None else f"{text} ± {spread:.3f}"


def markdown_table(rows: list[list[str]], headers: list[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_table(summaries: dict[str, dict]) -> str:
    """One row per agent (overall), then one per (category, agent) for tokens/s and gap closed."""
    overall = [[name, fmt(s["prompts"])] + [fmt(s.get(c)) for c in COLUMNS] for name, s in summaries.items()]
    text = markdown_table(overall, ["agent", "prompts", *HEADERS])
    categories = sorted(next(iter(summaries.values()))["per_category"])
    rows = []
    for category in categories:
        for name, s in summaries.items():
            c = s["per_category"][category]
            rows.append([category, name, fmt(c["tokens_per_second"]), fmt(c["speedup"]), fmt(c["gap_closed"]), fmt(c["regret"])])
    return text + "\n\n" + markdown_table(rows, ["category", "agent", "tokens/s", "speedup", "gap closed", "regret"])


def plot_per_category(summaries: dict[str, dict], path: Path, key: str = "tokens_per_second", spreads=None) -> Path:
    """Grouped bars: `key` per category (and overall) for every agent."""
    categories = sorted(next(iter(summaries.values()))["per_category"])
    groups = [*categories, "all"]
    width = 0.8 / len(summaries)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    for j, (name, s) in enumerate(summaries.items()):
        values = [s["per_category"][c][key] for c in categories] + [s[key]]
        errors = None if spreads is None else [spreads[name]["per_category"][c][key] for c in categories] + [spreads[name][key]]
        ax.bar(np.arange(len(groups)) + j * width, values, width, yerr=errors, label=name)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
    ax.set_ylabel(key.replace("_", " "))
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_block_histogram(summaries: dict[str, dict], block_sizes: tuple[int, ...], path: Path) -> Path:
    width = 0.8 / len(summaries)
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, (name, s) in enumerate(summaries.items()):
        counts = [s["block_histogram"].get(b, s["block_histogram"].get(str(b), 0)) for b in block_sizes]
        ax.bar(np.arange(len(block_sizes)) + j * width, counts, width, label=name)
    ax.set_xticks(np.arange(len(block_sizes)) + 0.4 - width / 2, [str(b) for b in block_sizes])
    ax.set_xlabel("chosen block size")
    ax.set_ylabel("prompts")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_learning_curve(history: list[dict], path: Path, title: str = "") -> Path | None:
    keys = [k for k in CURVE_KEYS if any(k in row for row in history)][:2]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(row["step"], row[key]) for row in history if key in row]
        ax.plot(*zip(*points))
        ax.set_xlabel("episodes" if not key.startswith("train/loss") else "epochs")
        ax.set_ylabel(key)
    fig.suptitle(title)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
