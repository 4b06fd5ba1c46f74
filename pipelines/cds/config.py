"""The service's typed settings: built once from the config file (data) and the command line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.cds.auth import Issuer, issuer_from_config
from pipelines.common.config import DEFAULT_DATA_DIR
from pipelines.common.errors import ConfigError


@dataclass(frozen=True)
class CdsConfig:
    """What `ehrlift cds-hooks serve` runs with; the config file is JSON (README, CDS Hooks section)."""

    warehouse: Path
    base_url: str  # the public URL clients call (behind the TLS proxy); every token's aud is built from it
    issuers: list[Issuer]
    host: str = "127.0.0.1"
    port: int = 8090
    rules: Path | None = None
    matching: Path | None = None  # order-matching rules; default schemas/cds/matching.json
    spool: Path | None = None  # audit and feedback queue; default beside the warehouse
    fhir_timeout: float = 3.0
    refresh_seconds: float = 300.0
    link_ttl_seconds: float = 3600.0
    leeway_seconds: float = 30.0
    max_token_lifetime: float = 300.0
    jwks_ttl_seconds: float = 300.0
    cors_origins: tuple[
        str, ...
    ] = ()  # browser-based CDS clients allowed to call (exact origins); none by default
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spool_path(self) -> Path:
        return self.spool or self.warehouse.with_name(self.warehouse.name + ".cds-spool.jsonl")


def load(path: Path | None, *, warehouse: Path | None, host: str | None, port: int | None) -> CdsConfig:
    """Read the config file (optional: without it no issuer is trusted and every call gets 401)."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the CDS Hooks config file: {exc}") from None
        base = path.parent
    if not isinstance(data, dict):
        raise ConfigError("the CDS Hooks config file must hold a JSON object")
    host = host or data.get("host") or "127.0.0.1"
    port = port if port is not None else int(data.get("port", 8090))
    try:
        issuers = [issuer_from_config(e, base) for e in data.get("issuers", [])]
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"an issuers entry of the CDS Hooks config is invalid: {exc}") from None
    wh = warehouse or (
        Path(data["warehouse"]) if data.get("warehouse") else DEFAULT_DATA_DIR / "warehouse.duckdb"
    )
    return CdsConfig(
        warehouse=wh,
        base_url=str(data.get("base_url") or f"http://{host}:{port}").rstrip("/"),
        issuers=issuers,
        host=host,
        port=port,
        rules=base / data["rules"] if data.get("rules") else None,
        matching=base / data["matching"] if data.get("matching") else None,
        spool=base / data["spool"] if data.get("spool") else None,
        fhir_timeout=float(data.get("fhir_timeout_seconds", 3.0)),
        refresh_seconds=float(data.get("refresh_seconds", 300.0)),
        link_ttl_seconds=float(data.get("link_ttl_seconds", 3600.0)),
        leeway_seconds=float(data.get("leeway_seconds", 30.0)),
        max_token_lifetime=float(data.get("max_token_lifetime_seconds", 300.0)),
        jwks_ttl_seconds=float(data.get("jwks_ttl_seconds", 300.0)),
        cors_origins=tuple(str(o) for o in data.get("cors_origins", [])),
    )
