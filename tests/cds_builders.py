"""Small builders for the CDS Hooks tests: a warehouse with known migration issues, keys, tokens, a server."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pipelines.cds import config as cds_config
from pipelines.cds.app import create_app
from pipelines.common.warehouse import ensure_resource_table, open_warehouse

RUN = "run-20250101T000000Z-aaaaaa"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.7207"
LOCAL = "urn:ehrlift:hl7v2:legacy:99LOCAL"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
EXT_METHOD = "urn:ehrlift:extension:mapping-method"
ISSUER = "https://ehr.example.org"
RECENT = (date.today() - timedelta(days=5)).isoformat()  # a lab result inside the rules' recent window

# Identity and back-load tables exactly as their contracts name them (owned by other stages).
IDENTITY_DDL = """
CREATE TABLE IF NOT EXISTS ops.identity_links (left_patient_id VARCHAR, right_patient_id VARCHAR,
    method VARCHAR, rule VARCHAR, model_version VARCHAR, score DOUBLE, decision VARCHAR, reviewer VARCHAR,
    run_id VARCHAR, decided_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS ops.person_map (patient_id VARCHAR, person_id VARCHAR, survivor BOOLEAN,
    run_id VARCHAR);
CREATE TABLE IF NOT EXISTS ops.fact_duplicates (resource_type VARCHAR, resource_id VARCHAR,
    survivor_id VARCHAR, dedup_key VARCHAR, rule VARCHAR, run_id VARCHAR);
"""
BACKLOAD_DDL = """
CREATE TABLE IF NOT EXISTS ops.backload_ids (target VARCHAR, resource_type VARCHAR, warehouse_id VARCHAR,
    server_id VARCHAR, version_id VARCHAR, recorded_at TIMESTAMPTZ);
"""


def _coding(system: str, code: str, display: str, method: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"system": system, "code": code, "display": display}
    if method:
        c = {"extension": [{"url": EXT_METHOD, "valueCode": method}], **c}
    return c


class WarehouseBuilder:
    """Rows go in as a migration would leave them: resources with lineage, mapping log, quarantine."""

    def __init__(self, path: Path, *, new_run: bool = True) -> None:
        self.path = path
        self.con = open_warehouse(path)
        if new_run:
            self.con.execute(
                "INSERT INTO ops.runs VALUES (?, now(), now(), 'succeeded', 0, 'test', '{}', NULL)", [RUN]
            )

    def add(
        self, resource: dict[str, Any], *, file: str = "f1", unit: int = 1, source: str = "legacy"
    ) -> None:
        table = ensure_resource_table(self.con, resource["resourceType"])
        self.con.execute(
            f"INSERT INTO {table} VALUES (?, ?, ?, NULL, ?, ?, ?, ?, NULL, FALSE)",
            [resource["id"], json.dumps(resource), source, file, unit, RUN, uuid.uuid4().hex],
        )

    def patient(self, pid: str, mrn: str) -> None:
        self.add(
            {"resourceType": "Patient", "id": pid, "identifier": [{"system": MRN_SYSTEM, "value": mrn}]},
            file=f"adt-{pid}",
        )

    def mapping(self, system: str, code: str, method: str, source: str = "legacy") -> None:
        self.con.execute(
            "INSERT INTO ops.mapping_log (run_id, source_system, source_code, method, data_source, kind) "
            "VALUES (?, ?, ?, ?, ?, 'coding')",
            [RUN, system, code, method, source],
        )

    def quarantine(self, file: str, unit: int, reason: str, rtype: str) -> None:
        self.con.execute(
            "INSERT INTO ops.quarantine VALUES (?, ?, ?, ?, ?, 'structure only', ?, now())",
            [RUN, file, unit, reason, f"landing/{file}#hl7_message={unit}", rtype],
        )

    def close(self) -> None:
        self.con.close()


def issues_warehouse(path: Path, *, identity: bool = True, backload: bool = True) -> WarehouseBuilder:
    """Patient p1 (MRN 1001) has one of every issue; p2 (MRN 1002) is clean; p3 is p1's possible twin."""
    w = WarehouseBuilder(path)
    w.patient("p1", "1001")
    w.patient("p2", "1002")
    w.patient("p3", "1003")
    recent = RECENT
    subject = {"reference": "Patient/p1"}
    # An active problem whose legacy code stayed unmapped.
    w.add(
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": subject,
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "onsetDateTime": "2019-04-02",
            "code": {"coding": [_coding(LOCAL, "DM2", "DIABETES TYPE 2")], "text": "Diabetes type 2"},
        },
        file="oru",
        unit=3,
    )
    w.mapping(LOCAL, "DM2", "unmapped")
    # A resolved problem, also unmapped: not active, so not shown.
    w.add(
        {
            "resourceType": "Condition",
            "id": "c2",
            "subject": subject,
            "clinicalStatus": {"coding": [{"code": "resolved"}]},
            "onsetDateTime": "2010-01-01",
            "code": {"coding": [_coding(LOCAL, "OLD", "OLD PROBLEM")]},
        }
    )
    w.mapping(LOCAL, "OLD", "unmapped")
    # An allergy whose retired code was remapped; the standard coding is penicillin V.
    w.add(
        {
            "resourceType": "AllergyIntolerance",
            "id": "a1",
            "patient": subject,
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "recordedDate": "2018-02-06",
            "code": {
                "coding": [
                    _coding(RXNORM, "999999", "retired penicillin code"),
                    _coding(RXNORM, "7984", "penicillin V", "remap"),
                ]
            },
        }
    )
    w.mapping(RXNORM, "999999", "remap")
    # An active medication, mapped exactly: no review item, but an order for it duplicates it.
    w.add(
        {
            "resourceType": "MedicationRequest",
            "id": "m1",
            "subject": subject,
            "status": "active",
            "authoredOn": "2024-06-01",
            "medicationCodeableConcept": {"coding": [_coding(RXNORM, "860975", "metformin 500 MG")]},
        }
    )
    w.mapping(RXNORM, "860975", "exact")
    # A recent lab result.
    w.add(
        {
            "resourceType": "Observation",
            "id": "o1",
            "subject": subject,
            "status": "final",
            "category": [{"coding": [{"code": "laboratory"}]}],
            "effectiveDateTime": recent,
            "code": {"coding": [_coding(LOINC, "4548-4", "Hemoglobin A1c")]},
        },
        file="oru",
        unit=3,
    )
    w.mapping(LOINC, "4548-4", "exact")
    # The same ORU message also held an OBX that was quarantined, and a conflicting duplicate.
    w.quarantine("oru", 3, "hl7_bad_value_type", "Observation")
    w.quarantine("oru", 3, "conflicting_duplicate", "Observation")
    w.quarantine("oru", 3, "conflicting_duplicate", "Practitioner")  # shared reference data: not this chart
    w.quarantine("other", 9, "invalid_json", None)  # belongs to nobody known
    # p2: a clean chart.
    w.add(
        {
            "resourceType": "Condition",
            "id": "c9",
            "subject": {"reference": "Patient/p2"},
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "onsetDateTime": "2021-01-01",
            "code": {"coding": [_coding(SNOMED, "59621000", "Essential hypertension")]},
        }
    )
    w.mapping(SNOMED, "59621000", "exact")
    if identity:
        w.con.execute(IDENTITY_DDL)
        w.con.execute(
            "INSERT INTO ops.identity_links "
            "VALUES ('p1', 'p3', 'model', NULL, 'm1', 0.71, 'review', NULL, ?, now())",
            [RUN],
        )
        w.add(
            {
                "resourceType": "Observation",
                "id": "o2",
                "subject": subject,
                "status": "final",
                "effectiveDateTime": "2020-01-01",
                "code": {"coding": [_coding(LOINC, "2345-7", "Glucose")]},
            }
        )
        w.con.execute(
            "INSERT INTO ops.fact_duplicates VALUES ('Observation', 'o2', 'o1', 'k', 'same_result', ?)", [RUN]
        )
    if backload:
        w.con.execute(BACKLOAD_DDL)
        w.con.execute(
            "INSERT INTO ops.backload_ids (target, resource_type, warehouse_id, server_id, version_id, "
            "recorded_at) VALUES ('millennium', 'Patient', 'p1', 'EHR-77', '1', now())"
        )
    w.close()
    return w


