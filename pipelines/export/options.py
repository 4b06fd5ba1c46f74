"""The options of one bulk export and what it brought: shared by the runner and the partial-manifest loop."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.common.errors import ConfigError
from pipelines.export.auth import DEFAULT_SCOPE
from pipelines.export.client import Timing
from pipelines.export.state import ExportKey
from pipelines.summary import RunSummary

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
MAX_MANIFEST_PAGES = 1000  # a partial manifest's `next` chain longer than this is a server loop


@dataclass(frozen=True)
class ExportOptions:
    server: str
    scope: str  # system | patient | group
    warehouse: Path
    group: str | None = None
    since: str | None = None
    full: bool = False  # ignore the remembered _since
    types: tuple[str, ...] = ()
    type_filters: tuple[str, ...] = ()
    out: Path | None = None
    source_system: str | None = None
    run: bool = True
    progress: bool = True
    workers: int = 4
    restart: bool = False
    client_id: str | None = None
    key_file: Path | None = None
    kid: str | None = None
    alg: str | None = None
    token_url: str | None = None
    auth_scope: str = DEFAULT_SCOPE
    timing: Timing = field(default_factory=Timing)
    max_pages: int = MAX_MANIFEST_PAGES
    method: str | None = None  # get | post; None: POST when patients are listed (GET cannot carry them)
    patients: tuple[str, ...] = ()  # Patient ids or Patient/id references (POST `patient`)
    include_associated: tuple[str, ...] = ()  # includeAssociatedData codes
    partial_manifests: bool = False  # allowPartialManifests: download files while the job still runs
    hold: bool = False  # keep the job open (no new `_since`) until finish_export: the DAG loads in between
    fhir_release: str = "auto"  # auto: the release the server's CapabilityStatement declares

    def key(self) -> ExportKey:
        return ExportKey(
            server=self.server.rstrip("/"),
            scope=self.scope,
            group=self.group,
            types=tuple(sorted(set(self.types))),
            type_filters=tuple(sorted(set(self.type_filters))),
            patients=tuple(sorted(set(patient_references(self.patients)))),
            include_associated=tuple(sorted(set(self.include_associated))),
        )

    def kickoff_method(self) -> str:
        return self.method or ("post" if self.patients else "get")


@dataclass
class ExportResult:
    out_dir: Path
    transaction_time: str
    since_used: str | None
    resumed: bool
    files: Counter[str] = field(default_factory=Counter)  # output / error / deleted files downloaded
    fetched_now: int = 0  # files fetched by this invocation (the rest were finished before a crash)
    resources: Counter[str] = field(default_factory=Counter)  # lines per resource type in output files
    bytes: int = 0
    error_issues: Counter[str] = field(default_factory=Counter)  # "severity/code" of OperationOutcomes
    deleted_on_server: bool = False
    run_summary: RunSummary | None = None
    manifest_path: Path | None = None
    state_dir: Path | None = None
    source_system: str | None = None  # the name the files are landed under (remembered per export)
    fhir_release: str | None = None  # dstu2 | stu3 | r4 | unknown (content detection)


def patient_references(values: tuple[str, ...]) -> list[str]:
    """`Patient/<id>` references from ids or references; a malformed one stops before any request."""
    out = []
    for value in values:
        rid = value.strip().removeprefix("Patient/")
        if not _FHIR_ID.fullmatch(rid):
            # The value itself is not shown: it may be an MRN or a name typed by mistake.
            raise ConfigError(
                "a --patient-id is not a FHIR id (1-64 letters, digits, '-' or '.') or Patient/<id>"
            )
        out.append(f"Patient/{rid}")
    return out
