"""Durable export state beside the warehouse: one JSON file per server and scope, replaced atomically.

The file holds the `_since` to use next (the last completed export's transactionTime) and the job under
way: its status URL, its manifest and each file's status and sha256. It is rewritten with write, fsync,
rename and a directory fsync, so a crash at any point leaves the old state or the new one, never a mix.
A lock file keeps two exports of the same server and scope from running at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipelines.common.errors import ConfigError

STATE_VERSION = 1
_SLUG = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass(frozen=True)
class ExportKey:
    """What an incremental `_since` belongs to: the server, the scope and the resource selection."""

    server: str
    scope: str  # system | patient | group
    group: str | None = None
    types: tuple[str, ...] = ()
    type_filters: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()  # a POST kick-off's `patient` list: its own `_since`
    include_associated: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "server": self.server,
            "scope": self.scope,
            "group": self.group,
            "types": list(self.types),
            "type_filters": list(self.type_filters),
        }
        # Only when set: the state files (and folder names) of exports without them stay as they were.
        if self.patients:
            out["patients"] = list(self.patients)
        if self.include_associated:
            out["include_associated"] = list(self.include_associated)
        return out

    def folder_name(self) -> str:
        # The group id is hashed, not spelled out: a folder name shows up in listings and logs.
        digest = hashlib.sha256(orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)).hexdigest()
        host = _SLUG.sub("-", self.server.split("://", 1)[-1].split("/", 1)[0]).strip("-")
        return f"{host}-{self.scope}-{digest[:12]}"


class ExportState:
    """The state file of one ExportKey, held under an exclusive lock while an export runs."""

    def __init__(self, root: Path, key: ExportKey) -> None:
        self.key = key
        self.dir = root / key.folder_name()
        self.path = self.dir / "state.json"
        self._lock_fh = None
        self.data: dict[str, Any] = {}
        # Download threads and the polling thread change the job at once (partial manifests).
        self.lock = threading.RLock()

    def __enter__(self) -> ExportState:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fh = (self.dir / ".lock").open("a")
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            raise ConfigError(
                "another `ehrlift export` of this server and scope is running",
                hint="wait for it to finish; it uses the same job state",
            ) from None
        self.data = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": STATE_VERSION, "key": self.key.to_dict(), "since": None, "job": None}
        try:
            data = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            raise ConfigError(
                "the export state file cannot be read", hint=f"inspect or remove {self.path}"
            ) from None
        if data.get("version") != STATE_VERSION or data.get("key") != self.key.to_dict():
            raise ConfigError(
                "the export state file belongs to another version or export", hint=str(self.path)
            )
        return data

    def save(self) -> None:
        with self.lock:
            content = orjson.dumps(self.data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
            write_durably(self.path, content)

    @property
    def since(self) -> str | None:
        return self.data.get("since")

    @property
    def job(self) -> dict[str, Any] | None:
        return self.data.get("job")

    def start_job(self, job: dict[str, Any]) -> None:
        self.data["job"] = job
        self.save()

    def finish_job(self, transaction_time: str | None, record: dict[str, Any]) -> None:
        """Clear the job and remember its transactionTime as the next `_since`; one atomic write."""
        if transaction_time:
            self.data["since"] = transaction_time
        history = self.data.setdefault("history", [])
        history.append(record)
        del history[:-20]  # the recent past is enough to explain the current `_since`
        self.data["job"] = None
        self.save()

    def drop_job(self) -> None:
        self.data["job"] = None
        self.save()


def write_durably(path: Path, content: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
