"""Aggregate a sweep of `run.py` into one markdown report with plots.

    python experiments/run.py -m agent=ppo,linucb,oracle,grid seed=0,1,2
    python experiments/report.py runs/sweep/<date>          # writes report.md + plots there

Every run's results.json counts once; agents are compared by mean ± standard deviation over
seeds, overall and per category. The references (fixed, grid, per-prompt best) come from the
runs' own evaluations of them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from reporting import COLUMNS, HEADERS, fmt, markdown_table, plot_per_category

REFERENCES = ("fixed", "grid", "best")
_NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:e-?\d+)?)")


def load_runs(sweep_dir: Path) -> list[dict]:
    paths = sorted(sweep_dir.rglob("results.json"))
    if not paths:
        raise SystemExit(f"no results.json under {sweep_dir}: is it a run.py sweep directory?")
    return [json.loads(p.read_text()) for p in paths]


def _stats(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    return (float(np.mean(values)), float(np.std(values))) if values else (None, None)


def variant_names(runs: list[dict]) -> list[str]:
    """Each run's agent plus the overrides that vary across the sweep, the seed and agent aside.

    `-m agent=lints agent.pca_dim=16,64 seed=0,1,2` gives 'lints agent.pca_dim=16' and
    'lints agent.pca_dim=64', each over three seeds; a plain `-m agent=ppo,lints` gives 'ppo', 'lints'.
    """
    given = [dict(o.lstrip("+~").partition("=")[::2] for o in run.get("overrides", [])) for run in runs]
    varying = sorted(
        key for key in set().union(*given)
        if key not in ("agent", "agent.name", "seed") and not key.startswith("hydra") and len({g.get(key) for g in given}) > 1
    )
    return [" ".join([run["agent"], *(f"{k}={g[k]}" for k in varying if k in g)]) for run, g in zip(runs, given)]


def natural_key(name: str) -> list:
    return [(0, float(part), "") if _NUMBER.fullmatch(part) else (1, 0.0, part) for part in _NUMBER.split(name) if part]


def aggregate(runs: list[dict]) -> tuple[dict, dict, dict]:
    """(mean summaries, spread summaries, seeds) per agent variant (`variant_names`), references included."""
    by_agent: dict[str, list[dict]] = defaultdict(list)
    for run, variant in zip(runs, variant_names(runs)):
        by_agent[variant].append({**run["metrics"], "train_seconds": run["train_seconds"], "seed": run["seed"]})
        for name, summary in run["references"].items():
            if name in REFERENCES and name not in {r["agent"] for r in runs}:
                by_agent[name].append({**summary, "train_seconds": None, "seed": run["seed"]})
    means, spreads, seeds = {}, {}, {}
    for name, summaries in by_agent.items():
        if name in REFERENCES:  # the same evaluation in every run: keep one per seed
            summaries = list({s["seed"]: s for s in summaries}.values())
        seeds[name] = sorted({s["seed"] for s in summaries})
        keys = [*COLUMNS, "train_seconds", "prompts"]
        mean = {k: _stats([s[k] for s in summaries])[0] for k in keys}
        spread = {k: _stats([s[k] for s in summaries])[1] for k in keys}
        categories = summaries[0]["per_category"]
        mean["per_category"] = {c: {k: _stats([s["per_category"][c][k] for s in summaries])[0] for k in COLUMNS if k != "decision_ms"} for c in categories}
        spread["per_category"] = {c: {k: _stats([s["per_category"][c][k] for s in summaries])[1] for k in COLUMNS if k != "decision_ms"} for c in categories}
        means[name], spreads[name] = mean, spread
    # agents (numbers in their variant names in numeric order: budget=1000 before 4000), then references
    order = sorted((n for n in means if n not in REFERENCES), key=natural_key) + [n for n in REFERENCES if n in means]
    return {n: means[n] for n in order}, spreads, seeds


def evaluated_on(run: dict) -> str:
    eval_table = run.get("eval_table", run["table"])
    return "" if eval_table == run["table"] else f" (agents trained on it, evaluated on `{Path(eval_table).name}`)"


def render(runs: list[dict], means: dict, spreads: dict, seeds: dict) -> str:
    first = runs[0]
    lines = [
        "# Sweep report",
        "",
        f"{len(runs)} runs; evaluation on the {first['split']} split ({first['env']}), reward {first['reward']}, "
        f"table `{Path(first['table']).name}`{evaluated_on(first)}. Mean ± standard deviation over seeds.",
        "",
    ]
    rows = [
        [name, ",".join(map(str, seeds[name]))] + [fmt(m[k], spreads[name][k]) for k in [*COLUMNS, "train_seconds"]]
        for name, m in means.items()
    ]
    lines.append(markdown_table(rows, ["agent", "seeds", *HEADERS, "train s"]))
    lines += ["", "## Per category", ""]
    rows = []
    for category in sorted(next(iter(means.values()))["per_category"]):
        for name, m in means.items():
            c, s = m["per_category"][category], spreads[name]["per_category"][category]
            rows.append([category, name, fmt(c["tokens_per_second"], s["tokens_per_second"]), fmt(c["gap_closed"], s["gap_closed"]), fmt(c["regret"], s["regret"])])
    lines.append(markdown_table(rows, ["category", "agent", "tokens/s", "gap closed", "regret"]))
    lines += ["", "![tokens/s per agent and category](tokens_per_second.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a run.py multirun directory (or any folder of runs)")
    parser.add_argument("--out", type=Path, default=None, help="report file (default: <sweep_dir>/report.md)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"{args.sweep_dir} is not a directory")
    runs = load_runs(args.sweep_dir)
    means, spreads, seeds = aggregate(runs)
    plot_per_category(means, args.sweep_dir / "tokens_per_second.png", spreads=spreads)
    report = render(runs, means, spreads, seeds)
    out = args.out or args.sweep_dir / "report.md"
    out.write_text(report)
    print(report)
    print(f"\nwritten: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
