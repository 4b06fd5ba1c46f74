"""The card rules (schemas/cds/rules.json): indicators by card and resource type, wording, overrides."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.common.errors import ConfigError
from pipelines.common.paths import shipped

INDICATORS = ("info", "warning", "critical")  # in increasing urgency, as the specification orders them
CARD_ORDER = (
    "unmapped_code",
    "remapped_code",
    "conflicting_duplicate",
    "quarantined",
    "identity_review",
    "duplicate_fact",
)
ORDER_CARDS = ("order_allergy_conflict", "order_duplicate_medication", "order_duplicate_lab")
TOPIC_SYSTEM = "urn:ehrlift:cds-hooks:card-type"


@dataclass(frozen=True)
class Rules:
    data: dict[str, Any]

    @classmethod
    def load(cls, path: Path | None = None) -> Rules:
        path = path or shipped("schemas") / "cds" / "rules.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the CDS rules file: {exc}") from None
        rules = cls(data)
        rules.check()
        return rules

    def check(self) -> None:
        known = set(CARD_ORDER) | set(ORDER_CARDS) | {"migration_summary"}
        for rule in self.data["rules"]:
            if rule["card_type"] not in known or rule["indicator"] not in INDICATORS:
                raise ConfigError(
                    "a CDS rule names an unknown card type or indicator",
                    hint=f"card types: {', '.join(sorted(known))}; indicators: {', '.join(INDICATORS)}",
                )
        for card_type in known:
            if card_type not in self.data["summaries"]:
                raise ConfigError(f"the CDS rules have no summary for {card_type}")

    def indicator(self, card_type: str, resource_type: str | None) -> str:
        for rule in self.data["rules"]:
            if rule["card_type"] == card_type and rule.get("resource_type") in (None, resource_type):
                return rule["indicator"]
        return "info"

    @staticmethod
    def urgency(indicator: str) -> int:
        return INDICATORS.index(indicator)

    def summary(self, card_type: str, **values: Any) -> str:
        text = self.data["summaries"][card_type].format(**values)
        return text if len(text) < 140 else text[:136] + "..."

    @property
    def card_order(self) -> tuple[str, ...]:
        return CARD_ORDER

    @property
    def topic_system(self) -> str:
        return TOPIC_SYSTEM

    @property
    def remapped_methods(self) -> list[str]:
        return list(self.data.get("remapped_methods", []))

    @property
    def quarantine_ignored_types(self) -> list[str]:
        return list(self.data.get("quarantine_ignored_types", []))

    @property
    def summary_without_findings(self) -> bool:
        return bool(self.data.get("summary_without_findings", True))

    @property
    def recent_lab_days(self) -> int:
        return int(self.data.get("recent_lab_days", 90))

    @property
    def override_reasons(self) -> list[dict[str, str]]:
        block = self.data["override_reasons"]
        return [
            {"system": block["system"], "code": c["code"], "display": c["display"]} for c in block["codes"]
        ]
