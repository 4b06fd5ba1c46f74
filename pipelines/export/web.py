"""HTTP rules shared by the export client and its auth: HTTPS except on loopback, origins, server errors."""

from __future__ import annotations

import ipaddress
import re
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


# What a diagnostics text may echo that could identify someone: references (Patient/123), quoted values,
# dates, runs of digits (ids, MRNs) and e-mail addresses.
_REFERENCE = re.compile(r"\b([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}")
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'|`[^`]*`")
_DATE = re.compile(r"\d{4}-\d{2}(-\d{2})?(T[\d:.]+(Z|[+-]\d{2}:?\d{2})?)?|\d{1,2}/\d{1,2}/\d{2,4}")
_DIGITS = re.compile(r"\d{3,}")
_EMAIL = re.compile(r"[\w.+-]+@[\w.-]+")
DIAGNOSTICS_MAX = 200


def outcome_diagnostics(response: httpx.Response, sent_values: tuple[str, ...] = ()) -> str | None:
    """The diagnostics of an OperationOutcome refusing a request, with anything identifying blanked out.

    A refused kick-off says what was wrong with the request ("parameter[3] has no value"), which the
    operator needs to fix it; servers also echo patient ids and values into it, so references, quoted
    text, digit runs, e-mail addresses and the values the request itself sent are replaced by "…".
    """
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return None
    texts = []
    for issue in body.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
        if isinstance(text, str) and text.strip():
            texts.append(text)
    if not texts:
        return None
    said = " / ".join(texts)
    for value in sorted({v for v in sent_values if v}, key=len, reverse=True):
        said = said.replace(value, "…")
    said = _REFERENCE.sub(lambda m: f"{m.group(1)}/…", said)
    said = _QUOTED.sub("…", said)
    said = _EMAIL.sub("…", said)
    said = _DATE.sub("…", said)
    said = _DIGITS.sub("…", said)
    # Brackets become parentheses: terminals render messages with markup, and server text is untrusted.
    said = "".join(ch for ch in said if ch.isprintable()).replace("[", "(").replace("]", ")")
    return said[:DIAGNOSTICS_MAX] + ("…" if len(said) > DIAGNOSTICS_MAX else "")
