"""Code-system registry: one canonical URI per system from v2 0396 names, OIDs, URIs and site aliases."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

from pipelines.common.errors import ConfigError

HERE = Path(__file__).resolve().parent
SYSTEMS_CSV = HERE / "systems.csv"
SITE_ALIASES_CSV = HERE / "site_aliases.csv"

_OID = re.compile(r"[0-2](?:\.(?:0|[1-9]\d*))+")
# Table 0396: "99zzz" (zzz any printable string) and "L" are the site-defined local systems.
_LOCAL_V2 = re.compile(r"99\S*|L", re.IGNORECASE)
# SNOMED CT editions and versions are written as URIs under the system URI (sct/<module>/version/<date>).
_SNOMED_EDITION = re.compile(r"https?://snomed\.info/sct/\d+(?:/version/\d{8})?/?", re.IGNORECASE)
LOCAL_WORDS = frozenset({"local", "l"})
_V2_TABLE = re.compile(r"HL7\d{4}", re.IGNORECASE)  # table 0396 "HL7nnnn": HL7-defined table nnnn
# FHIR DSTU2 and STU3 named HL7's code systems under hl7.org/fhir; R4 moved them to terminology.hl7.org
# (v2/0203 → CodeSystem/v2-0203, v3/ActCode → CodeSystem/v3-ActCode, observation-category → ...).
_PRE_R4 = (
    (re.compile(r"//hl7\.org/fhir/v2/(\d{4})"), "http://terminology.hl7.org/CodeSystem/v2-{0}"),
    (re.compile(r"//hl7\.org/fhir/v3/([A-Za-z][\w-]*)"), "http://terminology.hl7.org/CodeSystem/v3-{0}"),
    (re.compile(r"//hl7\.org/fhir/([a-z][a-z0-9-]*)"), "http://terminology.hl7.org/CodeSystem/{0}"),
)

Status = Literal["known", "local", "unknown", "empty", "no-uri"]


@dataclass(frozen=True)
class SystemInfo:
    uri: str
    name: str
    standard: bool
    check: Literal["loinc", "snomed"] | None = None
    pattern: str | None = None
    oids: tuple[str, ...] = ()
    v2_names: tuple[str, ...] = ()
    alt_uris: tuple[str, ...] = ()

    def compiled_pattern(self) -> re.Pattern[str]:
        return _compile(self.pattern or ".*")


@dataclass(frozen=True)
class Resolution:
    """How one raw system string resolved: `uri` is set only for status 'known'."""

    raw: str | None
    status: Status
    uri: str | None = None
    via: str | None = None  # alias, v2-0396, oid, uri
    detail: str | None = None


@cache
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _uri_key(uri: str) -> str:
    """Fold the variants senders write for one URI: scheme, host case, trailing slash, `|version`."""
    uri = uri.strip().split("|", 1)[0].rstrip("/")
    m = re.match(r"(?i)(https?)://([^/]+)(.*)", uri)
    if m:
        return "//" + m.group(2).lower() + m.group(3)
    return uri


@dataclass
class Registry:
    """Resolves the many spellings of a code system to its canonical URI; never invents one."""

    systems: dict[str, SystemInfo]
    site_aliases: dict[str, str | None] = field(default_factory=dict)  # alias → uri, or None for local
    v2_without_uri: dict[str, str] = field(default_factory=dict)  # 0396 name → display, no FHIR URI known

    def __post_init__(self) -> None:
        self._by_uri: dict[str, str] = {}
        self._by_uri_fold: dict[str, set[str]] = {}
        self._by_oid: dict[str, str] = {}
        self._by_v2: dict[str, str] = {}
        self._by_v2_fold: dict[str, set[str]] = {}
        for info in self.systems.values():
            for uri in (info.uri, *info.alt_uris):
                self._by_uri.setdefault(_uri_key(uri), info.uri)
                self._by_uri_fold.setdefault(_uri_key(uri).lower(), set()).add(info.uri)
            for oid in info.oids:
                self._by_oid.setdefault(oid, info.uri)
            for name in info.v2_names:
                self._by_v2.setdefault(name, info.uri)
                self._by_v2_fold.setdefault(name.casefold(), set()).add(info.uri)
        self._aliases_fold = {k.casefold(): v for k, v in self.site_aliases.items()}
        self._v2_fold_without_uri = {k.casefold(): k for k in self.v2_without_uri}
        self._cache: dict[str | None, Resolution] = {}

    @classmethod
    def default(cls, site_aliases: Path | None = None) -> Registry:
        """The shipped registry (terminology/systems.csv), plus a site's alias file when given."""
        return _default(site_aliases.resolve() if site_aliases else None)

    @classmethod
    def from_files(cls, systems_csv: Path, alias_files: Iterable[Path] = ()) -> Registry:
        systems, without_uri = _read_systems(systems_csv)
        aliases: dict[str, str | None] = {}
        for path in alias_files:
            aliases.update(read_site_aliases(path))
        return cls(systems, aliases, without_uri)

    # -- queries -------------------------------------------------------------------------------------
    def canonical(self, raw: str | None) -> str | None:
        """The canonical URI for `raw`, or None when it is local, unknown or empty (see resolve)."""
        return self.resolve(raw).uri

    def is_local(self, raw: str | None) -> bool:
        return self.resolve(raw).status == "local"

    def info(self, uri: str | None) -> SystemInfo | None:
        """What the registry knows of a system (any spelling accepted); None for local or unknown systems."""
        if uri in self.systems:
            return self.systems[uri]
        canonical = self.canonical(uri)
        return self.systems.get(canonical) if canonical else None

    def resolve(self, raw: str | None) -> Resolution:
        hit = self._cache.get(raw)
        if hit is None:
            hit = self._resolve(raw)
            if len(self._cache) < 100_000:  # a feed has few distinct system strings; bound it anyway
                self._cache[raw] = hit
        return hit

    def _resolve(self, raw: str | None) -> Resolution:
        if raw is None or not raw.strip():
            return Resolution(raw, "empty")
        s = raw.strip()
        if s in self.site_aliases or s.casefold() in self._aliases_fold:
            target = self.site_aliases.get(s, self._aliases_fold.get(s.casefold()))
            if target is None:
                return Resolution(raw, "local", via="alias")
            inner = self._resolve_standard(target)
            if inner.status == "known":
                return Resolution(raw, "known", inner.uri, via="alias")
            return Resolution(raw, "known", target, via="alias", detail="site-declared system")
        return self._resolve_standard(s, raw)

    def _resolve_standard(self, s: str, raw: str | None = None) -> Resolution:
        raw = s if raw is None else raw
        lower = s.lower()
        if lower.startswith("urn:oid:") or _OID.fullmatch(s):
            oid = s[8:] if lower.startswith("urn:oid:") else s
            uri = self._by_oid.get(oid)
            if uri:
                return Resolution(raw, "known", uri, via="oid")
            return Resolution(raw, "unknown", via="oid", detail="OID not in the registry")
        if ":" in s:
            if _SNOMED_EDITION.fullmatch(s.split("|", 1)[0]):
                return Resolution(
                    raw, "known", "http://snomed.info/sct", via="uri", detail="SNOMED CT edition"
                )
            key = _uri_key(s)
            uri = self._by_uri.get(key)
            if uri is None:
                folded = self._by_uri_fold.get(key.lower(), set())
                uri = next(iter(folded)) if len(folded) == 1 else None
            if uri:
                return Resolution(raw, "known", uri, via="uri")
            for pattern, template in _PRE_R4:
                m = pattern.fullmatch(key)
                # Only to a code system HL7 Terminology publishes: the rename is never guessed.
                if m and (moved := template.format(m.group(1))) in self.systems:
                    return Resolution(raw, "known", moved, via="uri", detail="pre-R4 FHIR URI")
            return Resolution(raw, "unknown", via="uri", detail="URI not in the registry")
        uri = self._by_v2.get(s)
        if uri is None:
            folded = self._by_v2_fold.get(s.casefold(), set())
            # Case-insensitive only where it cannot pick between two systems.
            uri = next(iter(folded)) if len(folded) == 1 else None
        if uri:
            return Resolution(raw, "known", uri, via="v2-0396")
        if _LOCAL_V2.fullmatch(s) or s.casefold() in LOCAL_WORDS:
            return Resolution(raw, "local", via="v2-0396")
        if _V2_TABLE.fullmatch(s):
            return Resolution(
                raw, "no-uri", via="v2-0396", detail=f"HL7 Terminology publishes no v2 table {s[3:]}"
            )
        name = self._v2_fold_without_uri.get(s.casefold())
        if name:
            return Resolution(raw, "no-uri", via="v2-0396", detail=f"table 0396 name {name} has no FHIR URI")
        return Resolution(raw, "unknown", detail="not a table 0396 name, OID or URI in the registry")


