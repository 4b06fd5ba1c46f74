"""What the patient-view review says about one person: findings read from the snapshot, then cards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from pipelines.cds.rules import Rules
from pipelines.cds.snapshot import Snapshot


@dataclass
class Item:
    """One thing on the review page: a record (type, id) and what about it needs a look."""

    card_type: str
    resource_type: str | None
    label: str
    detail: str = ""
    indicator: str = "info"


@dataclass
class Findings:
    """Everything the review found for one person, grouped by card type."""

    person_id: str
    run_id: str | None = None
    total: int = 0
    sources: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    first_day: str | None = None
    last_day: str | None = None
    items: dict[str, list[Item]] = field(default_factory=dict)

    def add(self, item: Item) -> None:
        self.items.setdefault(item.card_type, []).append(item)


def find(snap: Snapshot, person_id: str, rules: Rules) -> Findings:
    """One person's review, from the document the snapshot computed for it."""
    f = Findings(person_id)
    doc = snap.docs.get(person_id)
    if doc is None:
        return f
    data = orjson.loads(doc)
    sources: set[str] = set()
    days: list[str] = []
    runs: list[str] = []
    for part in data["summary"]:
        f.counts[part["t"]] = part["n"]
        f.total += part["n"]
        sources.update(s for s in part["s"] if s)
        days += [d for d in (part["f"], part["l"]) if d]
        runs += [part["r"]] if part["r"] else []
    for item in data["items"]:
        f.add(
            Item(
                item["c"],
                item["t"],
                item["label"],
                item["detail"] or "",
                rules.indicator(item["c"], item["t"]),
            )
        )
    f.sources = sorted(sources)
    f.first_day, f.last_day = (min(days), max(days)) if days else (None, None)
    f.run_id = max(runs) if runs else None
    return f


def cards(f: Findings, rules: Rules, page_url: str | None, source: dict[str, Any]) -> list[tuple[str, dict]]:
    """(card type, card) pairs, most urgent first; none when the person has no migrated records, and none
    when nothing needs a look and the rules say a migrated chart alone is not worth a card."""
    if not f.total or (not f.items and not rules.summary_without_findings):
        return []
    out: list[tuple[str, dict]] = []
    links = [{"label": "Review migrated items", "url": page_url, "type": "absolute"}] if page_url else []
    summary_detail = _summary_detail(f)
    out.append(
        (
            "migration_summary",
            _card(
                rules,
                "migration_summary",
                f.total,
                summary_detail,
                rules.indicator("migration_summary", None),
                source,
                links,
                sources=len(f.sources),
            ),
        )
    )
    for card_type in rules.card_order:
        items = f.items.get(card_type)
        if not items:
            continue
        indicator = max((i.indicator for i in items), key=rules.urgency)
        lines = [f"- {_md(i.label)}" + (f" ({_md(i.detail)})" if i.detail else "") for i in items[:10]]
        if len(items) > 10:
            lines.append(f"- ... and {len(items) - 10} more on the review page")
        out.append(
            (card_type, _card(rules, card_type, len(items), "\n".join(lines), indicator, source, links))
        )
    out.sort(key=lambda pair: -rules.urgency(pair[1]["indicator"]))
    return out


def _summary_detail(f: Findings) -> str:
    counts = ", ".join(f"{t} {n}" for t, n in sorted(f.counts.items()))
    span = f"from {f.first_day} to {f.last_day}" if f.first_day else "undated"
    return (
        f"Migrated by ehrlift from {', '.join(_md(s) for s in f.sources)}: {counts}. Clinical dates {span}."
    )


def _card(
    rules: Rules, card_type: str, n: int, detail: str, indicator: str, source: dict, links: list, **extra: Any
) -> dict[str, Any]:
    summary = rules.summary(card_type, items=n, **extra)
    card = {"summary": summary, "detail": detail, "indicator": indicator, "source": dict(source)}
    card["source"]["topic"] = {
        "system": rules.topic_system,
        "code": card_type,
        "display": card_type.replace("_", " "),
    }
    if links:
        card["links"] = links
    return card


def _md(text: str) -> str:
    """Escape what GitHub-flavoured Markdown would read as markup or HTML in record text."""
    out = []
    for ch in str(text):
        out.append("\\" + ch if ch in "\\`*_{}[]<>()#+-!|" else ch)
    return "".join(out).replace("\n", " ")
