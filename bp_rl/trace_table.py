"""The trace table: every prompt's exact T=0 acceptance trace, and the rewards it gives under a profile.

One SQLite file (`bp_rl.table_file`) for one (target, drafter, decoding settings) combination:
`meta`, `prompts` and `observations` as in the reward table, and `traces`: per prompt the greedy
continuation, `accepted[block][anchor]` and the drafter's confidence and entropy per drafted slot
(entropy is NULL in rows traced before it was kept; such a file gains the column on resume). Above T=0
(`settings.temperature > 0`) the table holds `samples` instead: per prompt, the per-cycle committed
counts of one seeded real decode per (block size, seed) (`SampledTrace`: a sample, and the seeds
are part of the table's identity). A trace holds no timing, so one table serves every machine: `view(feature_set, split, profile)` turns it
into the same `TableView` a timed table gives, with seconds simulated from a `DeviceProfile`
(labelled so: `simulated_under` names the profile).

Each prompt is one transaction, so a killed collection loses at most the prompt in flight, and a
re-run skips the prompts already traced.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np

from bp_rl import table_file
from bp_rl.outcomes import TableView
from bp_rl.profiles import DeviceProfile, simulate
from bp_rl.prompts import SPLITS, Prompt
from bp_rl.traces import AcceptanceTrace, SampledTrace

SCHEMA_VERSION = 1
KIND = "acceptance-traces"  # what `meta.kind` says, so a reward table is never read as one
# Traces made under different values of these never share a file.
IDENTITY_KEYS = ("schema_version", "kind", "suite", "target", "dtype", "drafter", "drafter_hash", "settings", "block_sizes", "feature_sets", "seeds")
SHIPPED_TRACES_DIR = Path(__file__).parent / "data" / "traces"
TRACE_COLUMNS = "prompt_id, prompt_tokens, tokens, accepted, confidence, seconds, entropy"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    prompt_id TEXT PRIMARY KEY, prompt_tokens INTEGER NOT NULL, tokens BLOB NOT NULL,
    accepted BLOB NOT NULL, confidence BLOB NOT NULL, seconds REAL NOT NULL, entropy BLOB);
CREATE TABLE IF NOT EXISTS samples (
    prompt_id TEXT PRIMARY KEY, prompt_tokens INTEGER NOT NULL, cycles TEXT NOT NULL, seconds REAL NOT NULL);
"""


def shipped_traces(name: str) -> Path:
    """A shipped trace table by name (`bp_rl/data/traces/<name>.sqlite`) or a path to one."""
    return table_file.locate(name, SHIPPED_TRACES_DIR, "trace table")


