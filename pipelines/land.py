"""Landing: copy each source file into the landing zone under its sha256, once, and record it."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import duckdb
import orjson

from pipelines import formats
from pipelines.common.config import RunConfig
from pipelines.common.errors import InputNotFoundError
from pipelines.common.ledger import LedgerWriter
from pipelines.common.rows import insert_values
from pipelines.common.unit import FileContext, Unit
from pipelines.common.warehouse import file_processed, transaction
from pipelines.fhir_release import Declarations
from pipelines.fhir_release import record as record_declaration
from pipelines.intake import refused as refused_sources
from pipelines.intake.names import safe_name

log = logging.getLogger(__name__)
CHUNK = 1 << 20


@dataclass
class LandResult:
    files_given: int = 0
    files_landed: int = 0
    already_landed: int = 0
    same_bytes_twice: int = 0
    hidden_ignored: int = 0
    formats: dict[str, int] = field(default_factory=dict)


def expand_sources(sources: Iterable[str | Path]) -> tuple[list[Path], int, list[refused_sources.Refused]]:
    """Files named and files under folders named, in a stable order; hidden files are not clinical data.

    Also the entries under those folders that are not read (links leading out, FIFOs, dangling links).
    """
    out: list[Path] = []
    hidden = 0
    refused: list[refused_sources.Refused] = []
    sources = list(sources)
    roots = [Path(s).resolve() for s in sources if Path(s).is_dir()]
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise InputNotFoundError(f"source not found: {path}", hint="check the path; nothing was landed")
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if any(part.startswith(".") for part in rel.parts):
                    hidden += child.is_file()
                    continue
                why = refused_sources.classify(child, roots)
                if why is not None:
                    refused.append(why)
                elif child.is_file():
                    out.append(child)
        elif path.is_file():
            out.append(path)
        else:
            raise InputNotFoundError(f"source is not a regular file or folder: {path}")
    for p in out:
        if not os.access(p, os.R_OK):
            raise InputNotFoundError(f"source not readable: {p}", hint="check file permissions")
    return out, hidden, refused


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def land_sources(con: duckdb.DuckDBPyConnection, config: RunConfig) -> LandResult:
    """Land every source file for this run; bulk-export manifests bring in the outputs they list."""
    paths, hidden, refused = expand_sources(config.sources)
    result = LandResult(hidden_ignored=hidden)
    declarations = Declarations(config.sources, config.fhir_release)
    queue = list(paths)
    seen_paths: set[Path] = set()
    seen_sha: dict[str, int] = {}
    seq = 0
    group = _LandGroup(con, config.landing_dir, config.run_id)
    try:
        while queue:
            seq = _land_next(con, config, queue, seen_paths, seen_sha, seq, declarations, result, group)
    except BaseException:
        group.abort()
        raise
    group.commit()
    for entry in refused:
        seq += 1
        refused_sources.account(con, config, entry, seq)
        result.formats[refused_sources.FORMAT] = result.formats.get(refused_sources.FORMAT, 0) + 1
    return result


_FILES_COLUMNS = (
    "file_sha256",
    "size_bytes",
    "format",
    "format_detail",
    "source_system",
    "original_name",
    "landed_path",
    "first_run_id",
)


class _LandGroup:
    """Landing rows commit in groups (bounded by files and bytes), each after its files are fsynced.

    A crash rolls back only rows whose files a re-run lands again; one commit per file cost ~20 ms.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, landing: Path, run_id: str) -> None:
        from pipelines.scale import limits as scale_limits

        self.con = con
        self.bounds = scale_limits.limits()
        self.syncfs = _syncfs(landing)
        self.open = False
        self.files = self.bytes = 0
        self.files_rows: list[tuple] = []  # ops.files and ops.run_files rows, inserted at commit
        self.run_files_rows: list[tuple] = []
        # Only a retried landing of this run can find its own declarations to replace.
        self.retry = bool(
            con.execute("SELECT count(*) FROM ops.run_files WHERE run_id = ?", [run_id]).fetchall()[0][0]
        )

    def begin(self) -> None:
        if not self.open:
            self.con.execute("BEGIN TRANSACTION")
            self.open = True

    def landed(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files >= self.bounds.group_files or self.bytes >= self.bounds.group_bytes:
            self.commit()

    def flush(self) -> None:
        """Insert the group's buffered rows: one statement per table, not two per file."""
        if self.files_rows:
            self._insert("INSERT INTO ops.files SELECT *, now() FROM {rows}", _FILES_COLUMNS, self.files_rows)
        if self.run_files_rows:
            self._insert(
                "INSERT INTO ops.run_files SELECT *, NULL, 'pending', NULL FROM {rows}",
                ("run_id", "seq", "file_sha256", "landing"),
                self.run_files_rows,
            )

    def _insert(self, sql: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        insert_values(self.con, sql, columns, rows)  # not Arrow: pyarrow and DuckDB would import pandas
        rows.clear()

    def commit(self) -> None:
        if self.open:
            self.flush()
            if self.syncfs is not None:
                self.syncfs()  # one flush of the landing file system for the group's copies
            self.con.execute("COMMIT")
        self.open, self.files, self.bytes = False, 0, 0

    def abort(self) -> None:
        self.files_rows.clear()
        self.run_files_rows.clear()
        if self.open:
            self.con.execute("ROLLBACK")
        self.open, self.files, self.bytes = False, 0, 0


def _syncfs(folder: Path):
    """A call that makes everything written under folder durable (Linux syncfs), or None elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):
        return None
    folder.mkdir(parents=True, exist_ok=True)

    def sync() -> None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            if call(fd) != 0:
                raise OSError(ctypes.get_errno(), "syncfs of the landing folder failed")
        finally:
            os.close(fd)

    return sync


def _land_next(
    con: duckdb.DuckDBPyConnection,
    config: RunConfig,
    queue: list[Path],
    seen_paths: set[Path],
    seen_sha: dict[str, int],
    seq: int,
    declarations: Declarations,
    result: LandResult,
    group: _LandGroup,
) -> int:
    """Land the next queued source; returns the run's last file sequence number."""
    path = queue.pop(0)
    resolved = path.resolve()
    if resolved in seen_paths:
        return seq
    seen_paths.add(resolved)
    result.files_given += 1
    sha, size = sha256_file(path)
    if sha in seen_sha:
        result.same_bytes_twice += 1
        return seq
    seq += 1
    seen_sha[sha] = seq
    group.begin()
    fmt = _land_one(con, config, path, sha, size, seq, result, group)
    fmt = record_declaration(
        con, config.run_id, sha, landed_path(config, sha), fmt, declarations.for_file(path), clear=group.retry
    )
    result.formats[fmt] = result.formats.get(fmt, 0) + 1
    if fmt == formats.FHIR_MANIFEST:
        group.commit()  # a manifest's accounting is a transaction of its own
        queue[0:0] = _account_manifest(con, config, path, sha, seq)
    else:
        group.landed(size)
    return seq


def landed_path(config: RunConfig, sha: str) -> Path:
    return config.landing_dir / sha[:2] / sha


def _land_one(
    con: duckdb.DuckDBPyConnection,
    config: RunConfig,
    path: Path,
    sha: str,
    size: int,
    seq: int,
    result: LandResult,
    group: _LandGroup,
) -> str:
    row = con.execute("SELECT format FROM ops.files WHERE file_sha256 = ?", [sha]).fetchall()
    target = landed_path(config, sha)
    if not row or not target.exists():
        _copy_durably(path, target, group.syncfs is None)
    if not row:
        fmt, detail = formats.detect(target)
        group.files_rows.append(
            (
                sha,
                size,
                fmt,
                detail,
                config.source_system,
                safe_name(path.name),
                str(target.relative_to(config.landing_dir)),
                config.run_id,
            )
        )
        result.files_landed += 1
        landing = "landed"
    else:
        fmt = row[0][0]
        result.already_landed += 1
        landing = "already_landed"
    group.run_files_rows.append((config.run_id, seq, sha, landing))
    return fmt


def _copy_durably(src: Path, target: Path, fsync: bool = True) -> None:
    """Copy then rename, fsynced: a crash leaves either no landed file or a whole one.

    Without fsync the caller syncs the landing file system before it commits the files' rows.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    with src.open("rb") as fin, tmp.open("wb") as fout:
        shutil.copyfileobj(fin, fout, CHUNK)
        fout.flush()
        if fsync:
            os.fsync(fout.fileno())
    os.chmod(tmp, 0o444)  # landed files are never changed
    os.replace(tmp, target)


def _account_manifest(
    con: duckdb.DuckDBPyConnection, config: RunConfig, path: Path, sha: str, seq: int
) -> list[Path]:
    """Give each manifest output one ledger row, and return the local output files to land next."""
    manifest = orjson.loads(landed_path(config, sha).read_bytes())
    entries = _manifest_entries(manifest)
    outputs = [_local_output(path, e) for e in entries]
    status = con.execute(
        "SELECT status FROM ops.run_files WHERE run_id = ? AND file_sha256 = ?", [config.run_id, sha]
    ).fetchone()
    if status and status[0] != "pending":
        return [p for p in outputs if isinstance(p, Path)]  # this run accounted for it before a retry
    if file_processed(con, sha, "fhir-bulk-manifest"):
        con.execute(
            "UPDATE ops.run_files SET handler = ?, status = 'already_processed' WHERE run_id = ? AND seq = ?",
            ["fhir-bulk-manifest", config.run_id, seq],
        )
        return [p for p in outputs if isinstance(p, Path)]
    ctx = FileContext(
        config.run_id, seq, sha, landed_path(config, sha), formats.FHIR_MANIFEST, None, config.source_system
    )
    to_land: list[Path] = []
    with transaction(con):
        writer = LedgerWriter(con, ctx)
        for position, output in enumerate(outputs, 1):
            unit = Unit(position, "manifest_output")
            if isinstance(output, Path):
                to_land.append(output)
                writer.skip(unit, "manifest_output_landed")
            else:
                reason, message = output
                writer.quarantine(unit, reason, message)
        writer.flush()
        con.execute(
            "UPDATE ops.run_files SET handler = ?, status = 'converted', units = ? "
            "WHERE run_id = ? AND seq = ?",
            ["fhir-bulk-manifest", len(entries), config.run_id, seq],
        )
    return to_land


def _local_output(manifest_path: Path, entry: object) -> Path | tuple[str, str]:
    """The local file a manifest output names, or (reason, message) saying why there is none.

    A manifest may bring in only files inside its own folder: a url climbing out (`../`), an absolute
    path, a `file:` URL elsewhere or on another host, or a symlink resolving outside is refused before
    anything is opened, so a manifest cannot make ehrlift read other files on the host.
    """
    url = entry.get("url") if isinstance(entry, dict) else None
    if not isinstance(url, str) or not url:
        return "invalid_manifest_entry", "output entry has no url"
    if "\x00" in url:
        return "invalid_manifest_entry", "output url holds a NUL character"
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        return "manifest_output_remote", "output is a remote URL"
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            return "manifest_output_outside", "output file: URL names another host"
        candidate = Path(unquote(parsed.path))
        form = "output file: URL names a file outside the manifest's folder"
    elif scheme and len(scheme) > 1:
        return "manifest_output_unsupported_url", "output url scheme is neither file, http nor https"
    else:
        relative = Path(unquote(url) if "%" in url else url)
        if url.startswith(("/", "\\")) or relative.is_absolute() or scheme:
            return "manifest_output_outside", "output url is an absolute path"
        if ".." in relative.parts:
            return "manifest_output_outside", "output url climbs out of the manifest's folder"
        candidate = manifest_path.parent / relative
        form = "output url resolves (through a symlink) outside the manifest's folder"
    folder = manifest_path.parent.resolve()
    try:
        real = candidate.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return "manifest_output_missing", "output file not found beside the manifest"
    if not real.is_relative_to(folder) or real == folder:
        return "manifest_output_outside", form
    if not real.is_file():
        return "manifest_output_missing", "output file not found beside the manifest"
    return real


def _manifest_entries(manifest: object) -> list:
    """Output, error (Bulk Data 3.0: outcome) and deleted-record files: all are landed and accounted for.

    Deleted files are Bundles of DELETE requests (a `_since` export's removals); the FHIR handler records
    each entry skipped (bundle_delete_request), as it does for the deleted files `ehrlift export` fetches.
    """
    if not isinstance(manifest, dict):
        return []
    entries: list = []
    for key in ("output", "error", "outcome", "deleted"):
        items = manifest.get(key)
        if isinstance(items, list):
            entries.extend(items)
    return entries


def check_sources(sources: Iterable[str | Path]) -> None:
    """Refuse a missing source before the run is recorded: a mistyped path is not a failed run."""
    for source in sources:
        if not Path(source).exists():
            raise InputNotFoundError(f"source not found: {source}", hint="check the path; nothing was landed")
