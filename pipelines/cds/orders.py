"""order-select / order-sign: a draft order against the person's migrated medications, allergies and labs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from pipelines.cds.matching import Matching
from pipelines.cds.review import _md
from pipelines.cds.rules import Rules
from pipelines.cds.snapshot import Snapshot


@dataclass(frozen=True)
class DraftOrder:
    resource_type: str
    id: str | None
    label: str
    codes: tuple[str, ...]  # "system|code"


def draft_orders(context: dict[str, Any], hook: str) -> list[DraftOrder]:
    """The orders to check: for order-select only the newly selected ones, for order-sign all drafts."""
    bundle = context.get("draftOrders")
    entries = bundle.get("entry", []) if isinstance(bundle, dict) else []
    selections = context.get("selections") if hook == "order-select" else None
    wanted = set(selections) if isinstance(selections, list) else None
    out = []
    for entry in entries:
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or res.get("resourceType") not in (
            "MedicationRequest",
            "ServiceRequest",
        ):
            continue
        ref = f"{res['resourceType']}/{res.get('id')}"
        if wanted is not None and ref not in wanted:
            continue
        concept = _concept(res)
        codes = tuple(
            f"{c['system']}|{c['code']}"
            for c in concept.get("coding", [])
            if isinstance(c, dict) and isinstance(c.get("system"), str) and isinstance(c.get("code"), str)
        )
        label = concept.get("text") or next(
            (c.get("display") for c in concept.get("coding", []) if isinstance(c, dict) and c.get("display")),
            None,
        )
        if codes:
            out.append(DraftOrder(res["resourceType"], res.get("id"), label or "the draft order", codes))
    return out


def _concept(res: dict[str, Any]) -> dict[str, Any]:
    if res["resourceType"] == "ServiceRequest":
        concept = res.get("code")
    elif "medicationCodeableConcept" in res:
        concept = res.get("medicationCodeableConcept")
    else:
        # A medicationReference to a contained Medication: its code is the order's medication.
        ref = (res.get("medicationReference") or {}).get("reference", "")
        contained = [c for c in res.get("contained", []) if isinstance(c, dict) and f"#{c.get('id')}" == ref]
        concept = contained[0].get("code") if contained else None
    return concept if isinstance(concept, dict) else {}


def check(
    snap: Snapshot,
    person_id: str,
    orders: list[DraftOrder],
    rules: Rules,
    matching: Matching,
    source: dict[str, Any],
    links: list[dict[str, Any]],
) -> list[tuple[str, dict[str, Any]]]:
    """(card type, card) for every conflict between a draft order and the migrated record."""
    facts = snap.facts.get(person_id, ())
    since = (date.today() - timedelta(days=rules.recent_lab_days)).isoformat()
    out: list[tuple[str, dict[str, Any]]] = []
    for order in orders:
        keys = snap.terms.keys(order.codes) if snap.terms is not None else frozenset()
        for check in matching.data["checks"]:
            if order.resource_type != check["order"]:
                continue
            hits = []
            for fact in facts:
                if fact.kind != check["against"] or (fact.kind == "lab" and (fact.day or "") < since):
                    continue
                shared = {k.partition(" ")[0] for k in fact.keys & keys}
                level = next((lv for lv in check["levels"] if lv in shared), None)
                if level is not None:
                    hits.append((fact.resource_type, fact.label, fact.day, matching.word(level)))
            if hits:
                card_type = check["card_type"]
                out.append((card_type, _card(card_type, order, sorted(hits), rules, source, links)))
    out.sort(key=lambda pair: -rules.urgency(pair[1]["indicator"]))
    return out


def _card(
    card_type: str,
    order: DraftOrder,
    hits: list[tuple],
    rules: Rules,
    source: dict[str, Any],
    links: list[dict[str, Any]],
) -> dict[str, Any]:
    found = "\n".join(
        f"- {_md(label or rtype)} ({rtype}, {how}" + (f", last {day})" if day else ")")
        for rtype, label, day, how in hits
    )
    detail = f"Draft order: {_md(order.label)}.\n\nMigrated from the legacy record:\n{found}"
    review = {"label": "Review the migrated record before ordering", "uuid": str(uuid.uuid4())}
    if order.id:
        review = {
            "label": "Remove this draft order",
            "uuid": str(uuid.uuid4()),
            "actions": [
                {
                    "type": "delete",
                    "description": f"Remove the draft {order.resource_type} that repeats the migrated record",
                    "resourceId": f"{order.resource_type}/{order.id}",
                }
            ],
        }
    card: dict[str, Any] = {
        "summary": rules.summary(card_type),
        "detail": detail,
        "indicator": rules.indicator(card_type, order.resource_type),
        "source": {
            **source,
            "topic": {
                "system": rules.topic_system,
                "code": card_type,
                "display": card_type.replace("_", " "),
            },
        },
        "suggestions": [review],
        "selectionBehavior": "at-most-one",
        "overrideReasons": rules.override_reasons,
    }
    if links:
        card["links"] = links
    return card
