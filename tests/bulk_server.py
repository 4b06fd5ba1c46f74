"""A FHIR Bulk Data Access server on loopback for tests, with an Authlib token endpoint and failure injection.

It follows the Bulk Data IG (v2): kick-off validation (Accept, Prefer, _outputFormat, _since, _type,
_typeFilter), 202 + Content-Location, status 202 with X-Progress and Retry-After, a 200 manifest
(output, error, deleted for _since, requiresAccessToken, transactionTime), optionally paged with `link`
next (partial manifests), file URLs with ETag/Last-Modified and Range/If-Range (206, 416), DELETE, and
4xx OperationOutcomes. SMART Backend Services tokens come from a real Authlib token endpoint that checks the
client's JWT assertion (RS384/ES384 signature, audience, expiry, jti replay). Every request is logged so
tests can assert what was (not) fetched. The server stops itself after `lifetime` seconds.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import orjson
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

PATIENT_COMPARTMENT = {"Patient", "Observation", "Condition", "Encounter", "Procedure", "Immunization"}
SYSTEM_SCOPES = {"system/*.read", "system/*.rs", "system/*.write", "system/*.cud"}  # write: back-load tests


def instant(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def outcome(code: str, diagnostics: str, severity: str = "error") -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


ASSOCIATED_DATA = {"LatestProvenanceResources", "RelevantProvenanceResources"}
# Each kick-off parameter of a POST body: its value[x] and whether it may repeat (the IG's cardinality).
POST_PARAMETERS = {
    "_outputFormat": ("valueString", False),
    "_since": ("valueInstant", False),
    "_type": ("valueString", True),
    "_typeFilter": ("valueString", True),
    "patient": ("valueReference", True),
    "includeAssociatedData": ("valueCode", True),
    "allowPartialManifests": ("valueBoolean", False),
}


def parse_parameters(content_type: str | None, body: bytes) -> tuple[dict[str, list[str]], list[str]] | str:
    """A POST kick-off's Parameters resource as query-like values plus its patient references, or the
    diagnostics of why it is refused."""
    if (content_type or "").split(";")[0].strip() not in ("application/fhir+json", "application/json"):
        return "Content-Type must be application/fhir+json"
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the request body is not JSON"
    if not isinstance(doc, dict) or doc.get("resourceType") != "Parameters":
        return "the request body must be a Parameters resource"
    entries = doc.get("parameter", [])
    if not isinstance(entries, list):
        return "Parameters.parameter must be an array"
    params: dict[str, list[str]] = {}
    patients: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            return f"Parameters.parameter[{i}] has no name"
        name = entry["name"]
        values = [k for k in entry if k.startswith("value") or k in ("resource", "part")]
        if name == "_elements":
            return "_elements is not supported"
        if name not in POST_PARAMETERS:
            return f"parameter {name} is not supported"
        kind, repeats = POST_PARAMETERS[name]
        if values != [kind]:
            return f"Parameters.parameter[{i}] ({name}) needs exactly one {kind}"
        if not repeats and name in params:
            return f"parameter {name} may appear only once"
        value = entry[kind]
        if kind == "valueReference":
            ref = value.get("reference") if isinstance(value, dict) else None
            if not isinstance(ref, str) or not ref.startswith("Patient/") or len(ref) <= len("Patient/"):
                return f"Parameters.parameter[{i}] (patient) must reference a Patient"
            patients.append(ref)
            continue
        if kind == "valueBoolean":
            if not isinstance(value, bool):
                return f"Parameters.parameter[{i}] ({name}) is not a boolean"
            value = "true" if value else "false"
        elif not isinstance(value, str) or not value:
            return f"Parameters.parameter[{i}] ({name}) is not a non-empty string"
        params.setdefault(name, []).append(value)
    return params, patients


def generated_resources(patients: int, updated: datetime) -> dict[str, list[dict]]:
    """Small synthetic data (no corpus needed): patients, their encounters, observations and conditions."""
    stamp = {"lastUpdated": instant(updated)}
    out: dict[str, list[dict]] = {"Patient": [], "Encounter": [], "Observation": [], "Condition": []}
    for i in range(1, patients + 1):
        pid = f"p{i}"
        out["Patient"].append({"resourceType": "Patient", "id": pid, "meta": stamp, "gender": "female"})
        out["Encounter"].append(
            {
                "resourceType": "Encounter",
                "id": f"e{i}",
                "meta": stamp,
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": f"Patient/{pid}"},
            }
        )
        for j, status in enumerate(("final", "preliminary"), 1):
            out["Observation"].append(
                {
                    "resourceType": "Observation",
                    "id": f"o{i}-{j}",
                    "meta": stamp,
                    "status": status,
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": f"Patient/{pid}"},
                    "valueQuantity": {"value": 60 + i, "unit": "/min", "system": "http://unitsofmeasure.org"},
                }
            )
        out["Condition"].append(
            {
                "resourceType": "Condition",
                "id": f"c{i}",
                "meta": stamp,
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                "subject": {"reference": f"Patient/{pid}"},
            }
        )
    return out


def corpus_resources(folder: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*.ndjson")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                obj = orjson.loads(line)
                if isinstance(obj, dict) and "resourceType" in obj and "exportId" not in obj:
                    out.setdefault(obj["resourceType"], []).append(obj)
    return out


@dataclass
class Faults:
    """Failures to inject; each count is how many times the fault happens before requests succeed."""

    kickoff_429: int = 0
    status_429: int = 0
    status_503: int = 0
    status_transient_500: int = 0
    status_fatal: bool = False  # the job fails: 500 with a fatal OperationOutcome
    polls_before_ready: int = 1  # status answers 202 this many times (a slow job)
    retry_after: str | None = "seconds"  # seconds | date | None
    file_429: Counter[str] = field(default_factory=Counter)  # by file name
    file_503: Counter[str] = field(default_factory=Counter)
    file_truncate: Counter[str] = field(default_factory=Counter)  # Content-Length promised, body cut
    file_drop: Counter[str] = field(default_factory=Counter)  # chunked body, connection dropped mid-file
    file_short: Counter[str] = field(default_factory=Counter)  # no length, lines missing (count differs)
    file_gone: set[str] = field(default_factory=set)  # 404 for ever
    expire_token: int = 0  # this many file requests find their (valid) token expired, as after a long job
    error_file: bool = True  # the manifest has an error file with an OperationOutcome
    manifest_v3: bool = False  # Bulk Data 3.0 manifest: `outcome` for `error`, fileSize instead of count
    ignore_range: bool = False  # answer every file request with 200 and the whole file (no Range support)
    file_version: Counter[str] = field(default_factory=Counter)  # bump to change a file's ETag (new content)
    page_size: int | None = None  # files per manifest page: a partial manifest with `next` links
    page_fatal: Counter[int] = field(default_factory=Counter)  # manifest page number -> times it answers 500


@dataclass
class Job:
    id: str
    request: str
    transaction_time: datetime
    types: list[str]
    since: datetime | None
    resources: dict[str, list[dict]]
    deleted: list[tuple[str, str]]
    polls: int = 0
    deleted_by_client: bool = False
    method: str = "GET"
    patients: list[str] | None = None  # the POST `patient` list the output was limited to
    include_associated: list[str] = field(default_factory=list)
    partial: bool = False  # allowPartialManifests asked for and supported: files released over polls


class _Client(ClientMixin):
    def __init__(self, client_id: str, jwks: dict) -> None:
        self.client_id = client_id
        self.jwks = jwks

    def get_client_id(self) -> str:
        return self.client_id

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in SYSTEM_SCOPES)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == JWTBearerClientAssertion.CLIENT_AUTH_METHOD

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class _Assertion(JWTBearerClientAssertion):
    """Authlib's RFC 7523 client assertion check, with SMART's algorithms and this server's audience."""

    def __init__(self, server: BulkServer) -> None:
        super().__init__(validate_jti=True, leeway=0)
        self.server = server

    def get_audiences(self) -> list[str]:
        return [self.server.token_url]

    def validate_jti(self, claims: Any, jti: str) -> bool:
        key = (claims["sub"], jti)
        with self.server.lock:
            if key in self.server.seen_jti:
                return False
            self.server.seen_jti.add(key)
            return True

    def resolve_client_public_key(self, client: _Client) -> KeySet:
        return KeySet.import_key_set(client.jwks)

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        from authlib.oauth2.rfc6749 import InvalidClientError

        try:
            token = jose_jwt.decode(assertion, resolve_key, algorithms=["RS384", "ES384"])
        except JoseError as exc:
            raise InvalidClientError(description=exc.description) from exc
        if token.claims.get("exp", 0) - token.claims.get("iat", 0) > 300:
            raise InvalidClientError(description="assertion lifetime over five minutes")
        self.verify_claims(token.claims)
        return token.claims


