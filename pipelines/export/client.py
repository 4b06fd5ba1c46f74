"""The Bulk Data Access protocol: kick-off, status polling, manifest, file downloads and job deletion.

Every request loop is bounded (attempt counts and a deadline); waits honour Retry-After (seconds or an
HTTP-date) within [min, max] limits, else back off exponentially with jitter. Tokens go only where the
rules allow: the server's own origin, and file URLs when the manifest says requiresAccessToken.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urljoin

import httpx
import orjson

from pipelines.export.auth import BackendAuth
from pipelines.export.state import fsync_dir, write_durably
from pipelines.export.web import (
    USER_AGENT,
    RemoteError,
    outcome_diagnostics,
    outcome_is_transient,
    outcome_summary,
    require_secure,
    retry_after_seconds,
    same_origin,
)

log = logging.getLogger(__name__)
# httpx logs every request URL at INFO; file URLs can be signed (their query is a credential) and
# _typeFilter queries can name patients, so its messages stay below what `-v` shows.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_REDIRECTS = 5
CHUNK = 1 << 16


@dataclass(frozen=True)
class Timing:
    """Waiting rules; tests shrink them, the defaults suit a production server."""

    poll_min: float = 1.0  # never poll faster than this, whatever Retry-After says
    poll_max: float = 120.0  # never wait longer than this between polls
    max_wait: float = 24 * 3600.0  # give up on a job that is not done after this long
    retry_base: float = 1.0
    retry_max: float = 60.0
    attempts: int = 6  # tries per request (or per file download) before it counts as failed
    connect_timeout: float = 15.0
    read_timeout: float = 120.0


@dataclass
class FileOutcome:
    status: str  # done | failed
    sha256: str | None = None
    bytes: int = 0
    lines: int = 0
    reason: str | None = None
    attempts: int = 0
    detail: str | None = None


@dataclass
class Manifest:
    transaction_time: str
    requires_access_token: bool
    output: list[dict[str, Any]]
    error: list[dict[str, Any]]
    deleted: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    next_url: str | None = None  # a partial manifest's `next` link: the page that lists more files


@dataclass
class StatusAnswer:
    kind: str  # done (200 + manifest) | running (202, maybe with a partial manifest) | retry
    retry_after: float | None
    manifest: Manifest | None = None
    progress: str | None = None


class PollWaits:
    """The waits between status requests: Retry-After within [poll_min, poll_max], else a growing backoff;
    failures (429, transient 5xx) counted and bounded; the whole wait bounded by max_wait."""

    def __init__(self, client: BulkClient) -> None:
        self.client = client
        self.timing = client.timing
        self.started = client.clock()
        self.waited = 0.0  # the waits asked for; counts even where the sleep function is not the clock's
        self.wait = self.timing.poll_min
        self.failures = 0

    def sleep(self, answer: StatusAnswer, response: httpx.Response) -> None:
        timing = self.timing
        if answer.kind == "running":
            self.failures = 0
            asked = answer.retry_after
            wait = asked if asked is not None else min(self.wait * 1.5, timing.poll_max)
        else:
            self.failures += 1
            if self.failures >= timing.attempts:
                raise RemoteError(
                    f"the export status endpoint kept failing: HTTP {response.status_code}, "
                    f"{outcome_summary(response)}"
                )
            asked = answer.retry_after
            wait = asked if asked is not None else self.client.backoff(self.failures)
        self.wait = wait = min(max(wait, timing.poll_min), timing.poll_max)
        if max(self.client.clock() - self.started, self.waited) + wait > timing.max_wait:
            raise RemoteError(
                f"the export job was not done after {timing.max_wait:.0f} s",
                hint="re-run the same command later: it resumes polling the same job",
            )
        self.client.sleep(wait)
        self.waited += wait


class DownloadFailed(Exception):
    def __init__(self, reason: str, detail: str, retry: bool, wait: float | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry = retry
        self.wait = wait
        self.token_generation: int | None = None  # set when a sent token was refused (401)


def parse_manifest(body: bytes, status_url: str) -> Manifest:
    """The completion manifest, checked for the fields the IG requires; relative URLs resolved."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RemoteError("the export's completion manifest is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("output"), list):
        raise RemoteError("the export's completion manifest has no output array")
    if not isinstance(doc.get("transactionTime"), str) or "requiresAccessToken" not in doc:
        raise RemoteError("the export's completion manifest lacks transactionTime or requiresAccessToken")

    next_url = None
    links = doc.get("link") or []
    if not isinstance(links, list):
        raise RemoteError("the manifest's link is not an array")
    for link in links:
        if not isinstance(link, dict) or not isinstance(link.get("url"), str) or not link["url"]:
            raise RemoteError("an entry of the manifest's link array has no url")
        if link.get("relation") != "next":
            continue
        if next_url is not None:
            raise RemoteError("the manifest has more than one next link")
        next_url = require_secure(urljoin(status_url, link["url"]), "a manifest page URL")
        # A page elsewhere could be anyone's: the job's own server answers for every page of it.
        if not same_origin(next_url, status_url):
            raise RemoteError("the manifest's next link points to another server")

    def entries(name: str) -> list[dict[str, Any]]:
        items = doc.get(name) or []
        if not isinstance(items, list):
            raise RemoteError(f"the manifest's {name} is not an array")
        out = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("url"), str) or not item["url"]:
                raise RemoteError(f"an entry of the manifest's {name} array has no url")
            url = require_secure(urljoin(status_url, item["url"]), "an export file URL")
            out.append({**item, "url": url})
        return out

    return Manifest(
        transaction_time=doc["transactionTime"],
        requires_access_token=doc["requiresAccessToken"] is True,
        output=entries("output"),
        # Bulk Data 2.0 names the OperationOutcome files `error`; 3.0 names them `outcome`.
        error=entries("error") + entries("outcome"),
        deleted=entries("deleted"),
        raw=doc,
        next_url=next_url,
    )


