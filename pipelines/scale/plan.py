"""Which files of a run still need converting, read set-based, and how they split into commit groups."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import duckdb

from pipelines.common import arrow
from pipelines.convert import handler_for
from pipelines.scale.limits import Limits

# The format and declared release each run read a file with (its content's format when undeclared),
# as pipelines.fhir_release reads it one file at a time.
_READ_AS = """
    JOIN ops.files f ON f.file_sha256 = rf.file_sha256
    LEFT JOIN ops.fhir_release_declarations d ON d.run_id = rf.run_id AND d.file_sha256 = rf.file_sha256
"""


@dataclass(frozen=True)
class FileWork:
    """One pending file and everything a worker needs to convert it without opening the warehouse."""

    seq: int
    sha: str
    format: str
    detail: str | None
    size: int
    declared: str | None
    source_system: str
    handler: str
    resume: int  # the last unit an interrupted run committed (0: start at the beginning)
    chunked: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Group:
    """Files that share one transaction, in run order; a lone file may commit in several chunks."""

    index: int
    files: tuple[FileWork, ...]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "files": [f.to_dict() for f in self.files]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Group:
        return cls(int(data["index"]), tuple(FileWork(**f) for f in data["files"]))


def pending_files(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[list[FileWork], list[int]]:
    """The run's files still to convert, and the sizes of those some run already converted the same way
    (marked already_processed here)."""
    rows = con.execute(
        """
        SELECT rf.seq, rf.file_sha256, coalesce(d.format, f.format),
            CASE WHEN d.format IS NULL THEN f.format_detail ELSE d.format_detail END,
            f.size_bytes, d.release, f.source_system
        FROM ops.run_files rf JOIN ops.files f USING (file_sha256)
        LEFT JOIN ops.fhir_release_declarations d ON d.run_id = rf.run_id AND d.file_sha256 = rf.file_sha256
        WHERE rf.run_id = ? AND rf.status IN ('pending', 'partial') ORDER BY rf.seq
        """,
        [run_id],
    ).fetchall()
    if not rows:
        return [], []
    con.register("_pending_sha", arrow.table({"sha": [r[1] for r in rows]}))
    try:
        # A file read under another declared release is converted again; the same reading is not.
        done = set(
            con.execute(
                f"""
                SELECT DISTINCT rf.file_sha256, rf.handler, coalesce(d.format, f.format), d.release
                FROM ops.run_files rf {_READ_AS}
                WHERE rf.status = 'converted' AND rf.file_sha256 IN (SELECT sha FROM _pending_sha)
                """
            ).fetchall()
        )
        committed = {
            (sha, handler, fmt, release): int(pos)
            for sha, handler, fmt, release, pos in con.execute(
                f"""
                SELECT l.file_sha256, rf.handler, coalesce(d.format, f.format), d.release,
                       max(l.unit_position)
                FROM ops.ledger l
                JOIN ops.run_files rf ON rf.run_id = l.run_id AND rf.file_sha256 = l.file_sha256 {_READ_AS}
                WHERE rf.status = 'partial' AND l.file_sha256 IN (SELECT sha FROM _pending_sha)
                GROUP BY ALL
                """
            ).fetchall()
        }
    finally:
        con.unregister("_pending_sha")
    out: list[FileWork] = []
    already: list[tuple[int, str, int]] = []
    for seq, sha, fmt, detail, size, declared, system in rows:
        handler = handler_for(fmt)
        key = (sha, handler.name, fmt, declared)
        if key in done:
            already.append((seq, handler.name, size))
            continue
        resume = committed.get(key, 0) if handler.chunked else 0
        out.append(
            FileWork(seq, sha, fmt, detail, size, declared, system, handler.name, resume, handler.chunked)
        )
    if already:
        con.register(
            "_already", arrow.table({"seq": [a[0] for a in already], "handler": [a[1] for a in already]})
        )
        try:
            con.execute(
                "UPDATE ops.run_files AS rf SET handler = a.handler, status = 'already_processed' "
                "FROM _already a WHERE rf.run_id = ? AND rf.seq = a.seq",
                [run_id],
            )
        finally:
            con.unregister("_already")
    return out, [a[2] for a in already]


def plan_groups(files: list[FileWork], limits: Limits) -> list[Group]:
    """Consecutive files up to the file and byte bounds; a file of group_bytes or more goes alone, and
    so does a chunked one of slice_bytes or more (it may be cut into slices).

    The plan depends only on the pending files, so a pooled run and a single-process run commit the
    same groups in the same order and settle duplicates identically.
    """
    groups: list[Group] = []
    current: list[FileWork] = []
    size = 0

    def close() -> None:
        nonlocal current, size
        if current:
            groups.append(Group(len(groups), tuple(current)))
        current, size = [], 0

    for work in files:
        if work.size >= limits.group_bytes or (work.chunked and work.size >= limits.slice_bytes):
            close()
            current = [work]
            close()
            continue
        if len(current) >= limits.group_files or size + work.size > limits.group_bytes:
            close()
        current.append(work)
        size += work.size
    close()
    return groups
