"""HIPAA Safe Harbor rules for single values (hash, date, ZIP, age), read from schemas/deid/rules.json."""

from __future__ import annotations

import csv
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

from pipelines.common.errors import ConfigError
from pipelines.common.paths import shipped

ACTIONS = ("keep", "drop", "hash", "date", "zip3", "birth_date")
DATE_MODES = ("year", "shift")
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_SHIFT_CACHE = 100_000
_ZIP = re.compile(r"(\d{3})\d{2}(?:-?\d{4})?")


@dataclass(frozen=True)
class ColumnRule:
    action: str
    death_column: str | None = None  # for birth_date: age is counted to death when there is one


@dataclass(frozen=True)
class ViewRules:
    patient_key: str
    columns: dict[str, ColumnRule]


@dataclass(frozen=True)
class Rules:
    version: str
    sha256: str  # of the rules file, recorded in the analyst file so a reviewer knows which rules ran
    salt_env: str
    min_salt_length: int
    date_mode: str
    max_shift_days: int
    age_top: int
    age_label: str
    restricted_zip3: frozenset[str]
    zip_replacement: str
    hash_hex_digits: int
    views: dict[str, ViewRules]


def rules_path() -> Path:
    return shipped("schemas") / "deid" / "rules.json"


def load_rules(path: Path | None = None) -> Rules:
    """Parse and check the rules file; a rule this code does not know is a config error, never ignored."""
    path = path or rules_path()
    raw = path.read_bytes()
    try:
        data = orjson.loads(raw)
        views = {}
        for name, view in data["views"].items():
            columns = {}
            for column, rule in view["columns"].items():
                rule = {"action": rule} if isinstance(rule, str) else rule
                if rule["action"] not in ACTIONS:
                    raise ConfigError(
                        f"de-identification rule {name}.{column}: unknown action {rule['action']!r}"
                    )
                columns[column] = ColumnRule(rule["action"], rule.get("death_column"))
            views[name] = ViewRules(view["patient_key"], columns)
        restricted = _restricted_zip3(path.parent / data["zip"]["restricted_file"])
        rules = Rules(
            version=str(data["version"]),
            sha256=hashlib.sha256(raw).hexdigest(),
            salt_env=data["salt_env"],
            min_salt_length=int(data["min_salt_length"]),
            date_mode=data["dates"]["mode"],
            max_shift_days=int(data["dates"]["max_shift_days"]),
            age_top=int(data["age"]["top_code"]),
            age_label=data["age"]["label"],
            restricted_zip3=restricted,
            zip_replacement=data["zip"]["replacement"],
            hash_hex_digits=int(data["hash_hex_digits"]),
            views=views,
        )
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise ConfigError(f"the de-identification rules {path} are not usable: {exc!r}") from None
    if rules.date_mode not in DATE_MODES:
        raise ConfigError(f"dates.mode must be one of {DATE_MODES}, not {rules.date_mode!r}")
    if rules.max_shift_days < 1:
        raise ConfigError("dates.max_shift_days must be at least 1")
    return rules