class BulkClient:
    """One FHIR server's bulk export endpoints, over one pooled httpx client shared by worker threads."""

    def __init__(
        self,
        server: str,
        auth: BackendAuth | None = None,
        timing: Timing | None = None,
        sleep: Callable[[float], None] = time.sleep,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = require_secure(server.rstrip("/"), "the FHIR server URL")
        self.auth = auth
        self.timing = timing or Timing()
        self.sleep = sleep
        self.clock = clock  # with sleep, what a test replaces so that no assertion depends on real time
        self.http = http or httpx.Client(
            timeout=httpx.Timeout(self.timing.read_timeout, connect=self.timing.connect_timeout),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )
        self.requests = 0

    def close(self) -> None:
        self.http.close()

    # -- requests -----------------------------------------------------------------------------------

    def _token_for(self, url: str, files_need_token: bool | None) -> tuple[str, int] | None:
        """A bearer token for url, or None; files_need_token: None for API calls, else the manifest's flag."""
        if self.auth is None:
            return None
        if files_need_token is None:
            if not same_origin(url, self.server):
                return None  # never hand the token to another host's status endpoint
        elif not files_need_token:
            return None
        return self.auth.token(self.http, self.server)

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
        files_need_token: bool | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One API request (not a download) with 401 → one refresh, and bounded retries.

        files_need_token: None for the server's API, else the manifest's requiresAccessToken (manifest pages).
        """
        require_secure(url, "a bulk export URL")
        refreshed = False
        for attempt in range(1, self.timing.attempts + 1):
            token = self._token_for(url, files_need_token)
            sent = dict(headers)
            if token:
                sent["Authorization"] = f"Bearer {token[0]}"
            try:
                self.requests += 1
                response = self.http.request(method, url, headers=sent, content=content)
            except httpx.TransportError as exc:
                if attempt == self.timing.attempts:
                    raise RemoteError(
                        f"cannot reach the FHIR server after {attempt} attempts ({type(exc).__name__})"
                    ) from None
                self.sleep(self.backoff(attempt))
                continue
            if response.status_code == 401 and token and not refreshed and self.auth is not None:
                refreshed = True
                self.auth.refresh_after_401(self.http, self.server, token[1])
                continue
            if response.status_code in retry_statuses and attempt < self.timing.attempts:
                self.sleep(self.backoff(attempt, response.headers.get("Retry-After")))
                continue
            return response
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def backoff(self, attempt: int, retry_after: str | None = None) -> float:
        asked = retry_after_seconds(retry_after)
        if asked is not None:
            return min(max(asked, 0.0), self.timing.retry_max)
        base = self.timing.retry_base * (2 ** (attempt - 1))
        return min(self.timing.retry_max, base * random.uniform(0.5, 1.0))  # noqa: S311 (jitter, not crypto)

    # -- the protocol ---------------------------------------------------------------------------------

    def kickoff_url(
        self,
        scope: str,
        group: str | None,
        since: str | None,
        types: tuple[str, ...],
        type_filters: tuple[str, ...],
        *,
        include_associated: tuple[str, ...] = (),
        partial_manifests: bool = False,
    ) -> str:
        path = {"system": "$export", "patient": "Patient/$export"}.get(scope)
        if scope == "group":
            if not group:
                raise RemoteError("a group export needs a group id")
            path = f"Group/{quote(group, safe='')}/$export"
        if path is None:
            raise RemoteError(f"unknown export scope {scope!r}")
        params: list[tuple[str, str]] = [("_outputFormat", NDJSON)]
        if since:
            params.append(("_since", since))
        if types:
            params.append(("_type", ",".join(types)))
        # Repeated _typeFilter parameters, as the IG allows: a filter can itself hold commas.
        params.extend(("_typeFilter", f) for f in type_filters)
        if include_associated:
            params.append(("includeAssociatedData", ",".join(include_associated)))
        if partial_manifests:
            params.append(("allowPartialManifests", "true"))
        return f"{self.server}/{path}?{urlencode(params)}"

    @staticmethod
    def kickoff_parameters(
        since: str | None,
        types: tuple[str, ...],
        type_filters: tuple[str, ...],
        patients: tuple[str, ...] = (),
        include_associated: tuple[str, ...] = (),
        partial_manifests: bool = False,
    ) -> dict[str, Any]:
        """The Parameters resource of a POST kick-off (Bulk Data 2.0+): one entry per value.

        Repeated `_type` entries rather than one comma list: 3.0 servers read both, and the 4.0 ballot
        drops comma lists. `patient` exists only here: a GET kick-off cannot carry it.
        """
        entries: list[dict[str, Any]] = [{"name": "_outputFormat", "valueString": NDJSON}]
        if since:
            entries.append({"name": "_since", "valueInstant": since})
        entries.extend({"name": "_type", "valueString": t} for t in types)
        entries.extend({"name": "_typeFilter", "valueString": f} for f in type_filters)
        entries.extend({"name": "patient", "valueReference": {"reference": p}} for p in patients)
        entries.extend({"name": "includeAssociatedData", "valueCode": c} for c in include_associated)
        if partial_manifests:
            entries.append({"name": "allowPartialManifests", "valueBoolean": True})
        return {"resourceType": "Parameters", "parameter": entries}

    def server_fhir_version(self) -> str | None:
        """The fhirVersion the server's CapabilityStatement (DSTU2: Conformance) declares, or None when
        the server will not say (refused, unreachable, not a capability statement, no fhirVersion)."""
        # The token first, outside the fallback: a token endpoint that refuses us is an auth failure to
        # report as such, not a server that keeps its release to itself.
        self._token_for(f"{self.server}/metadata", None)
        try:
            # A 500 answers this request itself; only throttling and gateways are worth asking again.
            response = self.request(
                "GET",
                f"{self.server}/metadata",
                {"Accept": FHIR_JSON},
                retry_statuses=frozenset({429, 502, 503, 504}),
            )
        except RemoteError:
            return None
        if response.status_code != 200:
            return None
        try:
            doc = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict) or doc.get("resourceType") not in ("CapabilityStatement", "Conformance"):
            return None
        version = doc.get("fhirVersion")
        return version.strip() if isinstance(version, str) and version.strip() else None

    def kickoff_post(self, scope: str, group: str | None) -> str:
        """The operation URL of a POST kick-off: its parameters travel in the body, not the query."""
        return self.kickoff_url(scope, group, None, (), ()).split("?", 1)[0]

    def kickoff(self, url: str, body: dict[str, Any] | None = None, sent_values: tuple[str, ...] = ()) -> str:
        """Start the export (GET, or POST of a Parameters body); returns the absolute status URL.

        sent_values: what the request carried that could identify someone (patient and group ids); they
        are blanked from the server's diagnostics before these reach the operator.
        """
        headers = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
        content = None
        if body is not None:
            headers["Content-Type"] = FHIR_JSON
            content = orjson.dumps(body)
        # A 500 answers this request itself; only throttling and gateways are worth asking again.
        response = self.request(
            "POST" if body is not None else "GET",
            url,
            headers,
            retry_statuses=frozenset({429, 502, 503, 504}),
            content=content,
        )
        if response.status_code != 202:
            # A 400 says what is wrong with the request's form, which the operator needs to fix it; other
            # refusals (404 group, 403 scopes) say it with their codes alone.
            said = outcome_diagnostics(response, sent_values) if response.status_code == 400 else None
            raise RemoteError(
                f"the server refused the export request: HTTP {response.status_code}, "
                f"{outcome_summary(response)}" + (f": {said}" if said else ""),
                hint=_hint_for(response.status_code),
            )
        location = response.headers.get("Content-Location")
        if not location:
            raise RemoteError("the server accepted the export but sent no Content-Location status URL")
        return require_secure(urljoin(url, location), "the export status URL")

    def poll(self, status_url: str, on_progress: Callable[[str | None], None] | None = None) -> Manifest:
        """Poll until the manifest is ready, honouring Retry-After and a bounded backoff."""
        waits = PollWaits(self)
        while True:
            response = self.status(status_url)
            answer = self.read_status(response, status_url)
            if answer.kind == "done":
                assert answer.manifest is not None
                return answer.manifest
            if answer.kind == "running" and on_progress:
                on_progress(answer.progress)
            waits.sleep(answer, response)

    def status(self, url: str, files_need_token: bool | None = None) -> httpx.Response:
        """One GET of a status URL (or, with files_need_token, of a partial manifest's page)."""
        return self.request(
            "GET",
            url,
            {"Accept": "application/json"},
            retry_statuses=frozenset(),
            files_need_token=files_need_token,
        )

    def read_status(self, response: httpx.Response, url: str, page: bool = False) -> StatusAnswer:
        """What a status (or manifest page) answer means: done, still running, worth retrying; else raises.

        page: the URL is a partial manifest's `next` page, whose failure leaves the job to resume.
        """
        code = response.status_code
        asked = retry_after_seconds(response.headers.get("Retry-After"))
        if code == 200:
            return StatusAnswer("done", asked, parse_manifest(response.content, url))
        if code == 202:
            # With allowPartialManifests a running job's answer may carry the files ready so far.
            manifest = parse_manifest(response.content, url) if _has_manifest(response) else None
            return StatusAnswer(
                "running", asked, manifest, _progress_text(response.headers.get("X-Progress"))
            )
        if code == 429 or (code >= 500 and (outcome_is_transient(response) or not _has_outcome(response))):
            # The IG: a 5xx with an OperationOutcome means the job failed, unless its issues say
            # 'transient'; a 5xx without one comes from a proxy or gateway and is worth retrying.
            return StatusAnswer("retry", asked)
        if page:
            raise RemoteError(
                f"a page of the export's manifest could not be fetched: HTTP {code}, "
                f"{outcome_summary(response)}",
                hint="re-run the same command: it resumes from the page that failed",
            )
        if code in (404, 410):
            raise JobFailed(f"the export job is gone on the server (HTTP {code})")
        if code in (401, 403):
            # The client's credentials, not the job, are the problem: keep the job to resume.
            raise RemoteError(
                f"the server refused the status request: HTTP {code}, {outcome_summary(response)}",
                hint=_hint_for(code),
            )
        raise JobFailed(
            f"the export job failed: HTTP {code}, {outcome_summary(response)}", hint=_hint_for(code)
        )

    def manifest_page(self, url: str, requires_token: bool) -> Manifest:
        """A further page of a partial manifest (its `next` link); the token goes as it would for files."""
        response = self.request("GET", url, {"Accept": "application/json"}, files_need_token=requires_token)
        if response.status_code != 200:
            raise RemoteError(
                f"a page of the export's manifest could not be fetched: HTTP {response.status_code}, "
                f"{outcome_summary(response)}",
                hint="re-run the same command: it resumes from the page that failed",
            )
        return parse_manifest(response.content, url)

    def delete(self, status_url: str) -> bool:
        """Ask the server to drop the job's files (the IG's DELETE on the status URL); True if accepted."""
        try:
            response = self.request("DELETE", status_url, {"Accept": FHIR_JSON})
        except RemoteError:
            return False
        return response.status_code in (200, 202, 204, 404, 410)

    def download(
        self,
        url: str,
        target: Path,
        requires_token: bool,
        expected_count: int | None,
        on_bytes: Callable[[int], None] | None = None,
        expected_size: int | None = None,
    ) -> FileOutcome:
        """Fetch one file to target (via target.part, fsynced, renamed), retrying what can be retried."""
        refreshed = False
        for attempt in range(1, self.timing.attempts + 1):
            try:
                outcome = self._download_once(
                    url, target, requires_token, expected_count, expected_size, on_bytes
                )
                outcome.attempts = attempt
                return outcome
            except DownloadFailed as exc:
                if exc.token_generation is not None and not refreshed and self.auth is not None:
                    refreshed = True  # one new token, then the 401 stands
                    self.auth.refresh_after_401(self.http, self.server, exc.token_generation)
                    continue
                if not exc.retry or attempt == self.timing.attempts:
                    return FileOutcome("failed", reason=exc.reason, attempts=attempt, detail=exc.detail)
                self.sleep(exc.wait if exc.wait is not None else self.backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _download_once(
        self,
        url: str,
        target: Path,
        requires_token: bool,
        expected_count: int | None,
        expected_size: int | None,
        on_bytes: Callable[[int], None] | None,
    ) -> FileOutcome:
        part = target.with_name(target.name + ".part")
        meta = target.with_name(target.name + ".part.json")
        url_key = hashlib.sha256(url.encode()).hexdigest()  # a signed URL's query is a credential
        kept = _kept_part(part, meta, url_key)
        current = url
        send_token = requires_token
        for _hop in range(MAX_REDIRECTS + 1):
            require_secure(current, "an export file URL")
            headers = {"Accept": NDJSON}
            if kept:
                # Resume the kept bytes; If-Range makes the server send the whole file if it has changed.
                headers["Range"] = f"bytes={kept[0]}-"
                headers["If-Range"] = kept[1]
            token = self._token_for(current, True) if send_token else None
            if token:
                headers["Authorization"] = f"Bearer {token[0]}"
            self.requests += 1
            counted = 0
            try:
                with self.http.stream("GET", current, headers=headers) as response:
                    code = response.status_code
                    if code in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                        nxt = urljoin(current, response.headers["Location"])
                        # A token follows a redirect only within the same origin (signed storage URLs
                        # elsewhere carry their own authority).
                        send_token = send_token and same_origin(nxt, current)
                        current = nxt
                        continue
                    if code == 416 and kept:
                        _discard(part, meta)  # the kept bytes do not fit the file: start over
                        raise DownloadFailed("export_download_failed", "HTTP 416 on resume", True, 0.0)
                    append = False
                    if code == 206 and kept:
                        if _range_start(response.headers.get("Content-Range")) != kept[0]:
                            _discard(part, meta)
                            raise DownloadFailed(
                                "export_download_failed", "Content-Range mismatch", True, 0.0
                            )
                        append = True
                    elif code != 200:
                        failure = _failure_for(response)
                        if code == 401 and token:
                            failure.token_generation = token[1]
                        raise failure
                    digest = hashlib.sha256()
                    size = lines = 0
                    last = b"\n"
                    if append:
                        # The whole file's sha256 and line count: the kept bytes count as if fetched now.
                        with part.open("rb") as fh:
                            while chunk := fh.read(CHUNK):
                                digest.update(chunk)
                                size += len(chunk)
                                lines += chunk.count(b"\n")
                                last = chunk[-1:]
                    else:
                        _discard(part, meta)
                        validator = _validator(response.headers)
                        if validator:
                            write_durably(meta, orjson.dumps({"url": url_key, "validator": validator}))
                    with part.open("ab" if append else "wb") as fh:
                        # As the bytes arrive: a chunk size would hold back what came before a break.
                        for chunk in response.iter_bytes():
                            fh.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
                            lines += chunk.count(b"\n")
                            last = chunk[-1:]
                            if on_bytes:
                                on_bytes(len(chunk))
                                counted += len(chunk)
                        fh.flush()
                        os.fsync(fh.fileno())
            except httpx.TransportError as exc:
                # Includes a connection dropped mid-body and a body shorter than its Content-Length; the
                # bytes written so far stay in the .part file for a Range request on the next attempt.
                if on_bytes and counted:
                    on_bytes(-counted)
                raise DownloadFailed(
                    "export_download_failed", f"transfer broke off ({type(exc).__name__})", True
                ) from None
            if last != b"\n" and size:
                lines += 1
            # The manifest's count and fileSize are the server's own: a mismatch means a cut-off body.
            problem = None
            if expected_count is not None and lines != expected_count:
                problem = f"{lines} lines where the manifest says {expected_count}"
            elif expected_size is not None and size != expected_size:
                problem = f"{size} bytes where the manifest says {expected_size}"
            if problem:
                if on_bytes:
                    on_bytes(-counted)
                _discard(part, meta)  # a wrong whole is not a prefix to resume from
                raise DownloadFailed("export_file_truncated", problem, True)
            os.replace(part, target)
            meta.unlink(missing_ok=True)
            fsync_dir(target.parent)
            return FileOutcome("done", sha256=digest.hexdigest(), bytes=size, lines=lines)
        raise DownloadFailed("export_download_failed", "too many redirects", False)


def _validator(headers: httpx.Headers) -> str | None:
    """What If-Range can carry: a strong ETag, else Last-Modified (RFC 9110 §13.1.5); weak ETags cannot."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _kept_part(part: Path, meta: Path, url_key: str) -> tuple[int, str] | None:
    """(bytes kept, validator) when a .part file of this URL can be resumed, else None."""
    try:
        size = part.stat().st_size
        info = orjson.loads(meta.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None  # no record of which version of the file the bytes came from: never resume them
    if not size or not isinstance(info, dict) or info.get("url") != url_key:
        return None
    validator = info.get("validator")
    return (size, validator) if isinstance(validator, str) and validator else None


def _range_start(content_range: str | None) -> int | None:
    # "bytes 1000-1999/2000" or "bytes 1000-1999/*"
    if not content_range or not content_range.startswith("bytes "):
        return None
    first, sep, _rest = content_range[6:].partition("-")
    return int(first) if sep and first.strip().isdigit() else None


def _discard(part: Path, meta: Path) -> None:
    part.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)


class JobFailed(RemoteError):
    """The server says the job failed, expired or was deleted: it cannot be resumed, only started anew."""


def _failure_for(response: httpx.Response) -> DownloadFailed:
    code = response.status_code
    response.read()
    wait = retry_after_seconds(response.headers.get("Retry-After"))
    if code in RETRY_STATUSES:
        return DownloadFailed("export_download_failed", f"HTTP {code}", True, wait)
    if code == 401:
        return DownloadFailed("export_file_unauthorized", "HTTP 401", False)
    if code == 403:
        return DownloadFailed("export_file_forbidden", "HTTP 403", False)
    if code in (404, 410):
        return DownloadFailed("export_file_gone", f"HTTP {code}", False)
    return DownloadFailed("export_download_failed", f"HTTP {code}, {outcome_summary(response)}", False)


def _has_outcome(response: httpx.Response) -> bool:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"


def _has_manifest(response: httpx.Response) -> bool:
    if not response.content:
        return False
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and "output" in body and body.get("resourceType") is None


def _progress_text(value: str | None) -> str | None:
    # X-Progress is free text from the server; show a short printable slice of it, nothing more.
    if not value:
        return None
    text = "".join(ch for ch in value if ch.isprintable())[:40]
    return text or None


def _hint_for(code: int) -> str | None:
    return {
        400: "check --type, --type-filter and --since; POST, --patient-id, --include-associated-data and "
        "--partial-manifests are optional for servers",
        401: "the server wants a token: pass --client-id and --key",
        403: "the client's scopes do not allow this export",
        404: "check the server URL and group id",
        422: "the server rejected the parameters",
    }.get(code)