@cache
def _default(site_aliases: Path | None) -> Registry:
    files = [SITE_ALIASES_CSV] if SITE_ALIASES_CSV.exists() else []
    if site_aliases is not None:
        files.append(site_aliases)
    return Registry.from_files(SYSTEMS_CSV, files)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split("|") if v.strip())


SYSTEM_COLUMNS = ("uri", "name", "v2_0396", "oids", "alt_uris", "standard", "check", "pattern")


def _read_systems(path: Path) -> tuple[dict[str, SystemInfo], dict[str, str]]:
    systems: dict[str, SystemInfo] = {}
    without_uri: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(SYSTEM_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path}: missing columns {', '.join(sorted(missing))}")
        for row in reader:
            line = reader.line_num
            uri = (row["uri"] or "").strip()
            if not uri:
                for name in _split(row["v2_0396"]):
                    without_uri[name] = row["name"] or name
                continue
            check = (row["check"] or "").strip() or None
            if check not in (None, "loinc", "snomed"):
                raise ConfigError(f"{path} line {line}: check must be loinc, snomed or empty, not {check!r}")
            standard = (row["standard"] or "").strip().lower()
            if standard not in ("yes", "no"):
                raise ConfigError(f"{path} line {line}: standard must be yes or no")
            pattern = (row["pattern"] or "").strip() or None
            if pattern:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(f"{path} line {line}: bad pattern: {exc}") from None
            systems[uri] = SystemInfo(
                uri=uri,
                name=row["name"] or uri,
                standard=standard == "yes",
                check=check,  # type: ignore[arg-type]
                pattern=pattern,
                oids=_split(row["oids"]),
                v2_names=_split(row["v2_0396"]),
                alt_uris=_split(row["alt_uris"]),
            )
    return systems, without_uri


def read_site_aliases(path: Path) -> dict[str, str | None]:
    """A site's own system names: CSV `alias,uri`; uri `local` (or empty) marks a local code system."""
    if not path.is_file():
        raise ConfigError(f"site alias file not found: {path}")
    aliases: dict[str, str | None] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or {"alias", "uri"} - set(reader.fieldnames):
            raise ConfigError(f"{path}: site alias file needs the columns alias,uri")
        for row in reader:
            alias = (row.get("alias") or "").strip()
            uri = (row.get("uri") or "").strip()
            if not alias:
                raise ConfigError(f"{path} line {reader.line_num}: empty alias")
            aliases[alias] = None if uri.lower() in ("", "local") else uri
    return aliases
