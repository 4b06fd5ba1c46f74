"""The read-only review page a patient-view card links to, and the unguessable links that open it.

A card's link is followed in the clinician's browser, which carries no CDS client JWT; the link therefore
holds a random token that names one person for a limited time (kept in this process, never in the URL's
clear text), so the URL itself discloses nothing and opens nothing beyond that patient's own chart.
"""

from __future__ import annotations

import secrets
import threading
import time
from html import escape

from pipelines.cds.review import Findings

_TITLES = {
    "unmapped_code": "Active items whose legacy code was not mapped",
    "remapped_code": "Active items carrying a code mapped from a retired or local code",
    "conflicting_duplicate": "Records set aside: conflicting versions",
    "quarantined": "Legacy records that could not be migrated",
    "identity_review": "Possible same-person links awaiting identity review",
    "duplicate_fact": "Records that arrived twice (marked duplicate)",
}


class Links:
    """token -> (person, expiry); bounded, expired tokens dropped as new ones are issued."""

    def __init__(self, ttl: float, limit: int = 100_000) -> None:
        self.ttl, self.limit = ttl, limit
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def issue(self, person_id: str) -> str:
        token = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            if len(self._tokens) >= self.limit:
                # Down to nine tenths, oldest first after the expired: a full table is swept once per
                # tenth of the limit, not on every call.
                self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
                for old in list(self._tokens)[: max(0, len(self._tokens) - self.limit * 9 // 10)]:
                    del self._tokens[old]
            self._tokens[token] = (person_id, now + self.ttl)
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def person(self, token: str) -> str | None:
        with self._lock:
            found = self._tokens.get(token)
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]


def render(f: Findings) -> str:
    """The page: what was migrated, then each group of items needing a look."""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='robots' content='noindex'><title>Migrated record review</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:60em}td,th{padding:.2em .6em;"
        "text-align:left;border-bottom:1px solid #ddd}.critical{color:#a00}.warning{color:#a60}</style>",
        "</head><body><h1>Migrated record review</h1>",
    ]
    if not f.total:
        parts.append("<p>No migrated records for this patient.</p></body></html>")
        return "".join(parts)
    span = f"{escape(f.first_day)} to {escape(f.last_day)}" if f.first_day and f.last_day else "undated"
    parts.append(
        f"<p>Migrated by ehrlift (run {escape(f.run_id or '')}) from {escape(', '.join(f.sources))}; "
        f"clinical dates {span}.</p><table><tr><th>Record type</th><th>Count</th></tr>"
    )
    parts += [f"<tr><td>{escape(t)}</td><td>{n}</td></tr>" for t, n in sorted(f.counts.items())]
    parts.append("</table>")
    for card_type, title in _TITLES.items():
        items = f.items.get(card_type)
        if not items:
            continue
        parts.append(f"<h2>{escape(title)} ({len(items)})</h2><table>")
        parts.append("<tr><th>Urgency</th><th>Type</th><th>Item</th><th>Detail</th></tr>")
        for i in items:
            parts.append(
                f"<tr><td class='{escape(i.indicator)}'>{escape(i.indicator)}</td>"
                f"<td>{escape(i.resource_type or '')}</td><td>{escape(i.label)}</td>"
                f"<td>{escape(i.detail)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
