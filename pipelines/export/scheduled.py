"""Scheduled bulk exports (the `bulk_export` DAG): settings from DAG params or the environment, download
held open until the normal stages loaded it, then `_since` moves on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipelines.common.config import RunConfig
from pipelines.common.errors import ConfigError
from pipelines.export.auth import DEFAULT_SCOPE
from pipelines.export.options import ExportOptions
from pipelines.export.runner import finish_export, run_export

# A DAG param left empty falls back to these variables: deployments keep server and client settings
# out of DAG files and trigger payloads. The private key is only ever a path to a file.
ENVIRONMENT = {
    "server": "EHRLIFT_EXPORT_SERVER",
    "scope": "EHRLIFT_EXPORT_SCOPE",
    "group": "EHRLIFT_EXPORT_GROUP",
    "client_id": "EHRLIFT_EXPORT_CLIENT_ID",
    "key_file": "EHRLIFT_EXPORT_KEY",
    "kid": "EHRLIFT_EXPORT_KID",
    "token_url": "EHRLIFT_EXPORT_TOKEN_URL",
    "auth_scope": "EHRLIFT_EXPORT_AUTH_SCOPE",
    "fhir_release": "EHRLIFT_EXPORT_FHIR_RELEASE",
}
SCOPES = ("system", "patient", "group")


def export_options(settings: dict[str, Any] | None) -> ExportOptions:
    """The export one scheduled run performs: held open (`hold`), not run in-process (the DAG's stages do)."""
    settings = dict(settings or {})

    def pick(name: str) -> Any:
        value = settings.get(name)
        if value in (None, "", []) and name in ENVIRONMENT:
            value = os.environ.get(ENVIRONMENT[name]) or None
        return value

    server = pick("server")
    if not server:
        raise ConfigError(
            "no FHIR server for the scheduled export",
            hint=f"set the DAG param 'server' or {ENVIRONMENT['server']}",
        )
    group = pick("group")
    scope = pick("scope") or ("group" if group else "system")
    if scope not in SCOPES:
        raise ConfigError(f"export scope must be one of {', '.join(SCOPES)}")
    if (scope == "group") != bool(group):
        raise ConfigError("a group export needs a group id, and only a group export takes one")
    key_file = pick("key_file")
    run = RunConfig.from_env((), warehouse=settings.get("warehouse") or None)
    return ExportOptions(
        server=str(server),
        scope=scope,
        group=group,
        warehouse=run.warehouse,
        types=tuple(settings.get("types") or ()),
        type_filters=tuple(settings.get("type_filters") or ()),
        patients=tuple(settings.get("patients") or ()),
        method=settings.get("method") or None,
        partial_manifests=bool(settings.get("partial_manifests")),
        source_system=settings.get("source_system") or os.environ.get("EHRLIFT_SOURCE_SYSTEM") or None,
        client_id=pick("client_id"),
        key_file=Path(key_file) if key_file else None,
        kid=pick("kid"),
        token_url=pick("token_url"),
        auth_scope=pick("auth_scope") or DEFAULT_SCOPE,
        run=False,
        progress=False,
        hold=True,
        fhir_release=pick("fhir_release") or "auto",
    )


def download(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Kick off (or resume) the export and download it; returns the run config of its local manifest.

    An earlier scheduled run whose stages failed left its job open: this run resumes it (nothing is
    fetched again) and the stages run on the same files, so no export is skipped by `_since`.
    """
    options = export_options(settings)
    result = run_export(options)
    assert result.manifest_path is not None
    config = RunConfig.from_env(
        (str(result.manifest_path),),
        warehouse=options.warehouse,
        source_system=result.source_system,
        progress=False,
    )
    # Counts and times only: this dict is logged and stored by the orchestrator.
    return {
        **config.to_dict(),
        "export": {
            "transaction_time": result.transaction_time,
            "since_used": result.since_used,
            "resumed": result.resumed,
            "files": dict(result.files),
            "fetched_now": result.fetched_now,
            "resources": sum(result.resources.values()),
            "fhir_release": result.fhir_release,
        },
    }


def finish(config: dict[str, Any], settings: dict[str, Any] | None) -> dict[str, Any]:
    """After load: the export's transactionTime becomes the `_since` of the next scheduled run."""
    since = finish_export(export_options(settings), config["export"]["transaction_time"], config["run_id"])
    return {"since": since, "run_id": config["run_id"]}
