"""The Starlette application: discovery, the two services, feedback and the review page."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema_rs
import orjson
from jsonschema import Draft202012Validator, FormatChecker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from pipelines.cds import orders, review
from pipelines.cds.audit import Spool, merge
from pipelines.cds.auth import FetchNeeded, Unauthorized, Verifier
from pipelines.cds.config import CdsConfig
from pipelines.cds.matching import Matching
from pipelines.cds.page import Links, render
from pipelines.cds.resolve import Resolution, resolve, resolve_local, resolve_remote
from pipelines.cds.rules import Rules
from pipelines.cds.snapshot import Snapshot, build, file_state
from pipelines.common.errors import EhrliftError
from pipelines.common.paths import shipped

log = logging.getLogger("pipelines.cds")

REVIEW = "ehrlift-migration-review"
ORDER_CHECK = "ehrlift-order-check"
PATIENT_PREFETCH = {"patient": "Patient/{{context.patientId}}"}
SERVICES: list[dict[str, Any]] = [
    {
        "hook": "patient-view",
        "id": REVIEW,
        "title": "ehrlift migrated-record review",
        "description": "Says what in this chart was migrated from legacy systems (sources, counts, dates) "
        "and "
        "what needs a clinician's eye: unmapped or remapped codes on active problems, allergies and "
        "medications, records that could not be migrated, identity links awaiting review, duplicates.",
        "prefetch": PATIENT_PREFETCH,
    },
] + [
    {
        "hook": hook,
        "id": ORDER_CHECK,
        "title": "ehrlift order check against the migrated record",
        "description": "Warns when a draft order repeats a migrated active medication or a recent migrated "
        "lab result, or conflicts with a migrated allergy to the same substance: the same code, an "
        "equivalent code in the loaded terminology or the migration's mapping, or a shared RxNorm "
        "ingredient.",
        "prefetch": PATIENT_PREFETCH,
        "usageRequirements": "Draft orders are read from context.draftOrders "
        "(R4 MedicationRequest, ServiceRequest).",
    }
    for hook in ("order-select", "order-sign")
]
UNAVAILABLE = ("no_prefetch_no_fhir_access", "bad_patient_id")
HOOKS = {REVIEW: ("patient-view",), ORDER_CHECK: ("order-select", "order-sign")}


def _schema(name: str) -> dict[str, Any]:
    return json.loads((shipped("schemas") / "cds" / f"{name}.schema.json").read_text(encoding="utf-8"))


@cache
def validator(name: str) -> Draft202012Validator:
    """The reference implementation with messages: what the tests check every response with."""
    return Draft202012Validator(_schema(name), format_checker=FormatChecker())


@cache
def _compiled(name: str) -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for(_schema(name), validate_formats=True)


def conforms(name: str, body: Any) -> bool:
    """Whether a request or feedback body follows its schema: the compiled validator answers in
    microseconds where the reference one takes a tenth of a millisecond or more on every call."""
    return _compiled(name).is_valid(body)


def _outcome(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), 200, media_type="application/json")


@dataclass
class State:
    config: CdsConfig
    rules: Rules
    verifier: Verifier
    spool: Spool
    links: Links
    matching: Matching
    snapshot: Snapshot | None = None
    stop: threading.Event | None = None

    def refresh(self) -> None:
        """Merge queued audit rows, then snapshot again if the warehouse changed (else keep the old one)."""
        wh = self.config.warehouse
        before = file_state(wh)
        try:
            if (
                merge(self.config.spool_path, wh)
                and self.snapshot
                and self.snapshot.warehouse_state == before
            ):
                self.snapshot.warehouse_state = file_state(wh)  # only our own audit rows were written
        except EhrliftError as exc:
            log.warning("audit spool not merged yet: %s", exc.message)
        if self.snapshot is not None and self.snapshot.warehouse_state == file_state(wh):
            return
        try:
            snap = build(
                wh, self.rules.data, (self.snapshot.generation + 1) if self.snapshot else 1, self.matching
            )
        except EhrliftError as exc:
            log.warning("snapshot not refreshed: %s", exc.message)
            return
        rows = snap.records
        self.spool.append("snapshot", service="snapshot", tables=[{"table": "fhir.*", "rows": rows}])
        old, self.snapshot = self.snapshot, snap
        log.info("snapshot %d taken: %d persons", snap.generation, snap.persons)
        del old  # requests holding the old snapshot finish on it; its memory goes with the last of them

    def loop(self) -> None:
        assert self.stop is not None
        due = time.monotonic() + self.config.refresh_seconds
        while not self.stop.wait(1.0):
            self.spool.sync()
            if time.monotonic() >= due:
                before = self.snapshot
                self.refresh()
                if self.snapshot is not before:
                    _settle()
                due = time.monotonic() + self.config.refresh_seconds


def _settle() -> None:
    """After a new snapshot: collect once, then move every surviving object out of the cyclic
    collector's view. A snapshot is some 100,000 small objects without reference cycles (10k patients);
    left in view, each full collection walks them all in the middle of a call (tens of milliseconds on a
    loaded machine). An old snapshot's objects are still freed by reference counting."""
    gc.collect()
    gc.freeze()