def _restricted_zip3(path: Path) -> frozenset[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        codes = frozenset(row["zip3"] for row in csv.DictReader(fh))
    if not all(re.fullmatch(r"\d{3}", c) for c in codes):
        raise ValueError(f"{path.name} must hold 3-digit ZIP prefixes")
    return codes


class Deidentifier:
    """Applies the rules with one secret salt; the salt is held in memory only, never written anywhere."""

    def __init__(
        self, rules: Rules, salt: str, date_mode: str | None = None, as_of: date | None = None
    ) -> None:
        if len(salt) < rules.min_salt_length:
            raise ConfigError(
                f"the de-identification salt must be at least {rules.min_salt_length} characters",
                hint=f"set {rules.salt_env} to a long random secret, kept outside the analyst's reach",
            )
        self.rules = rules
        self._key = salt.encode("utf-8")
        self.date_mode = date_mode or rules.date_mode
        if self.date_mode not in DATE_MODES:
            raise ConfigError(f"date mode must be one of {DATE_MODES}, not {self.date_mode!r}")
        self.as_of = as_of or date.today()
        self._shifts: dict[str, int] = {}

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.digest(self._key, f"{purpose}\x00{value}".encode(), "sha256")

    def hash(self, value: Any) -> str | None:
        """Salted HMAC-SHA256: stable within one salt (joins keep working), not reversible without it."""
        if value is None:
            return None
        return self._mac("id", str(value)).hex()[: self.rules.hash_hex_digits]

    def shift_days(self, patient_key: str) -> int:
        """A per-patient offset in ±[1, max_shift_days], never 0, the same for every date of that patient."""
        days = self._shifts.get(patient_key)
        if days is None:
            n = int.from_bytes(self._mac("date-shift", patient_key)[:8], "big")
            days = n % self.rules.max_shift_days + 1
            days = -days if (n >> 63) & 1 else days
            if len(self._shifts) >= _SHIFT_CACHE:  # bounded memory however many patients a view has
                self._shifts.clear()
            self._shifts[patient_key] = days
        return days

    def date(self, value: Any, patient_key: str | None) -> str | None:
        """year mode: 'YYYY'. shift mode: the date moved by the patient's offset, time of day and zone kept;
        a partial date (year, year-month) or a row without a patient keeps only its year."""
        if value is None:
            return None
        text = value.isoformat() if isinstance(value, date) else str(value)
        m = _DATE.match(text)
        if not m:
            return None  # not a date we can reduce: withheld rather than passed through
        year, month, day = m.groups()
        if self.date_mode == "year" or day is None or patient_key is None:
            return year
        try:
            moved = date(int(year), int(month), int(day)) + timedelta(days=self.shift_days(patient_key))
        except ValueError:
            return year
        return moved.isoformat() + text[m.end() :]

    def zip3(self, value: Any) -> str | None:
        """First three digits of a US ZIP; a restricted (sparsely populated) area becomes 000."""
        if value is None:
            return None
        m = _ZIP.fullmatch(str(value).strip())
        if not m:
            return None
        prefix = m.group(1)
        return self.rules.zip_replacement if prefix in self.rules.restricted_zip3 else prefix

    def age(self, birth: Any, death: Any = None) -> int | None:
        """Whole years at death or at the as-of date, top-coded: 90 and over is 90 (see over_top)."""
        born = _full_date(birth)
        end = _full_date(death) or self.as_of
        if born is None:
            # A year or year-month only: the youngest age it allows decides the top code, else unknown.
            m = _DATE.match(_text(birth)) if birth is not None else None
            if m and end.year - int(m.group(1)) - 1 >= self.rules.age_top:
                return self.rules.age_top
            return None
        years = end.year - born.year - ((end.month, end.day) < (born.month, born.day))
        if years < 0:
            return None
        return min(years, self.rules.age_top)

    def over_top(self, birth: Any, death: Any = None) -> bool | None:
        """The Safe Harbor flag: the age is 90 or over (its exact value withheld); None when unknown."""
        years = self.age(birth, death)
        return None if years is None else years >= self.rules.age_top

    def birth_date(self, birth: Any, death: Any, patient_key: str | None) -> str | None:
        """The birth date under the date rule; none for ages 90 and over (even its year reveals the age)."""
        if self.over_top(birth, death):
            return None
        return self.date(birth, patient_key)


def _text(value: Any) -> str:
    """ISO text of a date value: typed views give date and datetime objects, older files strings."""
    return value.isoformat() if isinstance(value, date) else str(value)


def truncate(value: Any, precision: str | None) -> Any:
    """A typed partial date back to the precision the source gave (year: 'YYYY', month: 'YYYY-MM')."""
    if value is None or precision not in ("year", "month"):
        return value
    return _text(value)[: 4 if precision == "year" else 7]


def _full_date(value: Any) -> date | None:
    if value is None:
        return None
    m = _DATE.match(_text(value))
    if not m or m.group(3) is None:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None
