"""HTTP to the target: bearer auth, bounded retries with backoff and jitter, coded failures (never values)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import tenacity

from pipelines.export.auth import BackendAuth
from pipelines.export.web import RemoteError, is_loopback, require_secure, retry_after_seconds

FHIR_JSON = "application/fhir+json"
AMBIGUOUS, NOT_SENT = 0, -1  # Transient.status for transport failures (else the HTTP status)


@dataclass(frozen=True)
class RetryPolicy:
    tries: int = 5
    initial: float = 0.5  # seconds; doubled per try, with jitter, capped at max_wait
    max_wait: float = 30.0
    timeout: float = 30.0


@dataclass
class Answer:
    status: int
    body: Any  # parsed JSON, or None
    headers: Mapping[str, str]  # case-insensitive (httpx.Headers): .get("location"), .get("etag")
    attempts: int
    issue_codes: list[str] = field(default_factory=list)


class Transient(Exception):
    """A 429, 5xx or transport failure worth another try."""

    def __init__(self, status: int, retry_after: float | None, answer: Answer | None) -> None:
        super().__init__(status)
        self.status, self.retry_after, self.answer = status, retry_after, answer


class Target:
    """One FHIR server: the base URL, its auth, and a pooled client sized to the send concurrency."""

    def __init__(
        self,
        base: str,
        auth: BackendAuth | None,
        *,
        no_auth: bool = False,
        concurrency: int = 4,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.base = require_secure(base.rstrip("/"), "the target server")
        if no_auth and not is_loopback(urlsplit(self.base).hostname):
            raise RemoteError("--no-auth is allowed only for a server on this machine (loopback)")
        if auth is None and not no_auth:
            raise RemoteError(
                "the target needs SMART Backend Services credentials", hint="--client-id and --key"
            )
        self.auth = auth
        self.policy = policy or RetryPolicy()
        self.client = httpx.Client(
            timeout=self.policy.timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            # Plain HTTP is allowed only to loopback (require_secure): no TLS, so no CA bundle to load.
            verify=urlsplit(self.base).scheme == "https",
        )
        self.attempts = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def _headers(self, extra: dict[str, str] | None) -> tuple[dict[str, str], int]:
        headers = {"Accept": FHIR_JSON}
        generation = 0
        if self.auth is not None:
            token, generation = self.auth.token(self.client, self.base)
            headers["Authorization"] = f"Bearer {token}"
        return {**headers, **(extra or {})}, generation

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        idempotent: bool = True,
    ) -> Answer:
        """The answer after retries; Transient is raised when the tries ran out, or at once when a request
        that is not idempotent (a plain create) may have reached the server: sending it again could
        create a second copy, so the caller looks for the first one instead."""

        def worth_retrying(exc: BaseException) -> bool:
            return isinstance(exc, Transient) and (idempotent or exc.status != AMBIGUOUS)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(worth_retrying),
            stop=tenacity.stop_after_attempt(self.policy.tries),
            wait=_wait(self.policy),
            reraise=True,
        )
        # A prepared body arrives as bytes (serialized once, when the plan was loaded).
        content = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        for attempt in retrying:
            with attempt:
                answer = self._once(method, path, content, headers)
                answer.attempts = attempt.retry_state.attempt_number
                return answer
        raise AssertionError("unreachable")  # tenacity re-raises the last Transient

    def _once(self, method: str, path: str, content: bytes | None, extra: dict[str, str] | None) -> Answer:
        headers, generation = self._headers(extra)
        if content is not None:
            headers["Content-Type"] = FHIR_JSON
        url = self.base + "/" + path.lstrip("/") if path else self.base
        with self._lock:
            self.attempts += 1
        try:
            response = self.client.request(method, url, content=content, headers=headers)
            if response.status_code == 401 and self.auth is not None:
                headers["Authorization"] = "Bearer " + self.auth.refresh_after_401(
                    self.client, self.base, generation
                )
                response = self.client.request(method, url, content=content, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise Transient(NOT_SENT, None, None) from None  # never reached the server: safe to retry
        except httpx.TransportError:
            # A timeout or a connection lost after the request went: the server may have acted on it.
            raise Transient(AMBIGUOUS, None, None) from None
        answer = _answer(response)
        if response.status_code == 429 or response.status_code >= 500:
            raise Transient(
                response.status_code, retry_after_seconds(response.headers.get("Retry-After")), answer
            )
        return answer


def _answer(response: httpx.Response) -> Answer:
    body = None
    if response.content:
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
    codes = []
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        codes = sorted(
            {str(i.get("code")) for i in body.get("issue") or [] if isinstance(i, dict) and i.get("code")}
        )
    return Answer(response.status_code, body, response.headers, 0, codes)


class _wait(tenacity.wait.wait_base):
    """Exponential backoff with full jitter, but never less than the server's Retry-After."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.jitter = tenacity.wait_random_exponential(multiplier=policy.initial, max=policy.max_wait)
        self.max_wait = policy.max_wait

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        wait = self.jitter(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            wait = max(wait, min(exc.retry_after, self.max_wait))
        return wait


def capability(target: Target) -> dict[str, Any]:
    """The server's CapabilityStatement; a clear RemoteError when it cannot be had."""
    try:
        answer = target.request("GET", "metadata")
    except Transient as exc:
        if exc.status in (AMBIGUOUS, NOT_SENT):
            raise RemoteError(
                "the target server cannot be reached", hint="check --server and the network"
            ) from None
        raise RemoteError(f"the target server answered HTTP {exc.status} to GET metadata") from None
    except httpx.HTTPError as exc:
        raise RemoteError(f"the target server cannot be reached ({type(exc).__name__})") from None
    if answer.status in (401, 403):
        raise RemoteError(f"the target server refused the credentials (HTTP {answer.status} to GET metadata)")
    if answer.status != 200 or not isinstance(answer.body, dict):
        raise RemoteError(f"the target server's metadata is not FHIR JSON (HTTP {answer.status})")
    if answer.body.get("resourceType") != "CapabilityStatement":
        raise RemoteError("the target server's metadata is not a CapabilityStatement")
    return answer.body