class TraceTable(table_file.TableFile):
    """One trace table file. Open with `create_or_resume` (to collect) or `load` (to read)."""

    @classmethod
    def create_or_resume(cls, path: str | Path, meta: dict) -> "TraceTable":
        """Open `path` for adding traces made under `meta`; refuses a file made under other settings."""
        path = Path(path)
        meta = {**meta, "schema_version": SCHEMA_VERSION, "kind": KIND}
        if meta["settings"]["temperature"] > 0 and not meta.get("seeds"):
            raise ValueError(f"traces above T=0 are samples of seeded decodes: the table needs its seeds (meta 'seeds'), got {meta.get('seeds')!r}")
        if not path.exists():
            table_file.create(path, _SCHEMA, meta)
        table = cls.load(path)
        difference = table_file.mismatch(table.meta, meta, IDENTITY_KEYS)
        if difference:
            raise ValueError(f"{path} holds traces made under other settings, refusing to mix them: {difference}")
        if "entropy" not in table._trace_columns():  # a file from before entropies were kept: its old rows stay NULL
            with table.db:
                table.db.execute("ALTER TABLE traces ADD COLUMN entropy BLOB")
        return table

    @classmethod
    def load(cls, path: str | Path, expect: dict | None = None) -> "TraceTable":
        """Open and validate a trace table; `expect` lists metadata values it must have (e.g. the drafter)."""
        path = shipped_traces(str(path))
        db, meta = table_file.open_checked(path, "trace table", SCHEMA_VERSION, "SELECT prompt_id, tokens, accepted FROM traces LIMIT 1")
        if meta.get("kind") != KIND:
            raise ValueError(f"{path} is a {meta.get('kind', 'reward table')!r} file, not a trace table")
        return cls(path, db, meta).check(expect or {})

    @property
    def temperature(self) -> float:
        return float(self.meta["settings"]["temperature"])

    @property
    def keeps_entropy(self) -> bool:
        """Whether every trace here has the drafter's per-slot entropies (files traced before they were kept have none)."""
        return "entropy" in self._trace_columns() and not self.db.execute("SELECT 1 FROM traces WHERE entropy IS NULL LIMIT 1").fetchone()

    def _trace_columns(self) -> set[str]:
        return {column[1] for column in self.db.execute("PRAGMA table_info(traces)")}

    @property
    def sampled(self) -> bool:
        """Whether this table holds samples of seeded decodes (T > 0), not exact traces."""
        return self.temperature > 0

    @property
    def _rows(self) -> str:
        return "samples" if self.sampled else "traces"

    # ---- writing -------------------------------------------------------------------------
    def done_prompts(self) -> set[str]:
        return {pid for (pid,) in self.db.execute(f"SELECT prompt_id FROM {self._rows}")}

    def add(self, prompt: Prompt, trace: AcceptanceTrace | SampledTrace, seconds: float) -> None:
        """One prompt's trace, observations and row, in one transaction."""
        if trace.block_sizes != self.block_sizes:
            raise ValueError(f"trace of {prompt.id!r} has block sizes {list(trace.block_sizes)}, this table {list(self.block_sizes)}")
        if isinstance(trace, SampledTrace) != self.sampled:
            raise ValueError(f"a {type(trace).__name__} does not go in a table at temperature {self.temperature:g}")
        if isinstance(trace, SampledTrace):
            if list(trace.seeds) != self.meta["seeds"]:
                raise ValueError(f"trace of {prompt.id!r} has seeds {list(trace.seeds)}, this table {self.meta['seeds']}")
            with self.db:
                table_file.add_prompt(self.db, prompt, trace.prompt_tokens, trace.observations)
                self.db.execute("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?)",
                                (prompt.id, trace.prompt_tokens, json.dumps({str(b): c for b, c in trace.cycles.items()}), seconds))
            return
        accepted = np.array([trace.accepted[b] for b in self.block_sizes], dtype=np.uint8)
        def slots(per_slot: dict[int, list[list[float]]]) -> bytes:  # every block's slots, one block after another
            return np.concatenate([np.array(per_slot[b], dtype=np.float16).reshape(-1) for b in self.block_sizes]).tobytes()

        with self.db:
            table_file.add_prompt(self.db, prompt, trace.prompt_tokens, trace.observations)
            self.db.execute(
                f"INSERT OR IGNORE INTO traces ({TRACE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (prompt.id, trace.prompt_tokens, np.array(trace.tokens, dtype=np.int32).tobytes(), accepted.tobytes(),
                 slots(trace.confidence), seconds, slots(trace.entropy) if trace.entropy else None),
            )

    def merge_from(self, other: "TraceTable") -> int:
        """Copy every trace of `other` (same identity) this table lacks; returns the rows added."""
        difference = table_file.mismatch(self.meta, other.meta, IDENTITY_KEYS)
        if difference:
            raise ValueError(f"cannot merge {other.path} into {self.path}: {difference}")
        before = self.db.total_changes
        with self.db:
            table_file.copy_prompts(self.db, other.db)
            columns = TRACE_COLUMNS if "entropy" in other._trace_columns() else TRACE_COLUMNS.removesuffix(", entropy")
            self.db.executemany(f"INSERT OR IGNORE INTO traces ({columns}) VALUES ({', '.join('?' * len(columns.split(',')))})",
                                other.db.execute(f"SELECT {columns} FROM traces"))
            if self.sampled:
                self.db.executemany("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?)", other.db.execute("SELECT * FROM samples"))
        return self.db.total_changes - before

    # ---- reading -------------------------------------------------------------------------
    def traced_prompts(self, split: str | None = None) -> list[tuple[str, str, str]]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
        rows = self.db.execute(
            f"SELECT p.prompt_id, p.category, p.split FROM prompts p JOIN {self._rows} t USING (prompt_id) ORDER BY p.prompt_id"
        ).fetchall()
        return [row for row in rows if split is None or row[2] == split]

    def trace(self, prompt_id: str) -> AcceptanceTrace | SampledTrace:
        if self.sampled:
            row = self.db.execute("SELECT prompt_tokens, cycles FROM samples WHERE prompt_id = ?", (prompt_id,)).fetchone()
            if row is None:
                raise KeyError(f"no trace of prompt {prompt_id!r} in {self.path}")
            cycles = {int(b): c for b, c in json.loads(row[1]).items()}
            return SampledTrace(row[0], self.temperature, tuple(self.meta["seeds"]), cycles)
        entropy_column = "entropy" if "entropy" in self._trace_columns() else "NULL"
        row = self.db.execute(f"SELECT prompt_tokens, tokens, accepted, confidence, {entropy_column} FROM traces WHERE prompt_id = ?",
                              (prompt_id,)).fetchone()
        if row is None:
            raise KeyError(f"no trace of prompt {prompt_id!r} in {self.path}")
        prompt_tokens, tokens, accepted, confidence, entropy = row
        tokens = np.frombuffer(tokens, dtype=np.int32).tolist()
        anchors = max(0, len(tokens) - 1)
        accepted = np.frombuffer(accepted, dtype=np.uint8).reshape(len(self.block_sizes), anchors)

        def per_block(blob: bytes) -> dict[int, list[list[float]]]:  # slots of every block, one block after another
            slots, start, out = np.frombuffer(blob, dtype=np.float16).astype(np.float32), 0, {}
            for b in self.block_sizes:
                out[b] = slots[start : start + anchors * (b - 1)].reshape(anchors, b - 1).tolist()
                start += anchors * (b - 1)
            return out

        return AcceptanceTrace(prompt_tokens, tokens, {b: accepted[k].tolist() for k, b in enumerate(self.block_sizes)},
                               per_block(confidence), entropy=per_block(entropy) if entropy is not None else {})

    def continuation(self, prompt_id: str) -> list[int] | None:
        """The greedy continuation traced for `prompt_id` (None if not traced): what another drafter's
        trace of the same target and settings can start from instead of decoding it again."""
        if self.sampled:
            raise ValueError(f"{self.path} holds sampled decodes (T={self.temperature:g}), not greedy continuations")
        row = self.db.execute("SELECT tokens FROM traces WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.int32).tolist()

    def check_profile(self, profile: DeviceProfile) -> DeviceProfile:
        """`profile`, if it times this table's target and drafter at every traced block size; else a clear error."""
        problems = []
        if profile.target != self.meta["target"]:
            problems.append(f"target {profile.target!r}, the traces {self.meta['target']!r}")
        if profile.drafter_hash != self.meta["drafter_hash"]:
            problems.append(f"drafter {profile.drafter!r} ({profile.drafter_hash}), the traces {self.meta['drafter']!r} ({self.meta['drafter_hash']})")
        missing = [b for b in self.block_sizes if b not in profile.verify or (b > 1 and b not in profile.draft)]
        if missing:
            problems.append(f"no cost for block sizes {missing} (profiled: {list(profile.block_sizes)})")
        if problems:
            raise ValueError(f"profile {profile.name!r} does not fit {self.path.name}: " + "; ".join(problems))
        return profile

    def view(self, feature_set: str, split: str | None, profile: DeviceProfile) -> TableView:
        """The traced prompts of one split as a `TableView` whose rewards are simulated under `profile`:
        one deterministic "repeat" per (prompt, block size) (above T=0: one per seed), the
        autoregressive baseline at block 1 cost without a drafter pass."""
        self.check_profile(profile)
        parts = table_file.feature_parts(self.feature_sets, feature_set, self.path.name)
        prompts = self.traced_prompts(split)
        if not prompts:
            raise ValueError(f"{self.path} has no traced prompt in {f'split {split!r}' if split else 'any split'}")
        vectors = table_file.read_observations(self.db)
        samples, ar = [], []
        runs = range(len(self.meta["seeds"])) if self.sampled else range(1)  # exact traces: one deterministic run
        for pid, _, _ in prompts:
            trace = self.trace(pid)
            # block 1 is also the baseline (above T=0 it was decoded too, seed by seed)
            decodes = {b: [simulate(trace, profile, b, seed_index=j) for j in runs] for b in {1, *self.block_sizes}}
            samples.append([
                np.array([[s.tokens_per_second, s.mean_acceptance, s.new_tokens, s.cycles, s.decode_seconds] for s in decodes[b]])
                for b in self.block_sizes
            ])
            ar.append(np.array([s.tokens_per_second for s in decodes[1]]))
        return TableView(
            prompt_ids=[p[0] for p in prompts],
            categories=np.array([p[1] for p in prompts]),
            splits=np.array([p[2] for p in prompts]),
            block_sizes=self.block_sizes,
            feature_set=feature_set,
            observations=np.stack([np.concatenate([vectors[p[0]][x] for x in parts]) for p in prompts]),
            samples=samples,
            ar_samples=ar,
            simulated_under=profile.name,
        )

    def summary(self) -> dict:
        rows, seconds = self.db.execute(f"SELECT COUNT(*), COALESCE(SUM(seconds), 0) FROM {self._rows}").fetchone()
        return {"path": str(self.path), "prompts": rows, "collection_seconds": round(seconds, 1), **self.meta}


def is_trace_table(name: str) -> bool:
    """Whether `name` (a path, or a shipped name of either kind) is a trace table."""
    path = Path(name)
    if not path.is_file():
        return (SHIPPED_TRACES_DIR / f"{name}.sqlite").is_file()
    try:
        with closing(sqlite3.connect(path)) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'kind'").fetchone()
    except sqlite3.DatabaseError:
        return False  # the loader says what is wrong with it
    return row is not None and row[0] == f'"{KIND}"'


class SimulatedRewards:
    """A trace table under one device profile: read like a reward table (`view(feature_set, split)`),
    so every environment and agent that reads a measured table reads simulated rewards unchanged."""

    def __init__(self, traces: TraceTable, profile: DeviceProfile):
        self.traces, self.profile = traces, traces.check_profile(profile)
        self.path, self.meta, self.block_sizes = traces.path, traces.meta, traces.block_sizes

    def view(self, feature_set: str, split: str | None = None) -> TableView:
        return self.traces.view(feature_set, split, self.profile)
