"""`ehrlift export`: one resumable bulk export job, from kick-off to landed files and the normal run."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import orjson

from pipelines.common.config import DEFAULT_SOURCE_SYSTEM, FHIR_RELEASES, RunConfig
from pipelines.common.errors import ConfigError
from pipelines.export import release
from pipelines.export.auth import BackendAuth, load_signing_key
from pipelines.export.client import BulkClient, JobFailed, Manifest, parse_manifest
from pipelines.export.display import Display
from pipelines.export.files import RESOURCE_TYPE, Fetcher, plan_files
from pipelines.export.options import ExportOptions, ExportResult, patient_references
from pipelines.export.partial import export_while_running
from pipelines.export.state import ExportState, write_durably
from pipelines.export.web import RemoteError
from pipelines.summary import RunSummary

log = logging.getLogger(__name__)
_ASSOCIATED = re.compile(r"_?[A-Za-z][A-Za-z0-9]{0,63}")


def run_export(
    options: ExportOptions,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ExportResult:
    """Start (or resume) the export of this server and scope, download it, land and run it."""
    _check_options(options)
    auth = _auth(options)
    key = options.key()
    with ExportState(options.warehouse.parent / "exports", key) as state:
        client = BulkClient(key.server, auth, options.timing, sleep, clock=clock)
        try:
            return _export(options, state, client)
        finally:
            client.close()


def _check_options(options: ExportOptions) -> None:
    for t in options.types:
        if not RESOURCE_TYPE.fullmatch(t):
            raise ConfigError(f"--type {t!r} is not a FHIR resource type name")
    if options.source_system:
        RunConfig((), source_system=options.source_system)  # checks the name before anything is fetched
    if options.fhir_release not in FHIR_RELEASES:
        raise ConfigError(f"--fhir-release must be one of {', '.join(FHIR_RELEASES)}")
    if options.workers < 1 or options.workers > 32:
        raise ConfigError("--workers must be 1-32")
    if options.since and options.full:
        raise ConfigError("--since and --full contradict each other")
    if options.method not in (None, "get", "post"):
        raise ConfigError("--method must be get or post")
    if options.patients:
        if options.scope == "system":
            raise ConfigError(
                "--patient-id applies to Patient- and Group-level exports only",
                hint="add --patient (all patients) or --group ID",
            )
        if options.kickoff_method() == "get":
            raise ConfigError(
                "a GET kick-off cannot carry patient ids (the IG allows `patient` only in POST)",
                hint="drop --method get: --patient-id kicks off with POST",
            )
        patient_references(options.patients)  # checks each id before anything is sent
    for code in options.include_associated:
        if not _ASSOCIATED.fullmatch(code):
            raise ConfigError(
                f"--include-associated-data {code!r} is not a code",
                hint="LatestProvenanceResources, RelevantProvenanceResources or a server's _custom code",
            )
    if options.since and not re.fullmatch(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", options.since
    ):
        raise ConfigError("--since must be a FHIR instant, for example 2024-01-31T00:00:00Z")


def _auth(options: ExportOptions) -> BackendAuth | None:
    if not options.client_id:
        if options.key_file:
            raise ConfigError("--key needs --client-id")
        return None
    if not options.key_file:
        raise ConfigError("--client-id needs --key (a JWKS or PEM private key file)")
    key = load_signing_key(options.key_file, options.kid, options.alg)
    return BackendAuth(options.client_id, key, options.token_url, options.auth_scope)


def _export(options: ExportOptions, state: ExportState, client: BulkClient) -> ExportResult:
    job = state.job
    if job and options.restart:
        if job.get("status_url"):
            client.delete(job["status_url"])
        state.drop_job()
        job = None
    stored_system = state.data.get("source_system")
    source_system = options.source_system or stored_system or DEFAULT_SOURCE_SYSTEM
    if stored_system and source_system != stored_system:
        raise ConfigError(
            f"this server and scope were exported under source system {stored_system!r}",
            hint="keep the same --source-system, or record ids would change between incremental runs",
        )
    resumed = job is not None
    if job is None:
        # Before kick-off: a server speaking a release ehrlift cannot read is refused before any job.
        declared = release.decide(client, options.fhir_release)
        since = options.since or (None if options.full else state.since)
        method = options.kickoff_method()
        patients = patient_references(options.patients)
        body = None
        if method == "post":
            kickoff = client.kickoff_post(options.scope, options.group)
            body = client.kickoff_parameters(
                since,
                options.types,
                options.type_filters,
                tuple(patients),
                options.include_associated,
                options.partial_manifests,
            )
        else:
            kickoff = client.kickoff_url(
                options.scope,
                options.group,
                since,
                options.types,
                options.type_filters,
                include_associated=options.include_associated,
                partial_manifests=options.partial_manifests,
            )
        started = datetime.now(UTC)
        out_dir = (options.out or state.dir / f"job-{started:%Y%m%dT%H%M%SZ}").resolve()
        job = {
            "kickoff_url": kickoff,
            "kickoff_method": method,
            "partial_manifests": options.partial_manifests,
            "since": since,
            "started_at": started.isoformat(),
            "out_dir": str(out_dir),
            "source_system": source_system,
            "status_url": None,
            "manifest": None,
            "files": [],
            "deleted_on_server": False,
            **declared,
        }
        state.data["source_system"] = source_system
        sent = (*(p.removeprefix("Patient/") for p in patients), *([options.group] if options.group else []))
        status_url = client.kickoff(kickoff, body, sent_values=sent)
        job["status_url"] = status_url
        state.start_job(job)
        log.info("export started; polling its status")
    else:
        if (options.since and options.since != job["since"]) or (options.full and job["since"]):
            raise ConfigError(
                "an unfinished export of this server and scope uses another --since",
                hint="re-run without changing it to resume, or pass --restart to start over",
            )
        if options.out and options.out.resolve() != Path(job["out_dir"]):
            raise ConfigError(
                "an unfinished export of this server and scope writes to another folder",
                hint=f"re-run with --out {job['out_dir']} or pass --restart",
            )
        if release.keep_on_resume(job, options.fhir_release, client):
            state.save()
        log.info("resuming the unfinished export of this server and scope")
    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)

    with Display(options.progress) as display:
        if job.get("partial_manifests"):
            result = ExportResult(out_dir, "", job["since"], resumed)
            try:
                manifest = export_while_running(
                    options, state, client, Fetcher(state, client, out_dir, result), display
                )
            except JobFailed as exc:
                _forget(client, state, exc)
            result.transaction_time = manifest.transaction_time
        elif job["manifest"] is None:
            try:
                manifest = client.poll(job["status_url"], display.job_progress)
            except JobFailed as exc:
                _forget(client, state, exc)
            job["manifest"] = manifest.raw
            job["files"] = plan_files(manifest)
            job["pages"] = 1
            job["next_page"] = manifest.next_url
            state.save()
        if not job.get("partial_manifests"):
            manifest = parse_manifest(orjson.dumps(job["manifest"]), job["status_url"])
            _follow_pages(options, state, client, manifest.requires_access_token)
            result = ExportResult(out_dir, manifest.transaction_time, job["since"], resumed)
            _download_all(options, state, client, manifest, out_dir, result, display)

    failed = [f for f in job["files"] if f["status"] == "failed"]
    if failed:
        reasons = Counter(f["reason"] for f in failed)
        raise RemoteError(
            f"{len(failed)} of {len(job['files'])} export files could not be downloaded "
            f"({', '.join(f'{r} {n}' for r, n in sorted(reasons.items()))})",
            hint=(
                "the server no longer has them: run again with --restart for a new export"
                if set(reasons) <= {"export_file_gone"}
                else "re-run the same command to retry them; finished files are kept and not fetched again"
            ),
        )
    _summarise(job, out_dir, result)
    result.source_system = job["source_system"]
    result.manifest_path = _write_local_manifest(job, manifest, out_dir)
    release.write_declarations(job, out_dir)
    result.fhir_release = job["fhir_release"]
    if not job["deleted_on_server"]:
        job["deleted_on_server"] = client.delete(job["status_url"])
        state.save()
    result.deleted_on_server = job["deleted_on_server"]
    if options.run:
        result.run_summary = _run_pipeline(options, job, result.manifest_path, out_dir)
    result.state_dir = state.dir
    if options.hold:
        # Downloaded, not yet loaded: the `_since` moves on only when finish_export says it was.
        job["downloaded"] = True
        state.save()
        return result
    _finish(state, result, result.run_summary.run_id if result.run_summary else None)
    return result


def _finish(state: ExportState, result: ExportResult, run_id: str | None) -> None:
    job = state.job or {}
    state.finish_job(
        result.transaction_time,
        {
            "transaction_time": result.transaction_time,
            "since": job.get("since"),
            "finished_at": datetime.now(UTC).isoformat(),
            "out_dir": job.get("out_dir"),
            "files": dict(result.files),
            "resources": sum(result.resources.values()),
            "run_id": run_id,
        },
    )


def finish_export(options: ExportOptions, transaction_time: str, run_id: str | None) -> str | None:
    """Close a job kept open by `hold` once its files are loaded: its transactionTime becomes `_since`.

    Returns the `_since` now remembered. A job that is not the one downloaded (restarted in between) is
    left alone.
    """
    with ExportState(options.warehouse.parent / "exports", options.key()) as state:
        job = state.job
        if (
            not job
            or not job.get("downloaded")
            or (job.get("manifest") or {}).get("transactionTime") != (transaction_time)
        ):
            raise ConfigError(
                "no downloaded export of this server and scope is waiting to be finished",
                hint="the export task must run first, with the same settings",
            )
        out_dir = Path(job["out_dir"])
        result = ExportResult(out_dir, transaction_time, job["since"], True)
        _summarise(job, out_dir, result)
        _finish(state, result, run_id)
        return state.since


def _forget(client: BulkClient, state: ExportState, exc: JobFailed) -> NoReturn:
    """A failed or vanished job cannot be resumed: forget it so the next run starts anew."""
    if state.job and state.job.get("status_url"):
        client.delete(state.job["status_url"])
    state.drop_job()
    raise RemoteError(exc.message, hint=exc.hint or "re-run the same command to start a new export") from None


def _follow_pages(options: ExportOptions, state: ExportState, client: BulkClient, needs_token: bool) -> None:
    """Fetch a partial manifest's further pages; each page's files are saved before the next is fetched."""
    job = state.job or {}
    while job.get("next_page"):
        if job["pages"] >= options.max_pages:
            raise RemoteError(
                f"the export's manifest goes on past {options.max_pages} pages",
                hint="the server's next links may loop; start a new export with --restart",
            )
        page = client.manifest_page(job["next_page"], needs_token)
        job["files"] = plan_files(page, job["files"])
        job["pages"] += 1
        job["next_page"] = page.next_url
        state.save()  # a crash from here on resumes at the next page, with this page's files planned


def _download_all(
    options: ExportOptions,
    state: ExportState,
    client: BulkClient,
    manifest: Manifest,
    out_dir: Path,
    result: ExportResult,
    display: Display,
) -> None:
    fetcher = Fetcher(state, client, out_dir, result)
    files = state.job["files"] if state.job else []
    todo = fetcher.todo(files)
    fetcher.requires_token = manifest.requires_access_token
    fetcher.advance_files, fetcher.advance_bytes = display.downloads(len(files), len(files) - len(todo))
    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="export") as pool:
        futures = [pool.submit(fetcher.fetch, f) for f in todo]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()  # Ctrl-C or a bug: stop queued files; finished ones are already saved
            raise


def _summarise(job: dict[str, Any], out_dir: Path, result: ExportResult) -> None:
    for f in job["files"]:
        result.files[f["kind"]] += 1
        result.bytes += f["bytes"]
        if f["kind"] == "output":
            result.resources[f["type"]] += f["lines"]
        elif f["kind"] == "error":
            result.error_issues.update(_issue_codes(out_dir / f["name"]))


def _issue_codes(path: Path) -> Iterator[str]:
    """severity/code of each issue in an error file; diagnostics text is never read out."""
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                outcome = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield "unreadable"
                continue
            issues = outcome.get("issue") if isinstance(outcome, dict) else None
            for issue in issues if isinstance(issues, list) else []:
                if isinstance(issue, dict):
                    yield f"{issue.get('severity', '?')}/{issue.get('code', '?')}"


def _write_local_manifest(job: dict[str, Any], manifest: Manifest, out_dir: Path) -> Path:
    """The server's manifest with each URL replaced by the downloaded file's name, for the landing stage."""

    def entries(kind: str) -> list[dict[str, Any]]:
        out = []
        for f in job["files"]:
            if f["kind"] == kind:
                entry: dict[str, Any] = {"type": f["type"], "url": f["name"]}
                if f["count"] is not None:
                    entry["count"] = f["count"]
                out.append(entry)
        return out

    local = {
        "transactionTime": manifest.transaction_time,
        "request": manifest.raw.get("request"),
        "requiresAccessToken": False,
        "output": entries("output"),
        "error": entries("error"),
        "deleted": entries("deleted"),
    }
    path = out_dir / "manifest.json"
    write_durably(path, orjson.dumps(local, option=orjson.OPT_INDENT_2))
    return path


def _run_pipeline(
    options: ExportOptions, job: dict[str, Any], manifest_path: Path, out_dir: Path
) -> RunSummary:
    """land → convert → load of the manifest (it brings its output, error and deleted files)."""
    from pipelines.run import run_pipeline

    # The local manifest lists the deleted-record files too: landing brings them in with the outputs.
    config = RunConfig(
        sources=(str(manifest_path),),
        warehouse=options.warehouse,
        source_system=job["source_system"],
        progress=options.progress,
    )
    return run_pipeline(config)
