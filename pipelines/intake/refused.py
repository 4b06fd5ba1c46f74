"""Entries under a source folder that are not read: each still gets a ledger row with its reason.

A symlink leading outside the sources would read files the operator never named; a dangling link, a
FIFO (opening it would block the run), a socket or a device holds no file to read. None is opened;
each is recorded under a key made from its kind and place, so a re-run finds it accounted for.
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pipelines.common.config import RunConfig
from pipelines.common.ledger import LedgerWriter
from pipelines.common.unit import FileContext, Unit
from pipelines.common.warehouse import file_processed, transaction
from pipelines.intake.names import safe_name

FORMAT = "not-read"
HANDLER = "refused-source"


@dataclass(frozen=True)
class Refused:
    path: Path  # as found under the source folder (never resolved, never opened)
    reason: str
    message: str


def classify(child: Path, roots: list[Path]) -> Refused | None:
    """Why an entry under a source folder is not read, or None for a regular file or folder to walk."""
    try:
        mode = child.lstat().st_mode
    except OSError:
        return Refused(child, "source_not_regular_file", "entry vanished or cannot be examined")
    if stat.S_ISLNK(mode):
        try:
            real = child.resolve(strict=True)
        except (OSError, RuntimeError):
            return Refused(child, "source_not_regular_file", "dangling or looping symlink")
        if not any(real.is_relative_to(root) for root in roots):
            return Refused(child, "source_symlink_outside", "symlink to a file outside the source folders")
        mode = real.stat().st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return Refused(child, "source_not_regular_file", "not a regular file (FIFO, socket or device)")


def account(con: duckdb.DuckDBPyConnection, config: RunConfig, refused: Refused, seq: int) -> None:
    """One ops.files row (nothing landed) and one quarantined ledger unit for a refused entry."""
    key = f"{HANDLER}\x1f{refused.reason}\x1f{refused.path}".encode("utf-8", "surrogateescape")
    sha = hashlib.sha256(key).hexdigest()
    known = con.execute("SELECT 1 FROM ops.files WHERE file_sha256 = ?", [sha]).fetchone()
    if known is None:
        con.execute(
            "INSERT INTO ops.files VALUES (?, 0, ?, ?, ?, ?, '', ?, now())",
            [sha, FORMAT, refused.message, config.source_system, safe_name(refused.path.name), config.run_id],
        )
    con.execute(
        "INSERT INTO ops.run_files VALUES (?, ?, ?, ?, NULL, 'pending', NULL)",
        [config.run_id, seq, sha, "already_landed" if known else "landed"],
    )
    if file_processed(con, sha, HANDLER):
        con.execute(
            "UPDATE ops.run_files SET handler = ?, status = 'already_processed' WHERE run_id = ? AND seq = ?",
            [HANDLER, config.run_id, seq],
        )
        return
    ctx = FileContext(config.run_id, seq, sha, refused.path, FORMAT, refused.message, config.source_system)
    with transaction(con):
        writer = LedgerWriter(con, ctx)
        writer.quarantine(Unit(0, "file", None, 0, 0), refused.reason, refused.message)
        writer.flush()
        con.execute(
            "UPDATE ops.run_files SET handler = ?, status = 'converted', units = 1 "
            "WHERE run_id = ? AND seq = ?",
            [HANDLER, config.run_id, seq],
        )
