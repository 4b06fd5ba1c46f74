"""A site's back-load opt-ins (data): elements it lets go, defaults it fills, Locations it maps."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipelines.backload.profiles import TargetProfile, accepts
from pipelines.common.errors import ConfigError

ANY_REFUSED = "*"  # in a drop list: every element the target does not accept for the type
MAPPABLE = ("Location", "Practitioner", "Organization")  # records a site matches rather than creates


@dataclass(frozen=True)
class Site:
    name: str
    profile: str
    drop: dict[str, tuple[str, ...]] = field(default_factory=dict)  # type -> elements the site lets go
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # type -> element -> value when absent
    # type -> {"id:<warehouse id>" | "identifier:<token>": the target's id}: source Locations (and stand-in
    # Practitioners) matched to the records the target already has
    records: dict[str, dict[str, str]] = field(default_factory=dict)
    existing: tuple[str, ...] = ()  # "Type/<server id>" the site's defaults and map point at (on the target)
    sha256: str = ""

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "existing": list(self.existing)}

    def existing_id(self, rtype: str, warehouse_id: str, resource: dict[str, Any]) -> str | None:
        """The target's id for a source record: by warehouse id, else by the first identifier mapped."""
        mapping = self.records.get(rtype, {})
        found = mapping.get(f"id:{warehouse_id}")
        for ident in resource.get("identifier") or []:
            if found is None and isinstance(ident, dict) and ident.get("value"):
                token = f"{ident['system']}|{ident['value']}" if ident.get("system") else ident["value"]
                found = mapping.get(f"identifier:{token}")
        return found

    def apply(self, rtype: str, body: dict[str, Any], target: TargetProfile) -> tuple[dict, dict[str, list]]:
        """The body with the site's drops and defaults applied, and what changed (element names only)."""
        changes: dict[str, list[str]] = {}
        allowed = self.drop.get(rtype, ())
        rule = target.rule(rtype)
        if allowed and rule is not None:
            refused = [
                k
                for k in body
                if k != "resourceType"
                and (
                    k in target.never_accepted
                    or (rule.accepted is not None and not accepts(k, rule.accepted))
                )
            ]
            dropped = sorted(k for k in refused if ANY_REFUSED in allowed or k in allowed)
            if dropped:
                body = {k: v for k, v in body.items() if k not in dropped}
                changes["dropped"] = dropped
        filled = sorted(k for k in self.defaults.get(rtype, {}) if k not in body)
        if filled:
            body = {**body, **{k: self.defaults[rtype][k] for k in filled}}
            changes["defaulted"] = filled
        return body, changes


def load_site(path: Path, target: TargetProfile) -> Site:
    """Read a site profile (JSON) and its Location map (CSV beside it); refuse one made for another target."""
    try:
        raw = path.read_bytes()
        data = orjson.loads(raw)
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(
            f"cannot read the site profile ({type(exc).__name__})", hint="--site FILE"
        ) from None
    if data.get("profile") != target.name:
        raise ConfigError(
            f"the site profile is for {data.get('profile')!r}, not {target.name!r}", hint="check --profile"
        )
    digest = hashlib.sha256(raw)
    records: dict[str, dict[str, str]] = {}
    if data.get("existing"):
        csv_path = path.parent / data["existing"]["file"]
        try:
            text = csv_path.read_bytes()
        except OSError:
            raise ConfigError(
                "the site profile's map of existing records is missing", hint="existing.file"
            ) from None
        digest.update(text)
        for row in csv.DictReader(text.decode("utf-8").splitlines()):
            rtype, match = row.get("resource_type") or "", row.get("match")
            value, server_id = row.get("value"), row.get("target_id")
            if rtype not in MAPPABLE or match not in ("id", "identifier") or not value or not server_id:
                raise ConfigError(
                    "a row of the map of existing records needs resource_type (Location|Practitioner|"
                    "Organization), match (id|identifier), value and target_id"
                )
            records.setdefault(rtype, {})[f"{match}:{value}"] = server_id
    defaults = {t: dict(v) for t, v in (data.get("defaults") or {}).get("elements", {}).items()}
    existing = {f"{t}/{i}" for t, mapping in records.items() for i in mapping.values()}
    existing |= {ref for values in defaults.values() for ref in _references(values)}
    return Site(
        name=data["name"],
        profile=data["profile"],
        drop={t: tuple(v) for t, v in (data.get("drop") or {}).get("elements", {}).items()},
        defaults=defaults,
        records=records,
        existing=tuple(sorted(existing)),
        sha256=digest.hexdigest(),
    )


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []
