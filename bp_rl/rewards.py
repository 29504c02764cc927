"""Rewards and the measured reward table.

A `RewardTable` is one SQLite file holding, for one (target, drafter, decoding settings)
combination:

- `meta`: JSON metadata; the identity keys (`IDENTITY_KEYS`) must match for rows to share a file,
  and `machines` lists the machines (`MACHINE_KEYS`: device and library versions) it was measured on;
- `prompts`: id, category, split and token count of every measured prompt;
- `observations`: per prompt and base feature set, the observation vector (float16);
- `runs`: per (prompt, block size, repeat) the new tokens, acceptance lengths (a byte per cycle), prefill and
  decode seconds, the machine's load average when it was taken, and which of `machines` took it.
  Block size `AUTOREGRESSIVE` (0) is the no-drafter baseline measured in the same session.

A collection longer than one machine's lease may go on elsewhere, but only when asked
(`allow_new_machine`): every row records its machine, and the collector measures a prompt's
baseline and block sizes of one repeat back to back, so each per-prompt comparison is made on
one machine (save the one group in flight when a machine stops).

Every row is its own transaction, so killing a collection loses at most the row in flight,
and rows are keyed so a re-run never duplicates one. `view()` turns the rows into the
arrays environments and agents use (medians per prompt and block size, best blocks, grid).
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from bp_rl.decoding import request_tokens_per_second
from bp_rl.features import parse_feature_set
from bp_rl.measurement import AUTOREGRESSIVE, Measurement
from bp_rl.prompts import SPLITS, Prompt

SCHEMA_VERSION = 2  # 2 added runs.machine and meta.machines
REWARDS = ("tokens_per_second", "speedup", "log_speedup", "acceptance_length")
DEFAULT_REWARD = "tokens_per_second"
# Rows measured under different values of these never share a table.
IDENTITY_KEYS = (
    "schema_version",
    "suite",
    "target",
    "dtype",
    "drafter",
    "drafter_hash",
    "settings",
    "block_sizes",
    "feature_sets",
)
# What a machine is: timings from different machines share a table only when asked.
MACHINE_KEYS = ("device", "torch", "transformers")
RUN_COLUMNS = "prompt_id, block_size, repeat, new_tokens, acceptance, prefill_seconds, decode_seconds, load, machine"
_INSERT_RUN = f"INSERT OR IGNORE INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * len(RUN_COLUMNS.split(',')))})"
# Columns of one replayable repeat in `TableView.samples`.
SAMPLE_COLUMNS = ("tokens_per_second", "mean_acceptance", "new_tokens", "cycles", "decode_seconds")
TPS, ACCEPTANCE = 0, 1
# Below this share of the grid reward, best - grid is within timing noise: no gap to close.
MIN_GAP = 0.005
SHIPPED_TABLES_DIR = Path(__file__).parent / "data" / "tables"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id TEXT PRIMARY KEY, category TEXT NOT NULL, split TEXT NOT NULL, prompt_tokens INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS observations (
    prompt_id TEXT NOT NULL, feature_set TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (prompt_id, feature_set));
CREATE TABLE IF NOT EXISTS runs (
    prompt_id TEXT NOT NULL, block_size INTEGER NOT NULL, repeat INTEGER NOT NULL,
    new_tokens INTEGER NOT NULL, acceptance BLOB NOT NULL,
    prefill_seconds REAL NOT NULL, decode_seconds REAL NOT NULL, load REAL, machine INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (prompt_id, block_size, repeat));
"""


def gap_closed(reward: float, grid: float, best: float) -> float | None:
    """(reward - grid) / (best - grid); None when best beats grid by under `MIN_GAP` (timing noise)."""
    gap = best - grid
    return (reward - grid) / gap if gap > MIN_GAP * abs(grid) else None


def check_reward(name: str) -> str:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid: {list(REWARDS)}")
    return name


def reward_value(name: str, tokens_per_second, ar_tokens_per_second, mean_acceptance):
    """The reward `name` of one decode (works elementwise on numpy arrays)."""
    if name == "tokens_per_second":
        return tokens_per_second
    if name == "speedup":
        return tokens_per_second / ar_tokens_per_second
    if name == "log_speedup":
        return np.log(tokens_per_second / ar_tokens_per_second)
    if name == "acceptance_length":
        return mean_acceptance
    raise ValueError(f"unknown reward {name!r}; valid: {list(REWARDS)}")