class _Grant(ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = [JWTBearerClientAssertion.CLIENT_AUTH_METHOD]  # noqa: RUF012 (Authlib API)


class _FormRequest(OAuth2Request):
    def __init__(self, uri: str, headers: dict, form: dict[str, str]) -> None:
        super().__init__("POST", uri, headers=headers)
        self._form = form
        self.payload = BasicOAuth2Payload(form)

    @property
    def form(self) -> dict[str, str]:
        return self._form


class _TokenServer(AuthorizationServer):
    def __init__(self, bulk: BulkServer) -> None:
        super().__init__(scopes_supported=sorted(SYSTEM_SCOPES))
        self.bulk = bulk
        self.register_grant(_Grant)
        self.register_client_auth_method(JWTBearerClientAssertion.CLIENT_AUTH_METHOD, _Assertion(bulk))
        self.register_token_generator("default", self._generate)

    def query_client(self, client_id: str) -> _Client | None:
        jwks = self.bulk.clients.get(client_id)
        return _Client(client_id, jwks) if jwks else None

    def save_token(self, token: dict, request: Any) -> None:
        with self.bulk.lock:
            self.bulk.tokens[token["access_token"]] = time.time() + token["expires_in"]

    def _generate(
        self, grant_type, client, user=None, scope=None, expires_in=None, include_refresh_token=True
    ):
        return {
            "access_token": secrets.token_urlsafe(24),
            "token_type": "bearer",
            "expires_in": self.bulk.token_lifetime,
            "scope": client.get_allowed_scope(scope),
        }

    def create_oauth2_request(self, request: _FormRequest) -> _FormRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, Any]:
        return status, body, headers

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None


