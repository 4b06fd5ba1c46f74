"""The identity stage's data files (schemas/identity/): rules, model, blocking, guards, thresholds."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipelines.common.errors import ConfigError
from pipelines.common.paths import shipped

_FILES = ("rules", "model", "blocking", "guards", "thresholds", "survivorship", "facts")


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    folder: Path
    rules: dict[str, Any]
    model: dict[str, Any]
    blocking: list[str]
    guards: list[dict[str, str]]
    thresholds: dict[str, Any]
    survivorship: dict[str, Any]
    facts: dict[str, Any]
    nicknames: list[tuple[str, str]]
    given_names: list[str]

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self.rules.get("identifier_aliases", {}))

    def version(self) -> str:
        """A digest of every data file, so a run records which rules and priors it used."""
        h = hashlib.sha256()
        for name in (*_FILES, "nicknames", "given_names"):
            path = self.folder / (f"{name}.csv" if name in ("nicknames", "given_names") else f"{name}.json")
            h.update(path.read_bytes())
        return h.hexdigest()[:16]


def default_folder() -> Path:
    return shipped("schemas") / "identity"


def load_config(folder: Path | None = None) -> IdentityConfig:
    """Read and check the data files; a missing or malformed one stops the run with exit status 5."""
    folder = Path(folder) if folder else default_folder()
    data: dict[str, Any] = {}
    for name in _FILES:
        path = folder / f"{name}.json"
        try:
            data[name] = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"identity data file {name}.json is missing", hint=str(folder)) from None
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"identity data file {name}.json is not valid JSON ({exc})") from None
    try:
        text = (folder / "nicknames.csv").read_text(encoding="utf-8")
        nicknames = [(r["nickname"].upper(), r["given"].upper()) for r in csv.DictReader(io.StringIO(text))]
    except (FileNotFoundError, KeyError):
        raise ConfigError("identity data file nicknames.csv is missing or lacks nickname,given") from None
    try:
        text = (folder / "given_names.csv").read_text(encoding="utf-8")
        given_names = [r["given"] for r in csv.DictReader(io.StringIO(text))]
    except (FileNotFoundError, KeyError):
        raise ConfigError("identity data file given_names.csv is missing or lacks a given column") from None
    t = data["thresholds"]
    if not 0 <= t.get("record_floor", -1) <= t.get("review", -1) <= t.get("link", -1) <= 1:
        raise ConfigError("thresholds.json: need 0 <= record_floor <= review <= link <= 1")
    rules = data["blocking"].get("rules")
    if not rules or not all(isinstance(r, str) for r in rules):
        raise ConfigError("blocking.json: rules must be a non-empty list of SQL conditions")
    for guard in data["guards"].get("guards", []):
        if guard.get("outcome") not in ("no_link", "review") or not guard.get("name") or not guard.get("sql"):
            raise ConfigError("guards.json: each guard needs a name, sql and outcome no_link or review")
    model = {k: v for k, v in data["model"].items() if k != "description"}
    return IdentityConfig(
        folder=folder,
        rules=data["rules"],
        model=model,
        blocking=rules,
        guards=data["guards"].get("guards", []),
        thresholds=t,
        survivorship=data["survivorship"],
        facts=data["facts"],
        nicknames=nicknames,
        given_names=given_names,
    )
