"""Suites, severities and thresholds from expectations/, with a site file's overrides applied on top."""

from __future__ import annotations

import copy
import csv
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from pipelines.common.errors import ConfigError
from pipelines.common.paths import shipped

SITE_FILE_ENV = "EHRLIFT_DQ_SITE_FILE"
SEVERITIES = ("critical", "warning")
# Expectation kinds whose per-row results add up across chunks (GX "map" expectations).
MAP_TYPES = frozenset(
    {
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_match_regex",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_unique",
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_compound_columns_to_be_unique",
    }
)
_SITE_KEYS = frozenset(
    {
        "version",
        "parameters",
        "mostly",
        "severities",
        "unmapped_share_max",
        "fhir_structure_max_invalid_share",
        "engine",
        "chunk_rows",
        "max_record_pointers",
        "data_docs",
        "refresh",
    }
)
UNIQUENESS_TYPES = frozenset({"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"})


@dataclass(frozen=True)
class Suite:
    """One suite file: its GX JSON (with site severities and thresholds applied) and how to read rows."""

    name: str
    spec: dict[str, Any]
    source: dict[str, Any]

    @property
    def expectations(self) -> list[dict[str, Any]]:
        return self.spec["expectations"]


@dataclass(frozen=True)
class QualitySettings:
    suites: list[Suite]
    parameters: dict[str, Any]
    unmapped_share_max: dict[str, float]
    fhir_structure_max_invalid_share: float
    chunk_rows: int
    max_record_pointers: int
    physiologic_ranges: list[tuple[str, str, str, float, float]]
    site_file: str | None = None
    severities: dict[str, str] = field(default_factory=dict)
    engine: str = "sql"  # "gx": the same suites run in Great Expectations, frame by frame
    data_docs: str = "report"  # rendered by `ehrlift report`; "always": by every run's validate stage
    refresh: str = "changed"  # or "all": every view rebuilt and every suite run, whatever the run wrote

    def unmapped_threshold(self, system: str) -> float:
        return float(self.unmapped_share_max.get(system, self.unmapped_share_max["default"]))


def load_settings(
    root: Path | None = None, site_file: Path | None = None, now: datetime | None = None
) -> QualitySettings:
    """Read expectations/ (suites, thresholds.json, physiologic_ranges.csv) and the site file, if any."""
    root = root or shipped("expectations")
    base = _read_json(root / "thresholds.json")
    site_path = site_file or (Path(os.environ[SITE_FILE_ENV]) if os.environ.get(SITE_FILE_ENV) else None)
    site = _read_json(site_path) if site_path else {}
    unknown = set(site) - _SITE_KEYS
    if unknown:
        raise ConfigError(f"site data-quality file has unknown keys: {sorted(unknown)}")
    params = {**base["parameters"], **site.get("parameters", {})}
    mostly = {**base["mostly"], **site.get("mostly", {})}
    severities = dict(site.get("severities", {}))
    unmapped = {**base["unmapped_share_max"], **site.get("unmapped_share_max", {})}
    suites = [_load_suite(p, mostly, severities) for p in sorted((root / "suites").glob("*.json"))]
    known = {e["meta"]["name"] for s in suites for e in s.expectations}
    for name in set(severities) | (set(mostly) - {"default"}):
        if name not in known:
            raise ConfigError(f"site data-quality file names an unknown expectation: {name!r}")
    settings = QualitySettings(
        suites=suites,
        parameters=_runtime_parameters(params, now or datetime.now(UTC)),
        unmapped_share_max={k: float(v) for k, v in unmapped.items()},
        fhir_structure_max_invalid_share=float(
            site.get("fhir_structure_max_invalid_share", base["fhir_structure_max_invalid_share"])
        ),
        chunk_rows=int(site.get("chunk_rows", base["chunk_rows"])),
        max_record_pointers=int(site.get("max_record_pointers", base["max_record_pointers"])),
        physiologic_ranges=_read_ranges(root / "physiologic_ranges.csv"),
        site_file=str(site_path) if site_path else None,
        severities=severities,
        engine=str(site.get("engine", base.get("engine", "sql"))),
        data_docs=str(site.get("data_docs", base.get("data_docs", "report"))),
        refresh=str(site.get("refresh", base.get("refresh", "changed"))),
    )
    if settings.refresh not in ("changed", "all"):
        raise ConfigError(f"refresh must be 'changed' or 'all', not {settings.refresh!r}")
    if settings.data_docs not in ("report", "always"):
        raise ConfigError(f"data_docs must be 'report' or 'always', not {settings.data_docs!r}")
    if settings.engine not in ("gx", "sql"):
        raise ConfigError(f"engine must be 'gx' or 'sql', not {settings.engine!r}")
    if settings.chunk_rows < 1:
        raise ConfigError("chunk_rows must be at least 1")
    return settings


def _load_suite(path: Path, mostly: dict[str, Any], severities: dict[str, str]) -> Suite:
    spec = _read_json(path)
    spec = copy.deepcopy(spec)
    source = spec.get("meta", {}).get("ehrlift")
    if not source or spec.get("name") != path.stem:
        raise ConfigError(f"{path.name}: a suite needs meta.ehrlift and a name equal to its file name")
    for exp in spec["expectations"]:
        name = exp.get("meta", {}).get("name")
        if not name or not name.startswith(f"{path.stem}."):
            raise ConfigError(f"{path.name}: every expectation needs meta.name starting with the suite name")
        exp["severity"] = severities.get(name, exp.get("severity"))
        if exp["severity"] not in SEVERITIES:
            raise ConfigError(f"{name}: severity must be one of {SEVERITIES}")
        if exp["type"] not in MAP_TYPES:
            raise ConfigError(
                f"{name}: {exp['type']} cannot be evaluated in chunks; use a row-level expectation"
            )
        exp["kwargs"]["mostly"] = float(mostly.get(name, mostly["default"]))
        if not 0.0 <= exp["kwargs"]["mostly"] <= 1.0:
            raise ConfigError(f"{name}: mostly must be between 0 and 1")
    return Suite(path.stem, spec, source)


def _runtime_parameters(params: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Suite parameters substituted for {"$PARAMETER": name}; times are computed once per run."""
    out = dict(params)
    tolerance = timedelta(hours=float(params["future_date_tolerance_hours"]))
    out["latest_allowed_time"] = now + tolerance
    earliest = date.fromisoformat(str(params["earliest_birth_date"]))
    out["earliest_birth_time"] = datetime(earliest.year, earliest.month, earliest.day, tzinfo=UTC)
    return out


def _read_ranges(path: Path) -> list[tuple[str, str, str, float, float]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        lo, hi = float(row["min"]), float(row["max"])
        if lo > hi:
            raise ConfigError(f"{path.name}: min above max for {row['code']} {row['unit']}")
        out.append((row["system"], row["code"], row["unit"], lo, hi))
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"data-quality file not found: {path}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{Path(path).name}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{Path(path).name}: expected a JSON object")
    return data
