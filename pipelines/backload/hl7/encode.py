"""ehrlift's HL7 v2 serializer: escaping, components, times, identifiers and target-appropriate codes."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any
from urllib.parse import unquote

import orjson

from pipelines.convert.hl7v2 import vocab
from terminology.target_codings import CodeValues, Profile

_SPECIAL = re.compile(r"[\\|^&~\r\n]")
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\n": "\\.br\\", "\r": ""}
_TIME = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_LOCAL = re.compile(r"urn:ehrlift:hl7v2:[^:]+:(.+)$")
_V2_TABLE = "http://terminology.hl7.org/CodeSystem/v2-"
_MISSING = object()


def esc(value: Any) -> str:
    """A leaf value with the delimiters escaped (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\); line breaks as \\.br\\."""
    if value.__class__ is str:
        s = value
    elif value is None:
        return ""
    else:
        s = str(value)
    if s.isalnum() or _SPECIAL.search(s) is None:  # isalnum: codes and numbers, without the regex
        return s
    return _SPECIAL.sub(lambda m: _ESCAPES[m.group(0)], s)


def _joined(sep: str, parts: tuple[str | None, ...]) -> str:
    # The parts are escaped leaves (or a lower level's joins), so none ends with sep itself.
    return sep.join([p or "" for p in parts]).rstrip(sep)


def comp(*parts: str | None) -> str:
    """Components joined by ^, trailing empty ones dropped (values already escaped)."""
    return _joined("^", parts)


def sub(*parts: str | None) -> str:
    """Subcomponents joined by &, trailing empty ones dropped (values already escaped)."""
    return _joined("&", parts)


def comp_at(position: int, value: str | None) -> str:
    """A composite with one component set, at its 1-based position (the ones before it empty)."""
    return comp(*([None] * (position - 1)), value)


def segment(name: str, fields: dict[int, str | None]) -> str:
    """A segment from {field number: encoded value}; empty trailing fields dropped."""
    out = [name]
    last = 0
    for n, v in fields.items():  # in ascending order, as every builder writes them
        if v:
            if n <= last:
                return _segment_any_order(name, fields)
            if n - last > 1:
                out += _EMPTY[: n - last - 1]
            out.append(v)
            last = n
    return "|".join(out)


_EMPTY = [""] * 300  # more fields than any segment has


def _segment_any_order(name: str, fields: dict[int, str | None]) -> str:
    present = [n for n, v in fields.items() if v]
    out = [""] * (max(present) + 1)
    out[0] = name
    for n in present:
        out[n] = fields[n]  # type: ignore[assignment]
    return "|".join(out)


def ts(value: Any) -> str | None:
    """FHIR date/dateTime/instant -> HL7 DTM at the same precision (offset kept)."""
    if not value:
        return None
    if value.__class__ is str:
        # A report's results share its time, and a patient's messages their visit's: most times recur.
        found = _TIMES.get(value, _MISSING)
        if found is _MISSING:
            if len(_TIMES) >= 20_000:
                _TIMES.clear()
            found = _TIMES[value] = _ts(value)
        return found  # type: ignore[return-value]
    return _ts(value)


_TIMES: dict[str, str | None] = {}


def _ts(value: Any) -> str | None:
    m = _TIME.match(value)
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    out = y + (mo or "") + (d or "") + (h or "") + (mi or "") + (s or "")
    if frac and s:
        out += frac[:5]
    if tz:
        out += "+0000" if tz == "Z" else tz.replace(":", "")
    return out


# --- code systems -------------------------------------------------------------------------------------------


@cache
def system_names() -> dict[str, str]:
    """Canonical URI -> HL7 coding-system name (table 0396): the first name the converter's map lists."""
    out: dict[str, str] = {}
    with (vocab.MAPS / "coding_systems.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["uri"], row["name"])
    return out


def system_name(system: Any) -> str | None:
    if not system:
        return None
    return _system_name(system)


@cache  # a run meets a handful of systems, each thousands of times
def _system_name(system: Any) -> str:
    known = system_names().get(system)
    if known:
        return known
    if system.startswith(_V2_TABLE):
        return "HL7" + system[len(_V2_TABLE) :]
    local = local_name(system)
    if local:
        return local
    if system.startswith("urn:oid:"):
        return system[8:]
    return system  # a URI is kept whole: the reader takes a URI as its own system


@dataclass(frozen=True)
class Coder:
    """Codes made target-appropriate: the standard coding first; the site's Millennium alias (a code-set
    code carried by the resource, or derived from the CODE_VALUE extract) in the second triplet."""

    target: Profile
    alias_system_name: str | None = None  # None: no second triplet
    code_values: CodeValues | None = None
    _kinds: dict[Any, str] = field(default_factory=dict, compare=False, repr=False)
    _cwes: dict[tuple[bytes, bool], str | None] = field(default_factory=dict, compare=False, repr=False)

    def kind(self, system: Any) -> str:
        found = self._kinds.get(system)
        if found is None:
            found = self._kinds[system] = self.target.kind(system)
        return found

    def cwe(self, cc: Any, *, text_only: bool = True) -> str | None:
        if not isinstance(cc, dict):
            return None
        # The same concepts (a lab's test codes, units, statuses) recur in message after message.
        key = (orjson.dumps(cc), text_only)
        found = self._cwes.get(key, _MISSING)
        if found is _MISSING:
            if len(self._cwes) >= 50_000:
                self._cwes.clear()
            found = self._cwes[key] = self._cwe(cc, text_only)
        return found  # type: ignore[return-value]

    def _cwe(self, cc: dict[str, Any], text_only: bool) -> str | None:
        codings = [c for c in cc.get("coding") or [] if isinstance(c, dict) and c.get("code")]
        kinds = [(self.kind(c.get("system")), c) for c in codings]
        primary = next((c for k, c in kinds if k == "standard"), None) or next(
            (c for k, c in kinds if k == "other"), None
        )
        alias = None
        alternate = None  # without an alias, a second code of the concept goes in the second triplet
        if self.alias_system_name:
            alias = next((c for k, c in kinds if k == "codeset"), None)
            if alias is None and primary is not None and self.code_values:
                hit = self.code_values.get((primary.get("system"), primary.get("code")))  # type: ignore[arg-type]
                if hit:
                    code_set, value, display = hit[0]
                    alias = {"code": value, "display": display, "code_set": code_set}
        if alias is None and primary is not None:
            alternate = next((c for k, c in kinds if k != "codeset" and c is not primary), None)
        text = cc.get("text")
        if primary is None and alias is None:
            return comp(None, esc(text)) if text and text_only else None
        first: tuple[str | None, ...] = (
            (esc(primary["code"]), esc(primary.get("display")), esc(system_name(primary.get("system"))))
            if primary
            else (None, None, None)
        )
        second: tuple[str | None, ...]
        if alias:
            second = (esc(alias["code"]), esc(alias.get("display")), esc(self.alias_system_name))
        elif alternate:
            second = (
                esc(alternate["code"]),
                esc(alternate.get("display")),
                esc(system_name(alternate.get("system"))),
            )
        else:
            second = (None, None, None)
        return comp(*first, *second)


def is_code(system: Any, code: Any, display: Any = None) -> str | None:
    """A coded element bound to one table: code^display^system name."""
    if not code:
        return None
    return comp(esc(code), esc(display), esc(system_name(system)))


@lru_cache(maxsize=4096)  # a plan meets a handful of systems, each in thousands of identifiers and codes
def local_name(system: Any) -> str | None:
    """The sender's own name inside an ehrlift local system (urn:ehrlift:hl7v2:<source>:<name>)."""
    m = _LOCAL.match(system)
    return unquote(m.group(1)).removeprefix("id:") if m else None


# --- identifiers, names, addresses, telecom ----------------------------------------------------------------


@lru_cache(maxsize=4096)
def authority(system: Any) -> str | None:
    """Identifier.system -> HD (namespace&universal id&type), the way the reader takes it back."""
    if not system:
        return None
    if system.startswith("urn:oid:"):
        return sub(None, esc(system[8:]), "ISO")
    local = local_name(system)
    if local:
        return esc(local)
    return sub(None, esc(system), "URI")


def cx(ident: Any, type_code: Any = None) -> str | None:
    value = ident.get("value")
    if not value:
        return None
    kind = type_code
    for c in (ident.get("type") or {}).get("coding") or []:
        if c.get("code"):
            kind = c["code"]
            break
    return comp(esc(value), None, None, authority(ident.get("system")), esc(kind))


def ei(ident: Any) -> str | None:
    if not ident or not ident.get("value"):
        return None
    system = ident.get("system")
    if not system:
        return esc(ident["value"])
    if system.startswith("urn:oid:"):
        return comp(esc(ident["value"]), None, esc(system[8:]), "ISO")
    local = local_name(system)
    if local:
        return comp(esc(ident["value"]), esc(local))
    return comp(esc(ident["value"]), None, esc(system), "URI")


_NAME_USE = {"official": "L", "usual": "L", "maiden": "M", "nickname": "N", "anonymous": "S", "old": "U"}


def xpn(name: Any) -> str | None:
    given = name.get("given") or []
    family = name.get("family")
    if not family and not given:
        return comp_at(14, esc(name.get("text")))
    return comp(
        esc(family),
        esc(given[0] if given else None),
        esc(" ".join(given[1:]) if len(given) > 1 else None),
        esc((name.get("suffix") or [None])[0]),
        esc((name.get("prefix") or [None])[0]),
        None,
        _NAME_USE.get(name.get("use") or "", "L"),
    )


_ADDR_USE = {"home": "H", "work": "O", "temp": "C", "old": "OLD", "billing": "BI"}


def xad(a: Any, countries: dict[str, str]) -> str | None:
    lines = a.get("line") or []
    out = comp(
        esc(lines[0] if lines else None),
        esc(lines[1] if len(lines) > 1 else None),
        esc(a.get("city")),
        esc(a.get("state")),
        esc(a.get("postalCode")),
        esc(countries.get(a.get("country") or "", a.get("country"))),
        _ADDR_USE.get(a.get("use") or ""),
    )
    return out or None


_TEL_USE = {"home": "PRN", "work": "WPN", "mobile": "PRN", "temp": "PRN"}
_TEL_EQUIP = {"phone": "PH", "fax": "FX", "email": "Internet", "pager": "BP", "url": "Internet"}


def xtn(t: Any) -> str | None:
    value = t.get("value")
    if not value:
        return None
    system = t.get("system") or "phone"
    equip = "CP" if t.get("use") == "mobile" and system == "phone" else _TEL_EQUIP.get(system, "PH")
    if system in ("email", "url"):
        return comp(None, "NET", equip, esc(value))
    return comp(esc(value), _TEL_USE.get(t.get("use") or "", "PRN"), equip)


def xcn_of(resource: Any) -> str | None:
    """A Practitioner as XCN: first identifier, name (family, given)."""
    if not resource:
        return None
    ident = next((i for i in resource.get("identifier") or [] if i.get("value")), None)
    name: dict[str, Any] = next(iter(resource.get("name") or []), {})
    given = name.get("given") or []
    auth = authority(ident.get("system")) if ident else None
    return (
        comp(
            esc(ident["value"]) if ident else None,
            esc(name.get("family")),
            esc(given[0] if given else None),
            None,
            None,
            esc((name.get("prefix") or [None])[0]),
            None,
            None,
            auth,
        )
        or None
    )