class BulkServer:
    """Start with `with BulkServer(...) as server:`; `server.base` is the FHIR base URL."""

    def __init__(
        self,
        resources: dict[str, list[dict]],
        *,
        groups: dict[str, set[str]] | None = None,
        require_auth: bool = False,
        requires_access_token: bool | None = None,
        partial_release: int | None = None,
        partial_delay: int = 0,
        token_lifetime: int = 300,
        lifetime: float = 120.0,
        faults: Faults | None = None,
        fhir_version: str | None = "4.0.1",
        metadata_status: int = 200,
    ) -> None:
        self.resources = resources
        # GET [base]/metadata: a CapabilityStatement (DSTU2: Conformance) naming fhir_version (None: no
        # fhirVersion element), or an OperationOutcome with metadata_status when that is not 200.
        self.fhir_version = fhir_version
        self.metadata_status = metadata_status
        self.groups = groups or {}
        self.require_auth = require_auth
        self.requires_access_token = require_auth if requires_access_token is None else requires_access_token
        self.token_lifetime = token_lifetime
        # allowPartialManifests: None ignores the parameter; else a job asking for it releases this many
        # files per status (or page) request, after partial_delay requests that release nothing.
        self.partial_release = partial_release
        self.partial_delay = partial_delay
        self.kickoff_bodies: list[dict] = []
        self.lifetime = lifetime
        self.faults = faults or Faults()
        self.lock = threading.Lock()
        self.served: list[tuple[str, int, int, int]] = []  # file name, status, first byte, bytes sent
        self.jobs: dict[str, Job] = {}
        self.log: list[tuple[str, str, int, bool]] = []  # (method, path, status, sent a token)
        self.clients: dict[str, dict] = {}  # client_id -> public JWKS
        self.tokens: dict[str, float] = {}
        self.seen_jti: set[tuple[str, str]] = set()
        self.deleted_ids: list[tuple[str, str, datetime]] = []
        self.token_errors: list[str] = []
        self.oauth = _TokenServer(self)
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> BulkServer:
        handler = type("Handler", (_Handler,), {"bulk": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.base = self.origin + "/fhir"
        self.token_url = self.origin + "/auth/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        # Stops by itself: a hung test cannot leave a listening socket behind.
        self._timer = threading.Timer(self.lifetime, self._httpd.shutdown)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def register_client(self, client_id: str, public_jwks: dict) -> None:
        self.clients[client_id] = public_jwks

    def touch(self, rtype: str, rid: str, when: datetime, **changes: Any) -> None:
        """Change (or add) a resource, as a later edit on the source system would."""
        items = self.resources.setdefault(rtype, [])
        for r in items:
            if r.get("id") == rid:
                r.update(changes)
                r["meta"] = {"lastUpdated": instant(when)}
                return
        items.append({"resourceType": rtype, "id": rid, "meta": {"lastUpdated": instant(when)}, **changes})

    def delete_resource(self, rtype: str, rid: str, when: datetime) -> None:
        self.resources[rtype] = [r for r in self.resources.get(rtype, []) if r.get("id") != rid]
        self.deleted_ids.append((rtype, rid, when))

    def requests(self, method: str | None = None, prefix: str = "") -> list[str]:
        with self.lock:
            return [
                p for m, p, _s, _a in self.log if (method is None or m == method) and p.startswith(prefix)
            ]

    def kickoffs(self, method: str | None = None) -> list[str]:
        """The paths of $export requests (a client also reads /metadata and the SMART configuration)."""
        return [p for p in self.requests(method, "/fhir/") if p.endswith("/$export")]

    def with_token(self, prefix: str) -> list[bool]:
        with self.lock:
            return [a for _m, p, _s, a in self.log if p.startswith(prefix)]

    # -- bulk data ---------------------------------------------------------------------------------

    def metadata(self, h: _Handler) -> None:
        if h.headers.get("Accept") != "application/fhir+json":
            return h.outcome(406, "not-supported", "Accept must be application/fhir+json")
        if self.metadata_status != 200:
            return h.outcome(self.metadata_status, "forbidden", "metadata is not available")
        kind = "Conformance" if (self.fhir_version or "").startswith("1.") else "CapabilityStatement"
        statement: dict[str, Any] = {"resourceType": kind, "status": "active", "kind": "instance"}
        if self.fhir_version is not None:
            statement["fhirVersion"] = self.fhir_version
        statement["format"] = ["application/fhir+json"]
        return h.json(200, statement)

    def kickoff(self, h: _Handler, path: str, query: str, body: bytes | None = None) -> None:
        """GET with query parameters, or POST of a FHIR Parameters resource (Bulk Data 2.0+)."""
        if h.headers.get("Accept") != "application/fhir+json":
            return h.outcome(400, "invalid", "Accept must be application/fhir+json")
        if h.headers.get("Prefer") != "respond-async":
            return h.outcome(400, "invalid", "Prefer: respond-async is required")
        if body is None:
            params = parse_qs(query, keep_blank_values=True)
            if "patient" in params:
                return h.outcome(400, "invalid", "patient is only allowed in a POST kick-off")
            requested: list[str] = []
        else:
            parsed = parse_parameters(h.headers.get("Content-Type"), body)
            if isinstance(parsed, str):
                return h.outcome(400, "invalid" if "not supported" not in parsed else "not-supported", parsed)
            params, requested = parsed
            with self.lock:
                self.kickoff_bodies.append(orjson.loads(body))
        if requested and path == "/fhir/$export":
            return h.outcome(400, "invalid", "patient does not apply to a system-level export")
        associated = [c for v in params.get("includeAssociatedData", []) for c in v.split(",") if c]
        if any(c not in ASSOCIATED_DATA for c in associated):
            return h.outcome(400, "not-supported", "unsupported includeAssociatedData value")
        partial = params.get("allowPartialManifests", ["false"])[0]
        if partial not in ("true", "false"):
            return h.outcome(400, "invalid", "allowPartialManifests must be true or false")
        fmt = params.get("_outputFormat", ["application/fhir+ndjson"])
        if fmt[0] not in ("application/fhir+ndjson", "application/ndjson", "ndjson"):
            return h.outcome(400, "not-supported", "unsupported _outputFormat")
        since = None
        if "_since" in params:
            try:
                since = parse_instant(params["_since"][0])
            except ValueError:
                return h.outcome(400, "invalid", "_since is not an instant")
            if since.tzinfo is None:
                return h.outcome(400, "invalid", "_since needs a time zone")
        types = [t for v in params.get("_type", []) for t in v.split(",") if t]
        known = set(self.resources) | PATIENT_COMPARTMENT
        if any(t not in known for t in types):
            return h.outcome(400, "not-supported", "unknown _type")
        filters: dict[str, list[tuple[str, str]]] = {}
        for value in params.get("_typeFilter", []):
            rtype, sep, q = value.partition("?")
            pairs = parse_qsl(q)
            if not sep or not pairs or any(k not in ("status", "gender") for k, _ in pairs):
                return h.outcome(400, "not-supported", "unsupported _typeFilter")
            filters.setdefault(rtype, []).extend(pairs)
        if path == "/fhir/$export":
            scope_types = set(self.resources)
            patients = None
        elif path == "/fhir/Patient/$export":
            scope_types = PATIENT_COMPARTMENT
            patients = None
        else:
            group = path.removeprefix("/fhir/Group/").removesuffix("/$export")
            if group not in self.groups:
                return h.outcome(404, "not-found", "no such Group")
            scope_types = PATIENT_COMPARTMENT
            patients = self.groups[group]
        if requested:
            known = {r.get("id") for r in self.resources.get("Patient", [])} if patients is None else patients
            for ref in requested:
                if ref.removeprefix("Patient/") not in known:
                    # As servers do, the diagnostics name the reference: the client must not show it.
                    where = "on this server" if patients is None else "a member of the group"
                    return h.outcome(400, "invalid", f"{ref} is not {where}")
            patients = {ref.removeprefix("Patient/") for ref in requested}
        now = datetime.now(UTC)
        selected: dict[str, list[dict]] = {}
        for rtype, items in sorted(self.resources.items()):
            if rtype not in scope_types or (types and rtype not in types):
                continue
            chosen = [
                r
                for r in items
                if (since is None or parse_instant(r["meta"]["lastUpdated"]) > since)
                and (patients is None or _patient_of(r) in patients)
                and all(str(r.get(k)) == v for k, v in filters.get(rtype, []))
            ]
            if chosen:
                selected[rtype] = chosen
        deleted = (
            [(t, i) for t, i, when in self.deleted_ids if when > since and (not types or t in types)]
            if since
            else []
        )
        job = Job(secrets.token_hex(6), h.full_url(), now, types, since, selected, deleted)
        job.method = "POST" if body is not None else "GET"
        job.patients = sorted(patients) if requested else None
        job.include_associated = associated
        job.partial = partial == "true" and self.partial_release is not None
        with self.lock:
            self.jobs[job.id] = job
        h.send_response(202)
        h.send_header("Content-Location", f"{self.origin}/jobs/{job.id}")
        h.send_header("Content-Length", "0")
        h.end_headers()
        h.status = 202

    def status(self, h: _Handler, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.deleted_by_client:
            return h.outcome(404, "not-found", "no such job")
        f = self.faults
        with self.lock:
            if f.status_503:
                f.status_503 -= 1  # a gateway's answer: no OperationOutcome
                h.status = 503
                h.send_response(503)
                h.send_header("Retry-After", "0")
                h.send_header("Content-Type", "text/html")
                h.send_header("Content-Length", "13")
                h.end_headers()
                h.wfile.write(b"<html></html>")
                return None
            for name in ("status_429", "status_transient_500"):
                if getattr(f, name):
                    setattr(f, name, getattr(f, name) - 1)
                    code = 429 if name == "status_429" else 500
                    issue = "transient" if name == "status_transient_500" else "throttled"
                    return h.outcome(code, issue, "try again later", retry_after="0")
            if f.status_fatal:
                return h.outcome(500, "exception", "the export failed on the server")
            job.polls += 1
            ready = job.polls > f.polls_before_ready
        if job.partial:
            return self.partial_answer(h, job, 1)
        if not ready:
            h.send_response(202)
            h.send_header("X-Progress", f"{100 * job.polls // (f.polls_before_ready + 1)}% done")
            if f.retry_after == "seconds":
                h.send_header("Retry-After", "1")
            elif f.retry_after == "date":
                h.send_header("Retry-After", format_datetime(datetime.now(UTC), usegmt=True))
            h.send_header("Content-Length", "0")
            h.end_headers()
            h.status = 202
            return None
        return h.json(200, self.page(job, self.manifest(job), 1))

    def manifest(self, job: Job) -> dict[str, Any]:
        """The whole completion manifest of a finished job."""
        f = self.faults
        errors = "outcome" if f.manifest_v3 else "error"
        manifest: dict[str, Any] = {
            "transactionTime": instant(job.transaction_time),
            "request": job.request,
            "requiresAccessToken": self.requires_access_token,
            "output": [
                {"type": t, "url": f"{self.origin}/files/{job.id}/{t}.ndjson"}
                | (
                    {"fileSize": len(self.file_body(job, f"{t}.ndjson") or b"")}
                    if f.manifest_v3
                    else {"count": len(items)}
                )
                for t, items in job.resources.items()
            ],
            errors: [],
        }
        if f.error_file:
            manifest[errors].append(
                {"type": "OperationOutcome", "url": f"{self.origin}/files/{job.id}/errors.ndjson"}
            )
        if job.since is not None:
            manifest["deleted"] = (
                [{"type": "Bundle", "url": f"{self.origin}/files/{job.id}/deleted.ndjson"}]
                if job.deleted
                else []
            )
        return manifest

    def page(self, job: Job, manifest: dict[str, Any], number: int) -> dict[str, Any]:
        """Page `number` of a partial manifest (Bulk Data 2.0/3.0 `link` next) when page_size is set."""
        size = self.faults.page_size
        if not size:
            return manifest
        kinds = [k for k in ("output", "error", "outcome", "deleted") if k in manifest]
        flat = [(k, e) for k in kinds for e in manifest[k]]
        chunk = flat[(number - 1) * size : number * size]
        out = {k: v for k, v in manifest.items() if k not in kinds} | {k: [] for k in kinds}
        for kind, entry in chunk:
            out[kind].append(entry)
        if number * size < len(flat):
            out["link"] = [{"relation": "next", "url": f"{self.origin}/jobs/{job.id}/page/{number + 1}"}]
        return out

    def released(self, job: Job) -> int:
        """How many of a partial job's output and deleted files are ready (its requests so far)."""
        flat = self.manifest(job)
        total = len(flat["output"]) + len(flat.get("deleted", []))
        steps = max(0, job.polls - self.partial_delay)
        return min(total, steps * (self.partial_release or 1))

    def partial_answer(self, h: _Handler, job: Job, number: int) -> None:
        """The IG's partial manifests: page `number` lists `partial_release` files; a page appears once
        its files are ready and never changes after, except for gaining its `next` link; each page
        repeats the error array. 202 while files remain (or the job is slow), then 200."""
        size = self.partial_release or 1
        whole = self.manifest(job)
        errors = "outcome" if self.faults.manifest_v3 else "error"
        flat = [("output", e) for e in whole["output"]] + [("deleted", e) for e in whole.get("deleted", [])]
        released = self.released(job)
        running = released < len(flat) or job.polls <= self.faults.polls_before_ready
        pages = max(1, -(-released // size)) if released or not running else 0
        code = 202 if running else 200
        if number > pages:
            if number == 1:  # nothing ready yet: an in-progress answer without a manifest
                h.send_response(202)
                h.send_header("X-Progress", "preparing")
                h.send_header("Retry-After", "1")
                h.send_header("Content-Length", "0")
                h.end_headers()
                h.status = 202
                return None
            return h.outcome(404, "not-found", "no such manifest page")
        out = {k: v for k, v in whole.items() if k not in ("output", "deleted")}
        out["output"] = []
        if "deleted" in whole:
            out["deleted"] = []
        out[errors] = whole[errors]
        for kind, entry in flat[(number - 1) * size : min(number * size, released)]:
            out[kind].append(entry)
        if number < pages:
            out["link"] = [{"relation": "next", "url": f"{self.origin}/jobs/{job.id}/page/{number + 1}"}]
        data = orjson.dumps(out)
        h.status = code
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        if running:
            h.send_header("X-Progress", f"{released} of {len(flat)} files ready")
            h.send_header("Retry-After", "1")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        return None

    def serve_page(self, h: _Handler, job_id: str, number: int) -> None:
        job = self.jobs.get(job_id)
        if self.requires_access_token and not h.authorized(files=True):
            return None
        if job is not None and job.partial and not job.deleted_by_client:
            with self.lock:
                job.polls += 1  # a page request is a status request too: the job moves on
            return self.partial_answer(h, job, number)
        if job is None or job.deleted_by_client or job.polls <= self.faults.polls_before_ready:
            return h.outcome(404, "not-found", "no such manifest page")
        with self.lock:
            if self.faults.page_fatal[number]:
                self.faults.page_fatal[number] -= 1
                return h.outcome(500, "exception", "the manifest page failed")
        return h.json(200, self.page(job, self.manifest(job), number))

    def file_body(self, job: Job, name: str) -> bytes | None:
        if name == "errors.ndjson":
            return orjson.dumps(outcome("processing", "Patient/p2 has an unreadable note", "warning")) + b"\n"
        if name == "deleted.ndjson":
            bundle = {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"request": {"method": "DELETE", "url": f"{t}/{i}"}} for t, i in job.deleted],
            }
            return orjson.dumps(bundle) + b"\n"
        rtype = name.removesuffix(".ndjson")
        if rtype not in job.resources:
            return None
        return b"".join(orjson.dumps(r) + b"\n" for r in job.resources[rtype])

    def serve_file(self, h: _Handler, job_id: str, name: str) -> None:
        job = self.jobs.get(job_id)
        if self.requires_access_token and not h.authorized(files=True):
            return None
        if job is None or job.deleted_by_client or name in self.faults.file_gone:
            return h.outcome(404, "not-found", "no such file")
        body = self.file_body(job, name)
        if body is None:
            return h.outcome(404, "not-found", "no such file")
        f = self.faults
        with self.lock:
            fault = next(
                (
                    k
                    for k in ("file_429", "file_503", "file_truncate", "file_drop", "file_short")
                    if getattr(f, k)[name]
                ),
                None,
            )
            if fault:
                getattr(f, fault)[name] -= 1
        if fault in ("file_429", "file_503"):
            return h.outcome(429 if fault == "file_429" else 503, "throttled", "busy", retry_after="0")
        etag = f'"{name}-{f.file_version[name]}-{len(body)}"'
        modified = format_datetime(job.transaction_time.replace(microsecond=0), usegmt=True)
        start, code = self.range_start(h, etag, modified, len(body))
        if code == 416:
            h.status = 416
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(body)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        total = len(body)
        body = body[start:]
        h.status = code
        h.send_response(code)
        h.send_header("Content-Type", "application/fhir+ndjson")
        h.send_header("ETag", etag)
        h.send_header("Last-Modified", modified)
        if not f.ignore_range:
            h.send_header("Accept-Ranges", "bytes")
        if code == 206:
            h.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        if fault == "file_drop":
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            half = body[: len(body) // 2]
            self.record_served(name, code, start, len(half))
            h.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return None
        if fault == "file_truncate":
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            self.record_served(name, code, start, len(body) // 2)
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return None
        if fault == "file_short":
            lines = body.splitlines(keepends=True)
            body = b"".join(lines[: max(0, len(lines) - 1)])
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        self.record_served(name, code, start, len(body))
        h.wfile.write(body)
        return None

    def range_start(self, h: _Handler, etag: str, modified: str, size: int) -> tuple[int, int]:
        """(first byte, status) for a GET: RFC 9110 Range `bytes=N-` / `bytes=N-M`, honoured when If-Range
        (if sent) matches the strong ETag or the Last-Modified date; else the whole file with 200."""
        wanted = h.headers.get("Range")
        if self.faults.ignore_range or not wanted or not wanted.startswith("bytes="):
            return 0, 200
        condition = h.headers.get("If-Range")
        if condition is not None and condition not in (etag, modified):
            return 0, 200  # the file changed since the client's copy: send it all
        first, sep, _last = wanted.removeprefix("bytes=").partition("-")
        if not sep or not first.isdigit() or "," in wanted:
            return 0, 200  # suffix and multi-part ranges are not served: the whole file is a valid answer
        if int(first) >= size:
            return 0, 416
        return int(first), 206

    def record_served(self, name: str, status: int, start: int, count: int) -> None:
        with self.lock:
            self.served.append((name, status, start, count))


def _patient_of(resource: dict) -> str | None:
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
    return ref.removeprefix("Patient/") if ref.startswith("Patient/") else None


class _Handler(BaseHTTPRequestHandler):
    bulk: BulkServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
        return None

    def full_url(self) -> str:
        return self.bulk.origin + self.path

    def _record(self, method: str) -> None:
        self.status = 0
        try:
            self._route(method)
        finally:
            with self.bulk.lock:
                had_token = self.headers.get("Authorization", "").startswith("Bearer ")
                self.bulk.log.append((method, urlsplit(self.path).path, self.status, had_token))

    def do_GET(self) -> None:
        self._record("GET")

    def do_POST(self) -> None:
        self._record("POST")

    def do_DELETE(self) -> None:
        self._record("DELETE")

    def json(self, status: int, body: Any, retry_after: str | None = None) -> None:
        data = orjson.dumps(body)
        self.status = status
        self.send_response(status)
        self.send_header(
            "Content-Type", "application/fhir+json" if "resourceType" in body else "application/json"
        )
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def outcome(self, status: int, code: str, diagnostics: str, retry_after: str | None = None) -> None:
        self.json(status, outcome(code, diagnostics), retry_after)

    def authorized(self, files: bool = False) -> bool:
        """Checks the bearer token; answers 401 itself when it is missing, unknown or expired."""
        header = self.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        bulk = self.bulk
        with bulk.lock:
            expiry = bulk.tokens.get(token or "")
            ok = expiry is not None and expiry > time.time()
            if ok and files and bulk.faults.expire_token > 0:
                bulk.faults.expire_token -= 1
                bulk.tokens.pop(token or "", None)
                ok = False
        if not ok:
            self.outcome(401, "login", "a valid bearer token is required")
        return ok

    def _route(self, method: str) -> None:
        bulk = self.bulk
        parts = urlsplit(self.path)
        path = parts.path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if method == "GET" and path == "/fhir/.well-known/smart-configuration":
            return self.json(
                200,
                {
                    "token_endpoint": bulk.token_url,
                    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                    "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
                    "grant_types_supported": ["client_credentials"],
                    "scopes_supported": sorted(SYSTEM_SCOPES),
                    "capabilities": ["client-confidential-asymmetric"],
                },
            )
        if method == "POST" and path == "/auth/token":
            form = dict(parse_qsl(body.decode()))
            request = _FormRequest(bulk.token_url, dict(self.headers), form)
            status, payload, _headers = bulk.oauth.create_token_response(request)
            if status != 200:
                bulk.token_errors.append(payload.get("error_description") or payload.get("error", ""))
            return self.json(status, payload)
        # RFC 7662 introspection: lets another loopback test server check the tokens issued here.
        if method == "POST" and path == "/auth/introspect":
            token = dict(parse_qsl(body.decode())).get("token", "")
            with bulk.lock:
                expiry = bulk.tokens.get(token)
            return self.json(200, {"active": expiry is not None and expiry > time.time()})
        if path.startswith("/files/") and method == "GET":
            _, _, job_id, name = path.split("/", 3)
            return bulk.serve_file(self, job_id, name)
        if path.startswith("/jobs/") and "/page/" in path and method == "GET":
            # Manifest pages follow the file rule: a token only when requiresAccessToken says so.
            job_id, _, number = path.removeprefix("/jobs/").partition("/page/")
            if number.isdigit():
                return bulk.serve_page(self, job_id, int(number))
            return self.outcome(404, "not-found", "unknown endpoint")
        if bulk.require_auth and not self.authorized():
            return None
        if method == "GET" and path == "/fhir/metadata":
            return bulk.metadata(self)
        if method in ("GET", "POST") and (
            path in ("/fhir/$export", "/fhir/Patient/$export")
            or (path.startswith("/fhir/Group/") and path.endswith("/$export"))
        ):
            with bulk.lock:
                throttled = bulk.faults.kickoff_429 > 0
                bulk.faults.kickoff_429 -= throttled
            if throttled:
                return self.outcome(429, "throttled", "too many requests", retry_after="0")
            return bulk.kickoff(self, path, parts.query, body if method == "POST" else None)
        if path.startswith("/jobs/"):
            job_id = path.removeprefix("/jobs/")
            if method == "GET":
                return bulk.status(self, job_id)
            if method == "DELETE":
                job = bulk.jobs.get(job_id)
                if job is None:
                    return self.outcome(404, "not-found", "no such job")
                job.deleted_by_client = True
                self.status = 202
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
        return self.outcome(404, "not-found", "unknown endpoint")
