"""Requests for planned writes (one resource, or a transaction chunk) and what their answers say."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson

from pipelines.backload.checks import references, rewrite_references
from pipelines.backload.client import AMBIGUOUS, NOT_SENT, Answer, Target, Transient
from pipelines.backload.patch import operations_for
from pipelines.backload.profiles import TargetProfile

TAG_SYSTEM = "urn:ehrlift:backload"  # generic targets: an opaque tag makes every create conditional
_LOCATION = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([^/]+))?/?$")
CLOCK_SKEW = timedelta(minutes=5)
JSON_PATCH = "application/json-patch+json"
CHANGES = ("update", "patch")


@dataclass
class Item:
    seq: int
    resource_type: str
    warehouse_id: str
    step: str  # create, update
    text: bytes  # the body as the plan stored it
    content_sha256: str
    deps: frozenset[str]
    previous: dict[str, Any] | None = None  # a patch: the body sent before (references to warehouse ids)
    raw: bytes | None = None  # a plain create's body as sent, references still to warehouse ids (see fill)
    parsed: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.resource_type}/{self.warehouse_id}"

    @property
    def body(self) -> dict[str, Any]:
        """Parsed when first needed: a plain create sent as its stored bytes never is."""
        if self.parsed is None:
            self.parsed = orjson.loads(self.text)
        return self.parsed

    @body.setter
    def body(self, value: dict[str, Any]) -> None:
        self.parsed = value


@dataclass
class Outcome:
    item: Item
    state: str  # created, updated, resolved, failed, in_doubt (a create that may have reached the server)
    http_status: int | None
    issue_codes: list[str]
    attempts: int
    server_id: str | None = None
    version_id: str | None = None


def tag_value(target: str, key: str) -> str:
    return hashlib.sha256(f"{target}\0{key}".encode()).hexdigest()[:32]


def prepared(
    item: Item, profile: TargetProfile, resolve: Callable[[str], str], server_id: str | None
) -> dict:
    body = rewrite_references(item.body, resolve)
    body["resourceType"] = item.resource_type
    if item.step in CHANGES and server_id:
        body["id"] = server_id
    if profile.conditional_create and item.step == "create":
        meta = dict(body.get("meta") or {})
        meta["tag"] = [
            *meta.get("tag", []),
            {"system": TAG_SYSTEM, "code": tag_value(profile.name, item.key)},
        ]
        body["meta"] = meta
    return body


def _resolver(ids: dict[str, tuple[str, str | None]]) -> Callable[[str], str]:
    return lambda ref: f"{ref.split('/')[0]}/{ids[ref][0]}" if ref in ids else ref


def prepare_raw(
    item: Item,
    profile: TargetProfile,
    stored: bytes | None = None,
    found: list[tuple[str, str]] | None = None,
) -> None:
    """Serialize a plain create once: at send time only its references are replaced, in the bytes (orjson
    writes `"reference":"Type/id"` exactly so, and a quoted reference cannot be part of another). The plan's
    stored body text is those bytes already when every reference in it is relative."""
    if item.step != "create" or profile.conditional_create:
        return
    if (
        stored is not None
        and item.body.get("resourceType") == item.resource_type
        and "contained" not in item.body
    ):
        raw = stored
        found = references(item.body) if found is None else found
        if len(found) == sum(raw.count(b'"reference":"' + r.encode() + b'"') for r in {r for _p, r in found}):
            item.raw = raw
            return
    item.body = rewrite_references(item.body, lambda ref: ref)  # every reference in its relative form
    item.raw = orjson.dumps({**item.body, "resourceType": item.resource_type})


def fill(item: Item, ids: dict[str, tuple[str, str | None]]) -> bytes:
    raw = item.raw or b""
    for ref in item.deps:
        if ref in ids:
            rtype = ref.split("/", 1)[0]
            raw = raw.replace(
                b'"reference":"' + ref.encode() + b'"', f'"reference":"{rtype}/{ids[ref][0]}"'.encode()
            )
    return raw


def send_one(
    target: Target, profile: TargetProfile, item: Item, ids: dict[str, tuple[str, str | None]]
) -> Outcome:
    """POST (create), PUT (update) or PATCH one resource, references rewritten to server ids."""
    server_id, version = ids.get(item.key, (None, None))
    if item.step in CHANGES and server_id:
        return send_change(target, profile, item, ids, server_id, version)
    body: Any = (
        fill(item, ids) if item.raw is not None else prepared(item, profile, _resolver(ids), server_id)
    )
    headers = None
    if profile.conditional_create and item.step == "create":
        headers = {"If-None-Exist": f"_tag={TAG_SYSTEM}|{tag_value(profile.name, item.key)}"}
    try:
        answer = target.request("POST", item.resource_type, body, headers, idempotent=headers is not None)
    except Transient as exc:
        if exc.status == AMBIGUOUS and item.step == "create":
            # The server may have created it: a later run finds it by search before writing again.
            return Outcome(item, "in_doubt", None, ["timeout"], 0)
        return _exhausted(item, exc)
    return _outcome(item, answer.status, answer, answer.headers.get("location"), answer.body)


def send_change(
    target: Target,
    profile: TargetProfile,
    item: Item,
    ids: dict[str, tuple[str, str | None]],
    server_id: str,
    version: str | None,
) -> Outcome:
    """PUT or JSON Patch with If-Match: the version last recorded, then after each 412 (someone changed the
    resource on the server since) the version re-read, and for a patch the operations taken again against
    the server's current copy; after conflict_retries re-reads the write fails as a version conflict."""
    path = f"{item.resource_type}/{server_id}"
    body = prepared(item, profile, _resolver(ids), server_id)
    rule = profile.rule(item.resource_type)
    attempts = 0
    try:
        for _ in range(profile.conflict_retries + 1):
            current: dict[str, Any] | None = None
            if item.step == "patch" or version is None:  # a patch is located on the server's current copy
                read = target.request("GET", path)
                attempts += read.attempts
                if read.status != 200 or not isinstance(read.body, dict):
                    return _outcome(item, read.status if read.status >= 300 else 502, read, None, None)
                current = read.body
                version = version or _version(read)
            match = {"If-Match": f'W/"{version}"'} if version else {}
            if item.step == "patch":
                assert rule is not None and rule.patch is not None and current is not None
                old = rewrite_references(item.previous or {}, _resolver(ids))
                ops = operations_for(old, body, current, rule.patch)
                if not ops:  # the server already holds the change
                    return Outcome(item, "updated", 200, [], attempts, server_id, _version_of(current))
                answer = target.request("PATCH", path, ops, {**match, "Content-Type": JSON_PATCH})
            else:
                answer = target.request("PUT", path, body, match)
            attempts += answer.attempts
            if answer.status != 412:
                got = _outcome(item, answer.status, answer, None, answer.body, server_id)
                got.attempts = attempts
                return got
            version = None  # re-read
    except Transient as exc:
        return _exhausted(item, exc)
    return Outcome(item, "failed", 412, ["version-conflict"], attempts)


