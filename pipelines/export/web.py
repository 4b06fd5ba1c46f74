"""HTTP rules shared by the export client and its auth: HTTPS except on loopback, origins, server errors."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx
import orjson

from pipelines.common.errors import EhrliftError, ExitCode

USER_AGENT = "ehrlift-bulk-export"


class RemoteError(EhrliftError):
    """A FHIR server or token endpoint refused, failed or could not be reached."""

    exit_code = ExitCode.REMOTE


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_secure(url: str, what: str) -> str:
    """The URL, if HTTPS or plain HTTP to this machine: tokens and PHI never cross a network in clear."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return url
    raise RemoteError(
        f"{what} must use https (plain http is allowed only to 127.0.0.0/8, ::1 or localhost)",
        hint=f"got a {parts.scheme or 'relative'} URL",
    )


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def same_origin(a: str, b: str) -> bool:
    return origin(a) == origin(b)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for: delta-seconds or an HTTP-date; None when absent or garbled."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def outcome_summary(response: httpx.Response) -> str:
    """An OperationOutcome body reduced to its coded parts (severity, code, details codes).

    Free text (diagnostics, details.text) is left out on purpose: servers echo patient ids, names and
    parameters into it, and this text reaches logs and terminals.
    """
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return "no OperationOutcome in the response"
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return "no OperationOutcome in the response"
    parts = []
    for issue in body.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        codes = [
            str(c.get("code"))
            for c in ((issue.get("details") or {}).get("coding") or [])
            if isinstance(c, dict) and c.get("code")
        ]
        text = f"{issue.get('severity', '?')}/{issue.get('code', '?')}"
        parts.append(text + (f" [{', '.join(codes)}]" if codes else ""))
    return "OperationOutcome " + ("; ".join(parts) if parts else "without issues")


def outcome_is_transient(response: httpx.Response) -> bool:
    """The IG lets a server mark a failed status request as worth retrying with issue.code 'transient'."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return False
    issues = [i for i in body.get("issue") or [] if isinstance(i, dict)]
    return bool(issues) and all(i.get("code") == "transient" for i in issues)
