"""The one typed run configuration, built at the edge (CLI or DAG) and recorded with the run."""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pipelines.common.errors import ConfigError

DEFAULT_DATA_DIR = Path("ehrlift-data")
DEFAULT_SOURCE_SYSTEM = "default"
_SOURCE_SYSTEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# What --fhir-release accepts: "auto" tells each file's release from its content.
FHIR_RELEASES = ("auto", "dstu2", "stu3", "r4")


def ehrlift_version() -> str:
    try:
        return version("ehrlift")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0+unknown"


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: UTC time to the second plus 6 random hex digits."""
    now = now or datetime.now(UTC)
    return f"run-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; written as JSON into ops.runs so a run can be explained later."""

    sources: tuple[str, ...]
    warehouse: Path = DEFAULT_DATA_DIR / "warehouse.duckdb"
    landing: Path | None = None  # default: a `landing` folder beside the warehouse
    source_system: str = DEFAULT_SOURCE_SYSTEM
    batch_size: int = 10_000
    progress: bool = True
    run_id: str = field(default_factory=new_run_id)
    fhir_release: str = "auto"  # the release FHIR sources speak, unless a .fhir-release.csv says otherwise
    workers: int = 0  # conversion processes; 0: EHRLIFT_WORKERS, else every core
    gate_override: str | None = None  # the reason a failed data-quality gate is overridden (recorded)

    def __post_init__(self) -> None:
        if not _SOURCE_SYSTEM.fullmatch(self.source_system):
            raise ConfigError(
                f"source system name {self.source_system!r} is not allowed",
                hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        if self.batch_size < 1:
            raise ConfigError("batch size must be at least 1")
        if self.workers < 0:
            raise ConfigError("workers must be 0 (every core) or more")
        if self.gate_override is not None and not self.gate_override.strip():
            raise ConfigError("a gate override needs a reason")
        if self.fhir_release not in FHIR_RELEASES:
            raise ConfigError(
                f"FHIR release {self.fhir_release!r} is not one ehrlift reads",
                hint=f"use one of {', '.join(FHIR_RELEASES)}",
            )
        # Absolute once, here: a relative path means the working directory of the command, and libraries
        # that change or create directories of their own (GX's temporary project) must not reinterpret it.
        object.__setattr__(self, "warehouse", Path(self.warehouse).absolute())
        if self.landing is None:
            object.__setattr__(self, "landing", self.warehouse.parent / "landing")
        else:
            object.__setattr__(self, "landing", Path(self.landing).absolute())

    @property
    def landing_dir(self) -> Path:
        assert self.landing is not None
        return self.landing

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["warehouse"] = str(self.warehouse)
        out["landing"] = str(self.landing)
        out["sources"] = list(self.sources)
        out["ehrlift_version"] = ehrlift_version()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild from to_dict() output (Airflow passes the config between tasks as JSON)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["sources"] = tuple(kwargs.get("sources", ()))
        if kwargs.get("landing") is not None:
            kwargs["landing"] = Path(kwargs["landing"])
        return cls(**kwargs)

    @classmethod
    def from_env(cls, sources: tuple[str, ...], **overrides: Any) -> RunConfig:
        """Defaults from EHRLIFT_WAREHOUSE / EHRLIFT_SOURCE_SYSTEM / EHRLIFT_FHIR_RELEASE, then overrides."""
        kwargs: dict[str, Any] = {}
        if os.environ.get("EHRLIFT_WAREHOUSE"):
            kwargs["warehouse"] = Path(os.environ["EHRLIFT_WAREHOUSE"])
        if os.environ.get("EHRLIFT_SOURCE_SYSTEM"):
            kwargs["source_system"] = os.environ["EHRLIFT_SOURCE_SYSTEM"]
        if os.environ.get("EHRLIFT_FHIR_RELEASE"):
            kwargs["fhir_release"] = os.environ["EHRLIFT_FHIR_RELEASE"]
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(sources=tuple(sources), **kwargs)