def _version_of(resource: dict[str, Any]) -> str | None:
    return (resource.get("meta") or {}).get("versionId")


def _version(answer: Answer) -> str | None:
    body = answer.body if isinstance(answer.body, dict) else {}
    return _version_of(body) or answer.headers.get("etag", "").removeprefix("W/").strip('"') or None


def send_chunk(
    target: Target, profile: TargetProfile, items: list[Item], ids: dict[str, tuple[str, str | None]]
) -> list[Outcome]:
    """One transaction Bundle; references inside the chunk go as urn:uuid, the rest as server ids."""
    urns = {i.key: f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, profile.name + '/' + i.key)}" for i in items}

    def resolve(ref: str) -> str:
        return urns[ref] if ref in urns else f"{ref.split('/')[0]}/{ids[ref][0]}"

    entries = []
    for i in items:
        server_id = ids.get(i.key, (None, None))[0]
        body = prepared(i, profile, resolve, server_id)
        if i.step in CHANGES and server_id:
            request = {"method": "PUT", "url": f"{i.resource_type}/{server_id}"}
            version = ids.get(i.key, (None, None))[1]
            if version:
                request["ifMatch"] = f'W/"{version}"'  # a 412 fails the chunk: each is then sent alone
        else:
            request = {
                "method": "POST",
                "url": i.resource_type,
                "ifNoneExist": f"_tag={TAG_SYSTEM}|{tag_value(profile.name, i.key)}",
            }
        entries.append({"fullUrl": urns[i.key], "resource": body, "request": request})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    try:
        answer = target.request("POST", "", bundle)
    except Transient as exc:
        return [_exhausted(i, exc) for i in items]
    got = answer.body.get("entry") if isinstance(answer.body, dict) else None
    if answer.status >= 300 or not isinstance(got, list) or len(got) != len(items):
        if (400 <= answer.status < 500 and len(items) > 1) or answer.status == 412:
            # One refused resource fails the whole transaction: send each alone to learn which (and a
            # version conflict is resolved per resource, by re-reading it).
            return _one_by_one(target, profile, items, ids)
        return [
            _outcome(i, answer.status if answer.status >= 300 else 502, answer, None, None) for i in items
        ]
    out = []
    for i, e in zip(items, got, strict=True):
        response = e.get("response") or {} if isinstance(e, dict) else {}
        status = int(str(response.get("status", "0")).split()[0] or 0)
        out.append(_outcome(i, status, answer, response.get("location"), e.get("resource")))
    return out


