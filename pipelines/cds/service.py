"""The one entry point: build the settings and run the CDS Hooks service under uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from pipelines.cds import config as cds_config
from pipelines.cds.app import create_app

log = logging.getLogger("pipelines.cds")


def serve(config_file: Path | None, *, warehouse: Path | None, host: str | None, port: int | None) -> None:
    """Serve until stopped. One process: review links and the jti replay memory live in it.

    TLS is the deployer's reverse proxy (the service listens on loopback by default); access logs are off
    because request paths carry review-link tokens.
    """
    cfg = cds_config.load(config_file, warehouse=warehouse, host=host, port=port)
    if not cfg.issuers:
        log.warning("no trusted issuers configured: every call will be refused with 401")
    uvicorn.run(
        create_app(cfg),
        host=cfg.host,
        port=cfg.port,
        access_log=False,
        log_level="warning",
        workers=1,
        server_header=False,
    )
