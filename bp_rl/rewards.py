"""The measured reward table: timed decodes of every (prompt, block size, repeat).

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
import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np

from bp_rl import table_file
from bp_rl.measurement import Measurement
from bp_rl.outcomes import AUTOREGRESSIVE, TPS, TableView, request_tokens_per_second
from bp_rl.prompts import SPLITS, Prompt

SCHEMA_VERSION = 2  # 2 added runs.machine and meta.machines
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
SHIPPED_TABLES_DIR = Path(__file__).parent / "data" / "tables"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    prompt_id TEXT NOT NULL, block_size INTEGER NOT NULL, repeat INTEGER NOT NULL,
    new_tokens INTEGER NOT NULL, acceptance BLOB NOT NULL,
    prefill_seconds REAL NOT NULL, decode_seconds REAL NOT NULL, load REAL, machine INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (prompt_id, block_size, repeat));
"""


def shipped_table(name: str) -> Path:
    """A shipped table by name (`bp_rl/data/tables/<name>.sqlite`) or a path to a table file."""
    return table_file.locate(name, SHIPPED_TABLES_DIR, "reward table")


class RewardTable(table_file.TableFile):
    """One measured reward table file. Open with `create_or_resume` (to collect) or `load` (to read)."""

    def __init__(self, path: Path, connection: sqlite3.Connection, meta: dict, resplit: dict[str, str] | None = None):
        super().__init__(path, connection, meta)
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
        table_file.create(path, _SCHEMA, {**meta, "schema_version": SCHEMA_VERSION, "machines": [_machine(meta)]})
        table = cls.load(path)
        table.machine = 0
        return table

    @classmethod
    def load(cls, path: str | Path, expect: dict | None = None) -> "RewardTable":
        """Open and validate a table; `expect` lists metadata values it must have (e.g. the target)."""
        path = shipped_table(str(path))
        probe = "SELECT prompt_id, block_size, repeat, new_tokens, acceptance, decode_seconds FROM runs LIMIT 1"
        db, meta = table_file.open_checked(path, "reward table", SCHEMA_VERSION, probe)
        return cls(path, db, meta).check(expect or {})

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
            table_file.add_prompt(self.db, prompt, stats.prompt_tokens, measurement.observations)
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
            table_file.copy_prompts(self.db, other.db)
            self.db.executemany(
                _INSERT_RUN,
                [(*row[:-1], machine_ids[row[-1]]) for row in runs],
            )
        return self.db.total_changes - before

    # ---- reading -------------------------------------------------------------------------
    def splits(self) -> list[str]:
        """The splits this table's prompts come from (after any cross-validation re-split)."""
        if self.resplit is not None:
            return sorted(set(self.resplit.values()))
        return [split for (split,) in self.db.execute("SELECT DISTINCT split FROM prompts ORDER BY split")]

    def feature_dim(self, feature_set: str) -> int:
        return sum(self.feature_sets[part] for part in table_file.feature_parts(self.feature_sets, feature_set, self.path.name))

    def view(self, feature_set: str, split: str | None = None) -> "TableView":
        """The complete prompts (observations, baseline and every block size measured) of one split."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
        parts = table_file.feature_parts(self.feature_sets, feature_set, self.path.name)
        prompts = self.db.execute("SELECT prompt_id, category, split FROM prompts ORDER BY prompt_id").fetchall()
        if self.resplit is not None:
            prompts = [(pid, category, self.resplit[pid]) for pid, category, _ in prompts]
        prompts = [p for p in prompts if split is None or p[2] == split]
        vectors = table_file.read_observations(self.db)
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
            measured = self.splits()
            hint = "" if split is None or split in measured else (
                f" (it was measured on {measured} only: re-split its prompts with cross_validation_fold, "
                "which is what run.py does for such a table, env.folds=k)"
            )
            raise ValueError(f"{self.path} has no completely measured prompt in {where}{hint}")
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


def _machine(meta: dict) -> dict:
    return {key: meta[key] for key in MACHINE_KEYS}


def _mismatch(have: dict, want: dict, keys: Iterable[str] = IDENTITY_KEYS) -> str:
    return table_file.mismatch(have, want, keys)
