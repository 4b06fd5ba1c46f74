"""Target-aware codings for back-load: what each coding array may hold for a target profile (targets/*.json).

Millennium takes standard codes or its own code-set codes (`https://fhir.cerner.com/<tenant>/codeSet/<n>`)
in one coding array, never both: a mix is answered with 422. Code-set codes can be derived from standard
ones through a CODE_VALUE extract whose CONCEPT_CKI names the standard code (`LOINC!2345-7`).
"""

from __future__ import annotations

import copy
import csv
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipelines.common.errors import ConfigError, InputNotFoundError

TARGETS = Path(__file__).with_name("targets")
_HL7 = ("http://terminology.hl7.org/", "http://hl7.org/fhir/")


@dataclass(frozen=True)
class Profile:
    name: str
    mix: str  # forbidden, allowed
    prefer: str  # standard, codeset
    standard_systems: frozenset[str]
    hl7_systems_are_standard: bool
    codeset_pattern: re.Pattern[str] | None
    codeset_template: str | None
    cki_prefixes: dict[str, str]
    strip_extensions: bool

    def kind(self, system: Any) -> str:
        """standard, codeset or other, for a coding's system."""
        if not isinstance(system, str):
            return "other"
        if system in self.standard_systems or (self.hl7_systems_are_standard and system.startswith(_HL7)):
            return "standard"
        if self.codeset_pattern is not None and self.codeset_pattern.match(system):
            return "codeset"
        return "other"


@cache
def profile(name: str) -> Profile:
    path = TARGETS / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TARGETS.glob("*.json")))
        raise ConfigError(f"no target profile {name!r}", hint=f"known profiles: {known}")
    data = json.loads(path.read_text(encoding="utf-8"))
    pattern = data.get("codeset_system_pattern")
    return Profile(
        data["name"],
        data["mix"],
        data.get("prefer", "standard"),
        frozenset(data.get("standard_systems", ())),
        bool(data.get("hl7_systems_are_standard")),
        re.compile(pattern) if pattern else None,
        data.get("codeset_system_template"),
        dict(data.get("cki_prefixes", {})),
        bool(data.get("strip_codings_extensions")),
    )


# (standard system, code) -> [(code set, code value, display)]
CodeValues = dict[tuple[str, str], list[tuple[int, str, str | None]]]