@dataclass
class Client:
    """A CDS client's signing key and the JWK Set it publishes."""

    key: Any
    kid: str
    alg: str

    @classmethod
    def rsa(cls, kid: str = "k1") -> Client:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), kid, "RS384")

    @classmethod
    def ec(cls, kid: str = "e1") -> Client:
        return cls(ec.generate_private_key(ec.SECP384R1()), kid, "ES384")

    def jwks(self) -> dict[str, Any]:
        algo = jwt.algorithms.RSAAlgorithm if self.alg.startswith("RS") else jwt.algorithms.ECAlgorithm
        jwk = json.loads(algo.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}]}

    def token(
        self,
        aud: str | list[str],
        *,
        iss: str = ISSUER,
        lifetime: int = 60,
        iat_shift: int = 0,
        jti: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time()) + iat_shift
        claims = {"iss": iss, "aud": aud, "iat": now, "exp": now + lifetime, "jti": jti or uuid.uuid4().hex}
        hdr = {"kid": self.kid, "typ": "JWT", **(headers or {})}
        return jwt.encode(claims, self.key, algorithm=self.alg, headers=hdr)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serving(app: Any, sock: socket.socket) -> Iterator[str]:
    """Run an ASGI app under uvicorn on an already bound loopback socket; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def write_config(tmp: Path, base_url: str, client: Client, **extra: Any) -> Path:
    (tmp / "jwks.json").write_text(json.dumps(client.jwks()))
    cfg = {
        "base_url": base_url,
        "issuers": [{"iss": ISSUER, "jwks_file": "jwks.json", **extra.pop("issuer", {})}],
        **extra,
    }
    path = tmp / "cds.json"
    path.write_text(json.dumps(cfg))
    return path


@contextmanager
def service(tmp: Path, warehouse: Path, client: Client, **extra: Any) -> Iterator[str]:
    sock = free_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cfg = cds_config.load(write_config(tmp, base, client, **extra), warehouse=warehouse, host=None, port=None)
    with serving(create_app(cfg), sock) as url:
        yield url
