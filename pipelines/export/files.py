"""The files of a bulk export: planned from the manifest, fetched by download threads, saved one by one."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.common.reasons import check_reason
from pipelines.export.client import BulkClient, Manifest
from pipelines.export.options import ExportResult
from pipelines.export.state import ExportState

RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
KIND_DIRS = {"output": "", "error": "error/", "deleted": "deleted/"}


def plan_files(manifest: Manifest, planned: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One record per file the manifest lists, with its local name (type and a sequence number).

    planned: the files of earlier pages of a partial manifest, which this page's files follow.
    """
    files: list[dict[str, Any]] = list(planned or [])
    seen: Counter[str] = Counter(f["kind"] + f["type"] for f in files)
    urls = {f["url"] for f in files}
    for kind, entries in (
        ("output", manifest.output),
        ("error", manifest.error),
        ("deleted", manifest.deleted),
    ):
        for entry in entries:
            if entry["url"] in urls:
                continue  # Bulk Data 3.0 repeats a manifest's error array on each of its pages
            urls.add(entry["url"])
            rtype = entry.get("type") if isinstance(entry.get("type"), str) else ""
            rtype = rtype if RESOURCE_TYPE.fullmatch(rtype) else "Unknown"
            seen[kind + rtype] += 1
            count, size = entry.get("count"), entry.get("fileSize")
            files.append(
                {
                    "kind": kind,
                    "type": rtype,
                    "url": entry["url"],
                    "name": f"{KIND_DIRS[kind]}{rtype}.{seen[kind + rtype]:03d}.ndjson",
                    "count": count if isinstance(count, int) and count >= 0 else None,
                    # A deleted file's count is of resources, not lines (a Bundle may hold several).
                    "check_lines": kind != "deleted" and isinstance(count, int) and count >= 0,
                    "file_size": size if isinstance(size, int) and size >= 0 else None,
                    "status": "pending",
                }
            )
    return files


class Fetcher:
    """Downloads one planned file at a time (any thread); each finished file is saved in the state."""

    def __init__(self, state: ExportState, client: BulkClient, out_dir: Path, result: ExportResult) -> None:
        self.state = state
        self.client = client
        self.out_dir = out_dir
        self.result = result
        self.requires_token = False
        self.advance_files: Callable[[], None] = lambda: None
        self.advance_bytes: Callable[[int], None] = lambda _n: None

    def todo(self, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The files still to fetch; finished ones whose bytes are on disk are never fetched again."""
        out = []
        with self.state.lock:
            for f in files:
                path = self.out_dir / f["name"]
                if f["status"] == "done" and path.is_file() and path.stat().st_size == f["bytes"]:
                    continue
                f["status"] = "pending"
                out.append(f)
        return out

    def fetch(self, f: dict[str, Any]) -> None:
        target = self.out_dir / f["name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        outcome = self.client.download(
            f["url"],
            target,
            self.requires_token,
            f["count"] if f.get("check_lines") else None,
            on_bytes=self.advance_bytes,
            expected_size=f.get("file_size"),
        )
        with self.state.lock:
            f.update(
                status=outcome.status,
                sha256=outcome.sha256,
                bytes=outcome.bytes,
                lines=outcome.lines,
                attempts=outcome.attempts,
                detail=outcome.detail,  # HTTP status or transfer error class: no record values
                reason=check_reason(outcome.reason, "quarantined") if outcome.reason else None,
            )
            self.state.save()  # each finished file is durable before the next one counts
            if outcome.status == "done":
                self.result.fetched_now += 1
        self.advance_files()