def codings_for_target(
    resource: dict[str, Any],
    target: Profile,
    code_values: CodeValues | None = None,
    tenant: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """A copy of the resource whose coding arrays the target accepts, and the paths of arrays left with
    no acceptable coding (their text is kept, so nothing readable is lost)."""
    try:  # a resource is JSON: a round trip through orjson copies it several times faster than deepcopy
        out = orjson.loads(orjson.dumps(resource))
    except TypeError:
        out = copy.deepcopy(resource)
    issues: list[str] = []
    _walk(out, "", target, code_values or {}, tenant, issues)
    return out, issues


def mixed_arrays(resource: dict[str, Any], target: Profile) -> list[str]:
    """Paths of coding arrays holding both standard and code-set codings (what Millennium rejects)."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "coding" and isinstance(v, list):
                    kinds = {target.kind(c.get("system")) for c in v if isinstance(c, dict)}
                    if {"standard", "codeset"} <= kinds:
                        found.append(f"{path}.coding")
                else:
                    walk(v, f"{path}.{k}" if path else k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(resource, "")
    return found


def _walk(node: Any, path: str, t: Profile, cv: CodeValues, tenant: str | None, issues: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in list(node.items()):
            here = f"{path}.{key}" if path else key
            if key == "coding" and isinstance(value, list):
                _choose(node, value, here, t, cv, tenant, issues)
            elif isinstance(value, dict | list):
                _walk(value, here, t, cv, tenant, issues)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]", t, cv, tenant, issues)


def _choose(
    cc: dict[str, Any],
    codings: list[Any],
    path: str,
    t: Profile,
    cv: CodeValues,
    tenant: str | None,
    issues: list[str],
) -> None:
    items = [c for c in codings if isinstance(c, dict)]
    if t.strip_extensions:
        items = [{k: v for k, v in c.items() if k != "extension"} for c in items]
    if t.mix == "allowed":
        cc["coding"] = items
        return
    standard = [c for c in items if t.kind(c.get("system")) == "standard"]
    codeset = [c for c in items if t.kind(c.get("system")) == "codeset"]
    derived = _derive(standard, t, cv, tenant) if not codeset else []
    order = (standard, codeset or derived) if t.prefer == "standard" else (codeset or derived, standard)
    chosen = next((group for group in order if group), [])
    if chosen:
        cc["coding"] = chosen
        return
    # Neither kind: the element goes as text only, and the caller learns which one.
    text = cc.get("text") or next((c.get("display") for c in items if c.get("display")), None)
    del cc["coding"]
    if text:
        cc["text"] = text
    issues.append(path)


def _derive(
    standard: list[dict[str, Any]], t: Profile, cv: CodeValues, tenant: str | None
) -> list[dict[str, Any]]:
    if not cv or not t.codeset_template or not tenant:
        return []
    out = []
    for c in standard:
        for code_set, code_value, display in cv.get((c.get("system"), c.get("code")), ()):
            coding = {
                "system": t.codeset_template.format(tenant=tenant, code_set=code_set),
                "code": code_value,
            }
            if display:
                coding["display"] = display
            if coding not in out:
                out.append(coding)
    return out


# --- Millennium code values ---------------------------------------------------------------------------------


def load_code_values(con: duckdb.DuckDBPyConnection, path: Path, target: Profile | None = None) -> int:
    """Load a CODE_VALUE extract (CSV with CODE_VALUE, CODE_SET, DISPLAY, CONCEPT_CKI, ACTIVE_IND columns)
    into terminology.millennium_code_values, replacing what an earlier load of the same file name held."""
    target = target or profile("millennium")
    if not path.is_file():
        raise InputNotFoundError(f"code value extract not found: {path}")
    rows = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().upper() for h in next(reader, [])]
        need = ("CODE_VALUE", "CODE_SET", "DISPLAY", "CONCEPT_CKI", "ACTIVE_IND")
        missing = [h for h in need if h not in header]
        if missing:
            raise ConfigError(f"{path}:1: missing columns: {', '.join(missing)}")
        col = {h: header.index(h) for h in need}
        for line, values in enumerate(reader, start=2):
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise ConfigError(f"{path}:{line}: expected {len(header)} columns, found {len(values)}")
            get = {h: values[i].strip() for h, i in col.items()}
            if not get["CODE_SET"].isdigit() or not get["CODE_VALUE"]:
                raise ConfigError(f"{path}:{line}: CODE_SET must be a number and CODE_VALUE given")
            if get["ACTIVE_IND"] not in ("0", "1"):
                raise ConfigError(f"{path}:{line}: ACTIVE_IND must be 0 or 1")
            system, code = _cki(get["CONCEPT_CKI"], target)
            rows.append(
                (
                    int(get["CODE_SET"]),
                    get["CODE_VALUE"],
                    get["DISPLAY"] or None,
                    get["CONCEPT_CKI"] or None,
                    system,
                    code,
                    get["ACTIVE_IND"] == "1",
                    path.name,
                )
            )
    now = datetime.now(UTC)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM terminology.millennium_code_values WHERE source = ?", [path.name])
        if rows:
            con.executemany(
                "INSERT INTO terminology.millennium_code_values VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*r, now) for r in rows],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return len(rows)


def _cki(cki: str, target: Profile) -> tuple[str | None, str | None]:
    prefix, sep, code = cki.partition("!")
    system = target.cki_prefixes.get(prefix.upper()) if sep else None
    return (system, code) if system and code else (None, None)


def code_values(con: duckdb.DuckDBPyConnection) -> CodeValues:
    out: CodeValues = {}
    for system, code, code_set, value, display in con.execute(
        "SELECT standard_system, standard_code, code_set, code_value, display "
        "FROM terminology.millennium_code_values WHERE active AND standard_system IS NOT NULL ORDER BY ALL"
    ).fetchall():
        out.setdefault((system, code), []).append((code_set, value, display))
    return out