def create_app(config: CdsConfig, rules: Rules | None = None, matching: Matching | None = None) -> Starlette:
    rules = rules or Rules.load(config.rules)
    state = State(
        config,
        rules,
        Verifier(
            config.issuers,
            leeway=config.leeway_seconds,
            max_lifetime=config.max_token_lifetime,
            jwks_ttl=config.jwks_ttl_seconds,
            timeout=config.fhir_timeout,
        ),
        Spool(config.spool_path),
        Links(config.link_ttl_seconds),
        matching or Matching.load(config.matching),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(state.refresh)
        _settle()
        state.stop = threading.Event()
        thread = threading.Thread(target=state.loop, name="cds-refresh", daemon=True)
        thread.start()
        yield
        state.stop.set()
        thread.join(timeout=30)
        state.spool.sync()
        try:
            await run_in_threadpool(merge, config.spool_path, config.warehouse)
        except EhrliftError as exc:
            log.warning("audit spool left for the next merge: %s", exc.message)
        gc.unfreeze()  # everything is collectable again, and released as the process ends

    def authorize(request: Request, fetch: bool = True) -> str:
        audience = config.base_url + request.url.path
        return state.verifier.verify(request.headers.get("authorization"), audience, fetch=fetch)

    async def authorized(request: Request) -> str:
        """Verified on the event loop; only a JWK Set fetch goes to a worker thread."""
        try:
            return authorize(request, fetch=False)
        except FetchNeeded:
            return await run_in_threadpool(authorize, request)

    async def discovery(request: Request) -> Response:
        try:
            await authorized(request)
        except Unauthorized as exc:
            return _unauthorized(exc)
        return _json({"services": SERVICES})

    async def service(request: Request) -> Response:
        """A hook call. Everything but I/O runs on the event loop (a call is a few dictionary lookups and
        one signature check; a thread hop would cost more): the client's FHIR server and a draft order's
        terminology lookups run in a worker thread."""
        service_id = request.path_params["service_id"]
        if service_id not in HOOKS:
            return _outcome(404, "not-found", "no such CDS service")
        raw = await request.body()
        try:
            issuer = await authorized(request)
        except Unauthorized as exc:
            return _unauthorized(exc)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _outcome(400, "invalid", "the request body is not JSON")
        if not isinstance(body, dict) or not conforms("request", body):
            return _outcome(400, "invalid", "the request does not follow the CDS Hooks request schema")
        if body["hook"] not in HOOKS[service_id]:
            return _outcome(400, "not-supported", f"this service answers {', '.join(HOOKS[service_id])}")
        snap = state.snapshot
        if snap is None:
            return _outcome(503, "transient", "the service has no warehouse snapshot yet")
        found = resolve_local(snap, body)
        if found is None:
            found = await run_in_threadpool(resolve_remote, snap, body, config.fhir_timeout)
        if service_id == ORDER_CHECK:
            result = await run_in_threadpool(invoke, state, snap, service_id, body, issuer, found)
        else:
            result = invoke(state, snap, service_id, body, issuer, found)
        if result is None:
            # The specification's answer when neither prefetch nor the client's FHIR server gave the data.
            return _outcome(
                412, "not-found", "no patient prefetch, and the client's FHIR server could not be read"
            )
        return _json(result)

    async def feedback(request: Request) -> Response:
        service_id = request.path_params["service_id"]
        if service_id not in HOOKS:
            return _outcome(404, "not-found", "no such CDS service")
        try:
            await authorized(request)
        except Unauthorized as exc:
            return _unauthorized(exc)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _outcome(400, "invalid", "the request body is not JSON")
        if not isinstance(body, dict) or not conforms("feedback", body):
            return _outcome(400, "invalid", "the request does not follow the CDS Hooks feedback schema")
        record_feedback(state, service_id, body["feedback"])
        return Response(status_code=200)

    async def page(request: Request) -> Response:
        person = state.links.person(request.path_params["token"])
        snap = state.snapshot
        if person is None or snap is None:
            return HTMLResponse(
                "<!doctype html><p>This review link has expired.</p>", 404, headers=_PAGE_HEADERS
            )
        findings = review.find(snap, person, rules)
        return HTMLResponse(render(findings), headers=_PAGE_HEADERS)

    routes = [
        Route("/cds-services", discovery, methods=["GET"]),
        Route("/cds-services/{service_id}", service, methods=["POST"]),
        Route("/cds-services/{service_id}/feedback", feedback, methods=["POST"]),
        Route(f"/cds-services/{REVIEW}/review/{{token}}", page, methods=["GET"]),
    ]
    middleware = []
    if config.cors_origins:
        # Browser-based CDS clients only: an exact allow-list, never "*", no cookies; the JWT authenticates.
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
                allow_credentials=False,
                max_age=600,
            )
        )
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.cds = state
    return app


_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _unauthorized(exc: Unauthorized) -> Response:
    log.info("request refused: %s", exc)
    return _outcome(401, "login", str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def invoke(
    state: State, snap: Snapshot, service_id: str, body: dict[str, Any], issuer: str, found: Resolution
) -> dict[str, Any] | None:
    """Answer one hook call and queue its audit row; the response is cards only (no systemActions).

    None when the Patient could not be obtained at all (no prefetch, FHIR server absent or failing): the
    caller answers 412. A Patient that matches nobody here gets an empty card list.
    """
    rules, hook = state.rules, body["hook"]
    pairs: list[tuple[str, dict[str, Any]]] = []
    rows_read, run_id = 0, None
    unavailable = found.how in UNAVAILABLE or found.how.startswith("fhir_server_")
    if found.person_id is None:
        log.info("%s: no cards, the patient was not resolved (%s)", hook, found.how)
    else:
        f = review.find(snap, found.person_id, rules)
        rows_read, run_id = f.total, f.run_id
        if f.total:
            source = {"label": f"ehrlift migration review (run {f.run_id})"}
            token = state.links.issue(found.person_id)
            url = f"{state.config.base_url}/cds-services/{REVIEW}/review/{token}"
            if service_id == REVIEW:
                pairs = review.cards(f, rules, url, source)
            else:
                links = [{"label": "Review migrated items", "url": url, "type": "absolute"}]
                drafts = orders.draft_orders(body["context"], hook)
                pairs = orders.check(snap, found.person_id, drafts, rules, state.matching, source, links)
            if not pairs:
                state.links.revoke(token)  # no card carries the link
    cards = []
    for _card_type, card in pairs:
        card["uuid"] = str(uuid.uuid4())
        cards.append(card)
    state.spool.append(
        "invocation",
        issuer=issuer,
        hook=hook,
        service=service_id,
        hook_instance=body.get("hookInstance"),
        patient_resolved=found.person_id is not None,
        resolved_by=found.how,
        cards=len(cards),
        run_id=run_id,
        tables=[{"table": "fhir.*", "rows": rows_read}],
        issued=[{"uuid": c["uuid"], "type": t, "indicator": c["indicator"]} for t, c in pairs],
    )
    return None if unavailable else {"cards": cards}


def record_feedback(state: State, service_id: str, entries: list[dict[str, Any]]) -> None:
    """Queue each entry as outcome counts material; a user's free-text comment is never kept."""
    for entry in entries:
        reason = (entry.get("overrideReason") or {}).get("reason") or {}
        state.spool.append(
            "feedback",
            service=service_id,
            card=entry["card"],
            outcome=entry["outcome"],
            accepted=len(entry.get("acceptedSuggestions") or []),
            reason_system=reason.get("system"),
            reason_code=reason.get("code"),
            outcome_at=entry.get("outcomeTimestamp"),
        )


def call(state: State, service_id: str, body: dict[str, Any], issuer: str) -> dict[str, Any] | None:
    """One already-authorized hook call without HTTP, resolution included (it may block on the client's
    FHIR server): what the HTTP handler does after verifying the token and the request schema."""
    snap = state.snapshot
    assert snap is not None
    return invoke(state, snap, service_id, body, issuer, resolve(snap, body, state.config.fhir_timeout))