def _one_by_one(
    target: Target, profile: TargetProfile, items: list[Item], ids: dict[str, tuple[str, str | None]]
) -> list[Outcome]:
    known = dict(ids)
    out = []
    for i in items:  # in plan order, so a reference into the chunk was written first (or failed)
        if any(d not in known for d in i.deps):
            out.append(Outcome(i, "failed", None, ["dependency-failed"], 0))
            continue
        o = send_one(target, profile, i, known)
        if o.server_id:
            known[i.key] = (o.server_id, o.version_id)
        out.append(o)
    return out


def _outcome(
    item: Item, status: int, answer: Answer, location: str | None, body: Any, known_id: str | None = None
) -> Outcome:
    """known_id: the server id an update or patch wrote to (Millennium answers those with no body)."""
    if status >= 300 or status < 200:
        return Outcome(item, "failed", status, answer.issue_codes, answer.attempts)
    server_id, version = known_id, None
    if location:
        m = _LOCATION.search(location.split("?")[0])
        if m:
            server_id, version = m.group(2), m.group(3)
    if isinstance(body, dict) and body.get("id"):
        server_id = server_id or body["id"]
        version = version or (body.get("meta") or {}).get("versionId")
    if not version:
        version = answer.headers.get("etag", "").removeprefix("W/").strip('"') or None
    if not server_id:
        return Outcome(item, "failed", status, ["no-location"], answer.attempts)
    return Outcome(
        item,
        "created" if item.step == "create" else "updated",
        status,
        [],
        answer.attempts,
        server_id,
        version,
    )


def _exhausted(item: Item, exc: Transient) -> Outcome:
    codes = exc.answer.issue_codes if exc.answer else []
    if exc.status == AMBIGUOUS:
        codes = ["timeout"]
    elif exc.status == NOT_SENT:
        codes = ["connection"]
    return Outcome(item, "failed", exc.status if exc.status > 0 else None, codes, 0)


def find_created(
    target: Target,
    profile: TargetProfile,
    item: Item,
    ids: dict[str, tuple[str, str | None]],
    intent_at: datetime,
) -> tuple[str, str | None] | bool | None:
    """The server's copy of an in-doubt create: (id, version), None when it is not there (send again), or
    False when the server cannot be asked (no identifier to search by: leave it for the operator)."""
    rule = profile.rule(item.resource_type)
    if profile.conditional_create:
        params = {"_tag": f"{TAG_SYSTEM}|{tag_value(profile.name, item.key)}"}
    else:
        body = prepared(item, profile, lambda ref: f"{ref.split('/')[0]}/{ids[ref][0]}", None)
        spec = (rule.match if rule and rule.match else None) or {"identifier": "identifier"}
        params = {}
        for name, element in spec.items():
            value = _token(body, element)
            if value is None:
                return False
            params[name] = value
    try:
        answer = target.request("GET", f"{item.resource_type}?{urlencode(params)}")
    except Transient:
        return False
    if answer.status != 200 or not isinstance(answer.body, dict):
        return False
    since = intent_at - CLOCK_SKEW
    found = []
    for e in answer.body.get("entry") or []:
        r = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(r, dict) or r.get("resourceType") != item.resource_type:
            continue
        updated = (r.get("meta") or {}).get("lastUpdated")
        if not profile.conditional_create and updated and _instant(updated) < since:
            continue  # older than our attempt: someone else's resource, not our in-doubt create
        found.append((r["id"], (r.get("meta") or {}).get("versionId")))
    return sorted(found)[0] if found else None


def _instant(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def _token(body: dict[str, Any], element: str) -> str | None:
    """A search value from the sent body: identifier system|value, reference, first coding, or a date."""
    key = next(
        (k for k in body if k == element or (element.endswith("[x]") and k.startswith(element[:-3]))), None
    )
    value = body.get(key) if key else None
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return None
    if "reference" in value:
        return value["reference"]
    if "value" in value and "system" in value:
        return f"{value['system']}|{value['value']}"
    coding = next((c for c in value.get("coding") or [] if c.get("system") and c.get("code")), None)
    if coding:
        return f"{coding['system']}|{coding['code']}"
    if "start" in value:
        return value["start"]
    return None
