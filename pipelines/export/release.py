"""The FHIR release an export's files are in: the server's CapabilityStatement, or --fhir-release.

It is decided once per job (a resumed job keeps it) and written as a .fhir-release.csv beside the
downloaded files, naming each of them, so landing reads them in that release and nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from pipelines import fhir_versions
from pipelines.common.errors import ConfigError
from pipelines.export.state import write_durably
from pipelines.export.web import RemoteError
from pipelines.fhir_release import DECLARATION_FILE, RELEASE_OF

log = logging.getLogger(__name__)
UNKNOWN = "unknown"  # the server would not say: each file's release is told from its content
_NAME_OF = {v: k for k, v in RELEASE_OF.items() if v}  # "1.0" -> "dstu2"


class _Client(Protocol):
    def server_fhir_version(self) -> str | None: ...


def decide(client: _Client, option: str) -> dict[str, Any]:
    """The job's `fhir_release` (dstu2 | stu3 | r4 | unknown), how it was decided, and what the server said.

    option: --fhir-release; "auto" takes the server's declaration. A server declaring a release ehrlift
    does not read stops the export here, before any job is started, unless the operator declared one.
    """
    if option != "auto":
        return {"fhir_release": option, "fhir_release_by": "option", "server_fhir_version": None}
    version = client.server_fhir_version()
    if version is None:
        log.warning(
            "the server's CapabilityStatement (GET [base]/metadata) could not be read or names no "
            "fhirVersion: each file's FHIR release will be told from its content; "
            "pass --fhir-release if the server's release is known"
        )
        return {"fhir_release": UNKNOWN, "fhir_release_by": "content", "server_fhir_version": None}
    name = _NAME_OF.get(fhir_versions.release_of(version))
    if name is None:
        shown = version if len(version) <= 16 and version.replace(".", "").replace("-", "").isalnum() else "?"
        raise RemoteError(
            f"the server declares FHIR version {shown}, which ehrlift does not read (DSTU2 1.0.x, "
            "STU3 3.0.x or R4 4.0.x)",
            hint="if its bulk files are in one of those releases, pass --fhir-release dstu2, stu3 or r4",
        )
    return {"fhir_release": name, "fhir_release_by": "server", "server_fhir_version": version}


def keep_on_resume(job: dict[str, Any], option: str, client: _Client) -> bool:
    """A resumed job keeps its release; True when one was decided now (a job started before it was kept)."""
    kept = job.get("fhir_release")
    if kept is None:
        job.update(decide(client, option))
        return True
    if option not in ("auto", kept):
        raise ConfigError(
            f"the unfinished export of this server and scope is read as {kept}",
            hint="re-run without --fhir-release to resume it, or pass --restart to start over",
        )
    return False


def write_declarations(job: dict[str, Any], out_dir: Path) -> None:
    """One .fhir-release.csv per download folder, a row per downloaded file; none when unknown."""
    by_folder: dict[Path, list[str]] = {}
    for f in job["files"]:
        name = PurePosixPath(f["name"])
        by_folder.setdefault(out_dir / name.parent, []).append(name.name)
    for folder in {out_dir, out_dir / "error", out_dir / "deleted", *by_folder}:
        path = folder / DECLARATION_FILE
        if job["fhir_release"] == UNKNOWN or folder not in by_folder:
            # A folder reused with --out may hold an older job's declaration: it must not apply.
            path.unlink(missing_ok=True)
            continue
        rows = "".join(f"{name},{job['fhir_release']}\n" for name in sorted(by_folder[folder]))
        write_durably(path, f"pattern,release\n# FHIR release of this export's files\n{rows}".encode())
