"""One run at a time per warehouse (a lock file), and runs killed mid-way marked `interrupted` by the next.

The lock is an advisory `flock` on `<warehouse>.lock`, held for the whole run: the kernel releases it
when the process ends, however it ends (kill -9 included), so a stale lock never blocks the next run
and no clean-up is needed. DuckDB's own lock covers only an open connection, and a run closes the
warehouse between stages; without this lock a second run could slip in between.

A run records its owner (host, pid and the process's start time) with its row in ops.runs. A run still
`running` whose owner on this host is gone, or whose pid now belongs to a younger process, is an orphan;
a run owned by another host, or recorded without an owner (an orchestrated run, whose tasks are separate
processes that Airflow retries), is never guessed at.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import orjson

from pipelines.common.errors import WarehouseError

_held: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, depth): re-entrant within one process


def lock_path(warehouse: Path) -> Path:
    return warehouse.with_name(warehouse.name + ".lock")


@contextmanager
def run_lock(warehouse: Path, run_id: str) -> Iterator[None]:
    """Hold the warehouse's run lock, or exit 4 naming the run that holds it."""
    path = lock_path(Path(warehouse)).absolute()
    if path in _held:
        fd, depth = _held[path]
        _held[path] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[path]
            _held[path] = (fd, depth - 1)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise WarehouseError(
            f"cannot create the run lock {path.name} beside the warehouse: {exc.strerror}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise WarehouseError(
            f"the warehouse {warehouse} is in use by another run{holder}",
            hint="wait for it to finish, then run again; a killed run's lock is released with it",
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, orjson.dumps({"run_id": run_id, **owner()}), 0)
        _held[path] = (fd, 1)
        yield
    finally:
        _held.pop(path, None)
        os.close(fd)  # closing releases the flock


def owner() -> dict[str, str | int]:
    """This process: host, pid and its start time (so a reused pid is not mistaken for it)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "process_started": process_started(os.getpid())}


def process_started(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc); '' where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat; fields 1-2 end at the last ')'


def alive(pid: int, started: str) -> bool:
    """Is the process that recorded (pid, started) still running on this host?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = process_started(pid)
    return not (started and now and now != started)


def record_owner(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    me = owner()
    con.execute(
        "INSERT OR REPLACE INTO ops.run_owners VALUES (?, ?, ?, ?, now())",
        [run_id, me["host"], me["pid"], me["process_started"]],
    )


def mark_orphans(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    """Mark `interrupted` every run of this host still `running` whose owning process is gone."""
    host = socket.gethostname()
    rows = con.execute(
        "SELECT r.run_id, o.pid, o.process_started FROM ops.runs r JOIN ops.run_owners o USING (run_id) "
        "WHERE r.status = 'running' AND r.run_id <> ? AND o.host = ?",
        [run_id, host],
    ).fetchall()
    orphans = [rid for rid, pid, started in rows if not alive(pid, started)]
    if orphans:
        con.execute(
            "UPDATE ops.runs SET status = 'interrupted', finished_at = now() "
            "WHERE list_contains(?, run_id) AND status = 'running'",
            [orphans],
        )
    return orphans


def _read_holder(fd: int) -> str:
    try:
        data = orjson.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, orjson.JSONDecodeError):
        return ""
    if not isinstance(data, dict) or "run_id" not in data:
        return ""
    return f" ({data['run_id']}, pid {data.get('pid')} on {data.get('host')})"