def shipped_table(name: str) -> Path:
    """A shipped table by name (`bp_rl/data/tables/<name>.sqlite`) or a path to a table file."""
    path = Path(name)
    if path.suffix == ".sqlite" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"reward table {str(path)!r} does not exist")
        return path
    path = SHIPPED_TABLES_DIR / f"{name}.sqlite"
    if not path.is_file():
        shipped = sorted(p.stem for p in SHIPPED_TABLES_DIR.glob("*.sqlite"))
        raise ValueError(f"unknown reward table {name!r}; shipped tables: {shipped}, or a path to a .sqlite file")
    return path


class RewardTable:
    """One measured reward table file. Open with `create_or_resume` (to collect) or `load` (to read)."""

    def __init__(self, path: Path, connection: sqlite3.Connection, meta: dict, resplit: dict[str, str] | None = None):
        self.path = path
        self.db = connection
        self.meta = meta
        self.resplit = resplit  # prompt id -> split, overriding the measured one (cross-validation)
        self.machine: int | None = None  # index into `machines` of the rows `add` writes (set by create_or_resume)

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create_or_resume(cls, path: str | Path, meta: dict, allow_new_machine: bool = False) -> "RewardTable":
        """Open `path` for appending rows measured under `meta` (on the machine it describes).

        Refuses a table measured under other settings, and one measured on other machines unless
        `allow_new_machine`.
        """
        path = Path(path)
        if path.exists():
            table = cls.load(path)
            mismatch = _mismatch(table.meta, meta)
            if mismatch:
                raise ValueError(f"{path} was measured under other settings, refusing to mix rows: {mismatch}")
            table.machine = table._machine_index(_machine(meta), allow_new_machine)
            return table
        path.parent.mkdir(parents=True, exist_ok=True)
        # Build the empty table beside it and rename, so `path` is either absent or a valid table.
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        with sqlite3.connect(tmp) as db:
            db.executescript(_SCHEMA)
            meta = {**meta, "schema_version": SCHEMA_VERSION, "machines": [_machine(meta)]}
            db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        db.close()
        os.replace(tmp, path)
        table = cls.load(path)
        table.machine = 0
        return table

    @classmethod
    def load(cls, path: str | Path, expect: dict | None = None) -> "RewardTable":
        """Open and validate a table; `expect` lists metadata values it must have (e.g. the target)."""
        path = shipped_table(str(path))
        try:
            db = sqlite3.connect(path)
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
            db.execute("SELECT prompt_id, block_size, repeat, new_tokens, acceptance, decode_seconds FROM runs LIMIT 1")
        except (sqlite3.DatabaseError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a readable reward table (truncated or corrupted?): {err}") from None
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path} has schema version {meta.get('schema_version')!r}; this code reads {SCHEMA_VERSION}")
        return cls(path, db, meta).check(expect or {})

    def check(self, expect: dict) -> "RewardTable":
        """This table, if its metadata has the values in `expect` (e.g. the target); else a clear error."""
        mismatch = _mismatch(self.meta, expect, keys=tuple(expect))
        if mismatch:
            raise ValueError(f"{self.path} does not match what was asked for: {mismatch}")
        return self

    def close(self) -> None:
        self.db.close()

    @property
    def machines(self) -> list[dict]:
        """The machines the rows were measured on; a row's `machine` column indexes this list."""
        return self.meta["machines"]

    def rows_per_machine(self) -> list[int]:
        counts = dict(self.db.execute("SELECT machine, COUNT(*) FROM runs GROUP BY machine"))
        return [counts.get(i, 0) for i in range(len(self.machines))]

    def _machine_index(self, machine: dict, allow_new: bool) -> int:
        """Where `machine` is in `machines`, adding it if allowed."""
        machines = self.machines
        if machine not in machines:
            if not allow_new:
                last = machines[-1]
                differences = "; ".join(
                    f"{k}: table has {last[k]!r}, this machine {machine[k]!r}" for k in MACHINE_KEYS if last[k] != machine[k]
                )
                raise ValueError(
                    f"{self.path} was measured on another machine ({differences}); pass allow_new_machine=true to go on "
                    "measuring it here (each row records its machine), or collect into a new table (name=...)"
                )
            self.meta["machines"] = [*machines, machine]
            with self.db:
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'machines'", (json.dumps(self.meta["machines"]),))
        return self.meta["machines"].index(machine)

    def cross_validation_fold(self, fold: int, folds: int, seed: int = 0) -> "RewardTable":
        """This table with its prompts re-split for fold `fold` of `folds`-fold cross-validation.

        The fold is the test split, the next one val, the rest train, so every prompt is tested
        exactly once over the folds. Folds are balanced across categories and drawn with `seed`.
        This is how a table measured on one split only (the T=1 test table) trains and evaluates
        agents on held-out prompts. Reading only: the file is unchanged.
        """
        if not (isinstance(folds, int) and folds >= 3 and isinstance(fold, int) and 0 <= fold < folds):
            raise ValueError(f"fold {fold!r} of {folds!r}: need at least 3 folds (test, val, train) and 0 <= fold < folds")
        prompts = self.db.execute("SELECT prompt_id, category FROM prompts ORDER BY prompt_id").fetchall()
        shuffled = [prompts[i] for i in np.random.default_rng(seed).permutation(len(prompts))]
        ordered = sorted(shuffled, key=lambda p: p[1])  # stable: shuffled within each category, dealt in turn
        roles = {fold: "test", (fold + 1) % folds: "val"}
        resplit = {pid: roles.get(rank % folds, "train") for rank, (pid, _) in enumerate(ordered)}
        return RewardTable(self.path, self.db, self.meta, resplit)

    # ---- writing -------------------------------------------------------------------------
    def done_keys(self) -> set[tuple[str, int, int]]:
        return set(self.db.execute("SELECT prompt_id, block_size, repeat FROM runs"))

    def add(self, prompt: Prompt, measurement: Measurement, repeat: int, load: float | None = None) -> None:
        """Append one measured decode (and the prompt's observations, the first time) in one transaction."""
        if self.machine is None:
            raise RuntimeError(f"{self.path} was opened for reading; open it with RewardTable.create_or_resume to add rows")
        stats = measurement.stats
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO prompts VALUES (?, ?, ?, ?)",
                (prompt.id, prompt.category, prompt.split, stats.prompt_tokens),
            )
            self.db.executemany(
                "INSERT OR IGNORE INTO observations VALUES (?, ?, ?)",
                [(prompt.id, name, vector.astype(np.float16).tobytes()) for name, vector in measurement.observations.items()],
            )
            self.db.execute(
                _INSERT_RUN,
                (
                    prompt.id,
                    measurement.block_size,
                    repeat,
                    stats.new_tokens,
                    bytes(stats.acceptance_lengths),  # one byte per cycle
                    stats.prefill_seconds,
                    stats.decode_seconds,
                    load,
                    self.machine,
                ),
            )

    def merge_from(self, other: "RewardTable") -> int:
        """Copy every row of `other` (same identity, any machine) that this table lacks; returns the rows added."""
        mismatch = _mismatch(self.meta, other.meta)
        if mismatch:
            raise ValueError(f"cannot merge {other.path} into {self.path}: {mismatch}")
        machine_ids = [self._machine_index(machine, allow_new=True) for machine in other.machines]
        runs = other.db.execute(f"SELECT {RUN_COLUMNS} FROM runs").fetchall()
        before = self.db.total_changes
        with self.db:
            for name, columns in (("prompts", 4), ("observations", 3)):
                rows = other.db.execute(f"SELECT * FROM {name}").fetchall()
                self.db.executemany(f"INSERT OR IGNORE INTO {name} VALUES ({', '.join('?' * columns)})", rows)
            self.db.executemany(
                _INSERT_RUN,
                [(*row[:-1], machine_ids[row[-1]]) for row in runs],
            )
        return self.db.total_changes - before

    # ---- reading -------------------------------------------------------------------------
    @property
    def block_sizes(self) -> tuple[int, ...]:
        return tuple(self.meta["block_sizes"])

    @property
    def feature_sets(self) -> dict[str, int]:
        return dict(self.meta["feature_sets"])

    def feature_dim(self, feature_set: str) -> int:
        return sum(self.feature_sets[part] for part in self._feature_parts(feature_set))

    def _feature_parts(self, feature_set: str) -> list[str]:
        parts = [f"{name}@{layer}" if layer is not None else name for name, layer in parse_feature_set(feature_set)]
        for part in parts:
            if part not in self.feature_sets:
                raise ValueError(
                    f"feature set {part!r} is not in {self.path.name}; it has {sorted(self.feature_sets)} "
                    "(join with '+'; other sets need a table collected with them, or env=live)"
                )
        return parts

    def view(self, feature_set: str, split: str | None = None) -> "TableView":
        """The complete prompts (observations, baseline and every block size measured) of one split."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
        parts = self._feature_parts(feature_set)
        prompts = self.db.execute("SELECT prompt_id, category, split FROM prompts ORDER BY prompt_id").fetchall()
        if self.resplit is not None:
            prompts = [(pid, category, self.resplit[pid]) for pid, category, _ in prompts]
        prompts = [p for p in prompts if split is None or p[2] == split]
        vectors: dict[str, dict[str, np.ndarray]] = {}
        for pid, name, data in self.db.execute("SELECT prompt_id, feature_set, data FROM observations"):
            vectors.setdefault(pid, {})[name] = np.frombuffer(data, dtype=np.float16).astype(np.float32)
        runs: dict[tuple[str, int], list[tuple[float, ...]]] = {}
        for pid, block, new_tokens, acceptance, prefill_seconds, seconds in self.db.execute(
            "SELECT prompt_id, block_size, new_tokens, acceptance, prefill_seconds, decode_seconds FROM runs ORDER BY repeat"
        ):
            cycles = np.frombuffer(acceptance, dtype=np.uint8)
            mean_acceptance = cycles.mean() if len(cycles) else 0.0
            tokens_per_second = request_tokens_per_second(new_tokens, prefill_seconds, seconds)
            runs.setdefault((pid, block), []).append((tokens_per_second, mean_acceptance, new_tokens, len(cycles), seconds))

        columns = (AUTOREGRESSIVE, *self.block_sizes)
        complete = [
            p for p in prompts if all((p[0], b) in runs for b in columns) and all(x in vectors.get(p[0], {}) for x in parts)
        ]
        if not complete:
            where = f"split {split!r}" if split else "any split"
            raise ValueError(f"{self.path} has no completely measured prompt in {where}")
        return TableView(
            prompt_ids=[p[0] for p in complete],
            categories=np.array([p[1] for p in complete]),
            splits=np.array([p[2] for p in complete]),
            block_sizes=self.block_sizes,
            feature_set=feature_set,
            observations=np.stack([np.concatenate([vectors[p[0]][x] for x in parts]) for p in complete]),
            samples=[[np.array(runs[(p[0], b)], dtype=np.float64) for b in self.block_sizes] for p in complete],
            ar_samples=[np.array(runs[(p[0], AUTOREGRESSIVE)], dtype=np.float64)[:, TPS] for p in complete],
        )

    def summary(self) -> dict:
        rows = self.db.execute("SELECT COUNT(*), COUNT(DISTINCT prompt_id) FROM runs").fetchone()
        return {"path": str(self.path), "runs": rows[0], "prompts": rows[1], **self.meta}


@dataclass
class TableView:
    """A table's complete prompts as arrays: prompt i, block index k (into `block_sizes`)."""

    prompt_ids: list[str]
    categories: np.ndarray  # (N,) str
    splits: np.ndarray  # (N,) str
    block_sizes: tuple[int, ...]
    feature_set: str
    observations: np.ndarray  # (N, d) float32
    samples: list[list[np.ndarray]]  # [i][k] -> (repeats, len(SAMPLE_COLUMNS)), one row per timed repeat
    ar_samples: list[np.ndarray]  # [i] -> (repeats,) autoregressive tokens/s

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def ar_tokens_per_second(self) -> np.ndarray:
        return np.array([np.median(s) for s in self.ar_samples])

    def median(self, column: int = 0) -> np.ndarray:
        """(N, K) medians over repeats of one of `SAMPLE_COLUMNS` (default tokens/s)."""
        return np.array([[np.median(s[:, column]) for s in row] for row in self.samples])

    def rewards(self, reward: str = DEFAULT_REWARD) -> np.ndarray:
        """(N, K) reward of each prompt and block size, from the median repeat."""
        ar = self.ar_tokens_per_second[:, None]
        return reward_value(check_reward(reward), self.median(TPS), ar, self.median(ACCEPTANCE))

    def repeat_rewards(self, reward: str = DEFAULT_REWARD) -> list[list[np.ndarray]]:
        """[i][k] -> the reward of every measured repeat (what the replay environment samples from)."""
        ar = self.ar_tokens_per_second
        return [
            [reward_value(check_reward(reward), s[:, TPS], ar[i], s[:, ACCEPTANCE]) for s in row] for i, row in enumerate(self.samples)
        ]

    def best_blocks(self, reward: str = DEFAULT_REWARD) -> np.ndarray:
        """(N,) index of each prompt's best block size: the per-prompt oracle."""
        return self.rewards(reward).argmax(axis=1)

    def grid_block(self, reward: str = DEFAULT_REWARD) -> int:
        """Index of the best fixed block size over these prompts (the grid-searched baseline)."""
        return int(self.rewards(reward).mean(axis=0).argmax())

    def noise_ceiling(self, grid: int, reward: str = DEFAULT_REWARD) -> tuple[float | None, int] | None:
        """How much of the grid-to-best gap survives measurement noise: (gap closed, prompts used).

        Each prompt's best block is picked from one timed repeat and scored on the mean of its other
        repeats, as are grid and the per-prompt best, averaged over which repeat is held out. A policy
        that learns from one-repeat labels aims at this, not at the noise-inflated best. Uses the
        prompts with at least two repeats of every block size; None when there are none.
        """
        chosen, fixed, best, prompts = [], [], [], 0
        for row in self.repeat_rewards(reward):
            n = min(len(values) for values in row)  # repeats measured in the same pass line up by index
            if n < 2:
                continue
            prompts += 1
            values = np.stack([v[:n] for v in row])  # (K, n)
            for j in range(n):
                held_out = np.delete(values, j, axis=1).mean(axis=1)
                chosen.append(held_out[values[:, j].argmax()])
                fixed.append(held_out[grid])
                best.append(held_out.max())
        if not prompts:
            return None
        return gap_closed(np.mean(chosen), np.mean(fixed), np.mean(best)), prompts

    def subset(self, mask: np.ndarray) -> "TableView":
        index = np.flatnonzero(mask)
        return replace(
            self,
            prompt_ids=[self.prompt_ids[i] for i in index],
            categories=self.categories[index],
            splits=self.splits[index],
            observations=self.observations[index],
            samples=[self.samples[i] for i in index],
            ar_samples=[self.ar_samples[i] for i in index],
        )

    def with_blocks(self, block_sizes: Sequence[int]) -> "TableView":
        """The same prompts with only these block sizes: what a smaller action set leaves to win."""
        unknown = [b for b in block_sizes if b not in self.block_sizes]
        if unknown or not block_sizes or len(set(block_sizes)) < len(block_sizes):
            raise ValueError(f"block sizes {list(block_sizes)}: choose distinct sizes among this table's {list(self.block_sizes)}")
        index = [self.block_sizes.index(b) for b in block_sizes]
        return replace(self, block_sizes=tuple(block_sizes), samples=[[row[k] for k in index] for row in self.samples])


def _machine(meta: dict) -> dict:
    return {key: meta[key] for key in MACHINE_KEYS}


def _mismatch(have: dict, want: dict, keys: Iterable[str] = IDENTITY_KEYS) -> str:
    """'key: have X, want Y' for every key whose values differ ('' when all agree)."""
    diffs = [f"{k}: table has {have.get(k)!r}, asked for {want.get(k)!r}" for k in keys if have.get(k) != want.get(k)]
    return "; ".join(diffs)
