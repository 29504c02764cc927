"""What every collected table file shares: one SQLite file, JSON metadata, prompts and observations.

The reward table (timed decodes, `bp_rl.rewards`) and the trace table (acceptance traces,
`bp_rl.trace_table`) are both such files. A file is created complete or not at all (built
beside its path and renamed), opened only after an integrity check, and holds rows of one
identity: the metadata keys that must agree for rows to share a file.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np

from bp_rl.features import parse_feature_set

PROMPTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id TEXT PRIMARY KEY, category TEXT NOT NULL, split TEXT NOT NULL, prompt_tokens INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS observations (
    prompt_id TEXT NOT NULL, feature_set TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (prompt_id, feature_set));
"""


class TableFile:
    """An open table file: its path, connection and metadata, and what both kinds read off the metadata."""

    def __init__(self, path: Path, connection: sqlite3.Connection, meta: dict):
        self.path, self.db, self.meta = path, connection, meta

    def check(self, expect: dict):
        """This table, if its metadata has the values in `expect` (e.g. the target); else a clear error."""
        difference = mismatch(self.meta, expect, tuple(expect))
        if difference:
            raise ValueError(f"{self.path} does not match what was asked for: {difference}")
        return self

    def close(self) -> None:
        self.db.close()

    @property
    def block_sizes(self) -> tuple[int, ...]:
        return tuple(self.meta["block_sizes"])

    @property
    def feature_sets(self) -> dict[str, int]:
        return dict(self.meta["feature_sets"])


def locate(name: str, shipped_dir: Path, what: str) -> Path:
    """A shipped table by name (`<shipped_dir>/<name>.sqlite`) or a path to a table file."""
    path = Path(name)
    if path.suffix == ".sqlite" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
        return path
    path = shipped_dir / f"{name}.sqlite"
    if not path.is_file():
        shipped = sorted(p.stem for p in shipped_dir.glob("*.sqlite"))
        raise ValueError(f"unknown {what} {name!r}; shipped: {shipped}, or a path to a .sqlite file")
    return path


def create(path: Path, schema: str, meta: dict) -> None:
    """Create `path` holding `schema` and `meta`, atomically: it is either absent or a valid file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as db:
        db.executescript(PROMPTS_SCHEMA + schema)
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    db.close()
    os.replace(tmp, path)


def open_checked(path: Path, what: str, schema_version: int, probe: str) -> tuple[sqlite3.Connection, dict]:
    """(connection, metadata) of a readable file of this schema version; `probe` is a query it must answer."""
    try:
        db = sqlite3.connect(path)
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("integrity check failed")
        meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
        db.execute(probe)
    except (sqlite3.DatabaseError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable {what} (truncated or corrupted?): {err}") from None
    if meta.get("schema_version") != schema_version:
        raise ValueError(f"{path} has schema version {meta.get('schema_version')!r}; this code reads {schema_version}")
    return db, meta


def mismatch(have: dict, want: dict, keys: Iterable[str]) -> str:
    """'key: have X, want Y' for every key whose values differ ('' when all agree)."""
    diffs = [f"{k}: table has {have.get(k)!r}, asked for {want.get(k)!r}" for k in keys if have.get(k) != want.get(k)]
    return "; ".join(diffs)


def add_prompt(db: sqlite3.Connection, prompt, prompt_tokens: int, observations: dict[str, np.ndarray]) -> None:
    """The prompt's row and observations (float16), unless already there; inside the caller's transaction."""
    db.execute("INSERT OR IGNORE INTO prompts VALUES (?, ?, ?, ?)", (prompt.id, prompt.category, prompt.split, prompt_tokens))
    db.executemany(
        "INSERT OR IGNORE INTO observations VALUES (?, ?, ?)",
        [(prompt.id, name, vector.astype(np.float16).tobytes()) for name, vector in observations.items()],
    )


def copy_prompts(db: sqlite3.Connection, other: sqlite3.Connection) -> None:
    """Every prompt and observation of `other` this file lacks; inside the caller's transaction."""
    for name, columns in (("prompts", 4), ("observations", 3)):
        rows = other.execute(f"SELECT * FROM {name}").fetchall()
        db.executemany(f"INSERT OR IGNORE INTO {name} VALUES ({', '.join('?' * columns)})", rows)


def feature_parts(feature_sets: dict[str, int], feature_set: str, file_name: str) -> list[str]:
    """The stored base sets a '+'-joined feature set is made of; a clear error for one not stored."""
    parts = [f"{name}@{layer}" if layer is not None else name for name, layer in parse_feature_set(feature_set)]
    for part in parts:
        if part not in feature_sets:
            raise ValueError(
                f"feature set {part!r} is not in {file_name}; it has {sorted(feature_sets)} "
                "(join with '+'; other sets need a table collected with them, or env=live)"
            )
    return parts


def read_observations(db: sqlite3.Connection) -> dict[str, dict[str, np.ndarray]]:
    """prompt id -> base feature set -> vector (float32)."""
    vectors: dict[str, dict[str, np.ndarray]] = {}
    for pid, name, data in db.execute("SELECT prompt_id, feature_set, data FROM observations"):
        vectors.setdefault(pid, {})[name] = np.frombuffer(data, dtype=np.float16).astype(np.float32)
    return vectors
