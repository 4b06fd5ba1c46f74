"""CDS Hooks benchmark: patient-view latency of ehrlift's service vs a bare Starlette endpoint, same settings.

    uv run python bench/cds_hooks.py [--patients 10000] [--requests 2000] [--rounds 5] [--clients 1,8,32]
        [--repeat 3]

Generates a warehouse of N patients in DuckDB (each with a Patient and its MRN, ~5 problems (one in ten
with an unmapped local code), 3 medications, an allergy for every third, 40 observations, quarantined
units for one in twenty, identity links awaiting review for one in fifty), cached under bench/out/. Then
starts both servers, each its own process under uvicorn (one worker, loopback, access log off), and in
each of --repeat runs drives patient-view calls at 1, 8 and 32 concurrent clients (asyncio + httpx,
keep-alive), the two servers alternating in rounds at each level so that the shared machine's load falls
on both alike;
each call carries a freshly signed RS384 JWT (signed before timing) and a `patient` prefetch with a
random patient's MRN. The bare endpoint returns one fixed card and checks nothing: it is the floor of
HTTP + JSON under the same server settings. Prints, per run, p50/p95/p99 per server and concurrency, the
ratio of p95s and the 1-minute load average (targets: ehrlift p95 <= 2x bare and <= 100 ms at 8
clients, both in the same run). Writes every run to bench/out/cds_hooks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
MRN = "urn:oid:2.16.840.1.113883.3.7207"
ISSUER = "https://bench-ehr.example.org"
SERVICE = "ehrlift-migration-review"

_BUILD = """
INSERT INTO ops.runs VALUES ('run-bench', now(), now(), 'succeeded', 0, 'bench', '{}', NULL);
CREATE TABLE fhir."Patient" AS SELECT * FROM fhir_template LIMIT 0;
INSERT INTO fhir."Patient"
SELECT 'p' || i, json_object('resourceType', 'Patient', 'id', 'p' || i,
        'identifier', json_array(json_object('system', '{mrn}', 'value', (100000 + i)::VARCHAR))),
       'legacy', NULL, 'adt', i, 'run-bench', md5('p' || i), NULL, FALSE
FROM range($patients) t(i);
CREATE TABLE fhir."Condition" AS SELECT * FROM fhir_template LIMIT 0;
INSERT INTO fhir."Condition"
SELECT 'c' || i, json_object('resourceType', 'Condition', 'id', 'c' || i,
        'subject', json_object('reference', 'Patient/p' || (i // 5)),
        'clinicalStatus', json_object('coding', json_array(json_object('code',
            CASE WHEN i % 3 = 0 THEN 'resolved' ELSE 'active' END))),
        'onsetDateTime', strftime(DATE '2005-01-01' + INTERVAL (i % 6000) DAY, '%Y-%m-%d'),
        'code', json_object('coding', json_array(CASE WHEN i % 10 = 0
            THEN json_object('system', 'urn:ehrlift:hl7v2:legacy:99DX', 'code', 'L' || (i % 50),
                             'display', 'LOCAL DX ' || (i % 50))
            ELSE json_object('system', 'http://snomed.info/sct', 'code', (40000000 + i % 300)::VARCHAR,
                             'display', 'Problem ' || (i % 300)) END))),
       'legacy', NULL, 'ccd', i // 5, 'run-bench', md5('c' || i), NULL, FALSE
FROM range($patients * 5) t(i);
CREATE TABLE fhir."MedicationRequest" AS SELECT * FROM fhir_template LIMIT 0;
INSERT INTO fhir."MedicationRequest"
SELECT 'm' || i, json_object('resourceType', 'MedicationRequest', 'id', 'm' || i,
        'status', CASE WHEN i % 2 = 0 THEN 'active' ELSE 'completed' END,
        'subject', json_object('reference', 'Patient/p' || (i // 3)),
        'authoredOn', strftime(DATE '2015-01-01' + INTERVAL (i % 3000) DAY, '%Y-%m-%d'),
        'medicationCodeableConcept', json_object('coding', json_array(json_object(
            'system', 'http://www.nlm.nih.gov/research/umls/rxnorm', 'code', (300000 + i % 80)::VARCHAR,
            'display', 'Drug ' || (i % 80))))),
       'legacy', NULL, 'rx', i // 3, 'run-bench', md5('m' || i), NULL, FALSE
FROM range($patients * 3) t(i);
CREATE TABLE fhir."AllergyIntolerance" AS SELECT * FROM fhir_template LIMIT 0;
INSERT INTO fhir."AllergyIntolerance"
SELECT 'a' || i, json_object('resourceType', 'AllergyIntolerance', 'id', 'a' || i,
        'patient', json_object('reference', 'Patient/p' || (i * 3)),
        'clinicalStatus', json_object('coding', json_array(json_object('code', 'active'))),
        'code', json_object('coding', json_array(json_object(
            'system', 'http://www.nlm.nih.gov/research/umls/rxnorm', 'code', (7980 + i % 10)::VARCHAR,
            'display', 'Allergen ' || (i % 10))))),
       'legacy', NULL, 'ccd', i * 3, 'run-bench', md5('a' || i), NULL, FALSE
FROM range($patients // 3) t(i);
CREATE TABLE fhir."Observation" AS SELECT * FROM fhir_template LIMIT 0;
INSERT INTO fhir."Observation"
SELECT 'o' || i, json_object('resourceType', 'Observation', 'id', 'o' || i, 'status', 'final',
        'subject', json_object('reference', 'Patient/p' || (i // 40)),
        'category', json_array(json_object('coding', json_array(json_object('code', 'laboratory')))),
        'effectiveDateTime', strftime(TIMESTAMP '2010-01-01' + INTERVAL (i % 5000) DAY, '%Y-%m-%dT%H:%M:%SZ'),
        'code', json_object('coding', json_array(json_object('system', 'http://loinc.org',
            'code', (2000 + i % 60)::VARCHAR || '-1', 'display', 'Test ' || (i % 60))))),
       'legacy', NULL, 'oru', i // 40, 'run-bench', md5('o' || i), NULL, FALSE
FROM range($patients * 40) t(i);
INSERT INTO ops.mapping_log (run_id, source_system, source_code, method, data_source, kind)
SELECT 'run-bench', 'urn:ehrlift:hl7v2:legacy:99DX', 'L' || i, 'unmapped', 'legacy', 'coding'
FROM range(50) t(i)
UNION ALL SELECT 'run-bench', 'http://snomed.info/sct', (40000000 + i)::VARCHAR, 'exact', 'legacy', 'coding'
FROM range(300) t(i)
UNION ALL SELECT 'run-bench', 'http://loinc.org', (2000 + i)::VARCHAR || '-1', 'exact', 'legacy', 'coding'
FROM range(60) t(i);
INSERT INTO ops.quarantine
SELECT 'run-bench', 'oru', i * 20, 'hl7_bad_value_type', 'landing/oru#hl7_message=' || (i * 20),
       'structure only', 'Observation', now()
FROM range($patients // 20) t(i);
INSERT INTO ops.identity_links
SELECT 'p' || (i * 50), 'p' || (i * 50 + 1), 'model', NULL, 'm', 0.7, 'review', NULL, 'run-bench', now()
FROM range($patients // 50) t(i);
"""

_BARE = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
CARD = {"cards": [{"uuid": "0b1f6a4e-9d0e-4a53-a5f4-2f8f4c1f0c11", "summary": "Migrated chart",
                   "indicator": "info", "source": {"label": "bare"}}]}
async def service(request):
    await request.body()
    return JSONResponse(CARD)
app = Starlette(routes=[Route("/cds-services/{sid}", service, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="warning",
            workers=1, server_header=False)
"""


def build(path: Path, patients: int) -> None:
    from pipelines.common.warehouse import RESOURCE_TABLE_DDL, open_warehouse

    con = open_warehouse(path)
    con.execute(RESOURCE_TABLE_DDL.replace('fhir."{rtype}"', "fhir_template"))
    for statement in filter(str.strip, _BUILD.replace("{mrn}", MRN).split(";\n")):
        con.execute(statement, {"patients": patients} if "$patients" in statement else None)
    con.execute("DROP TABLE fhir_template")
    con.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)})
    for _ in range(1200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("a server did not start")


def tokens(key, url: str, n: int) -> list[str]:
    import jwt

    now = int(time.time())
    return [
        jwt.encode(
            {"iss": ISSUER, "aud": url, "iat": now, "exp": now + 290, "jti": uuid.uuid4().hex},
            key,
            algorithm="RS384",
            headers={"kid": "bench", "typ": "JWT"},
        )
        for _ in range(n)
    ]


async def drive(
    url: str, toks: list[str], patients: int, clients: int, key=None, resets: list[int] | None = None
) -> list[float]:
    import httpx

    resets = resets if resets is not None else []
    rng = random.Random(7)
    bodies = [
        {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/bench", "patientId": f"ehr-{i}"},
            "prefetch": {
                "patient": {
                    "resourceType": "Patient",
                    "identifier": [{"system": MRN, "value": str(100000 + rng.randrange(patients))}],
                }
            },
        }
        for i in range(len(toks))
    ]
    queue = list(zip(toks, bodies, strict=True))
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            tok, body = queue.pop()
            for attempt in range(3):
                t0 = time.perf_counter()
                try:
                    resp = await http.post(url, json=body, headers={"Authorization": f"Bearer {tok}"})
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    # A kept-alive connection the server closed just as it was reused (uvicorn closes
                    # idle ones after 5 s; a starved client can sit that long): counted, sent again with a
                    # fresh token (the first may have been seen), not timed.
                    resets.append(attempt)
                    tok = tokens(key, url, 1)[0]
                    continue
                latencies.append(time.perf_counter() - t0)
                if resp.status_code != 200:
                    raise SystemExit(f"HTTP {resp.status_code}: {resp.text[:200]}")
                break
            else:
                raise SystemExit("a request failed three times on reset connections")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies


def measure(urls: dict[str, str], key, args: argparse.Namespace, clients: int) -> dict[str, dict]:
    """Both servers at one level, alternating in rounds so that load changes fall on both alike."""
    lat: dict[str, list[float]] = {name: [] for name in urls}
    resets: dict[str, list[int]] = {name: [] for name in urls}
    per_round = max(1, args.requests // args.rounds)
    for _ in range(args.rounds):
        for name, url in urls.items():
            toks = tokens(key, url, per_round)
            lat[name] += asyncio.run(drive(url, toks, args.patients, clients, key, resets[name]))
    return {
        name: {**{f"p{q}": round(pct(lat[name], q), 2) for q in (50, 95, 99)}, "resets": len(resets[name])}
        for name in urls
    }


def pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000
        if len(values) > 1
        else values[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument(
        "--requests", type=int, default=2000, help="timed requests per concurrency level and server"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds the requests are split in")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--repeat", type=int, default=3, help="runs, each measuring every level once")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    work = OUT / "cds_hooks"
    work.mkdir(parents=True, exist_ok=True)
    wh = work / f"warehouse-{args.patients}.duckdb"
    if not wh.exists():
        t0 = time.perf_counter()
        build(wh, args.patients)
        print(f"built a {args.patients}-patient warehouse in {time.perf_counter() - t0:.1f} s")
    for leftover in work.glob("*.cds-spool.jsonl*"):
        leftover.unlink()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "bench", "alg": "RS384"}
    (work / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    levels = [int(c) for c in args.clients.split(",")]
    urls: dict[str, str] = {}
    procs: list[subprocess.Popen] = []
    try:
        # Both servers stay up for the whole run and are measured back to back at each level, so a change
        # in the shared machine's load falls on both sides of a ratio rather than on one server's turn.
        for name in ("bare", "ehrlift"):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            t0 = time.perf_counter()
            procs.append(start(_command(name, port, base, work, wh), port))
            if name == "ehrlift":
                print(f"ehrlift service up (snapshot taken) in {time.perf_counter() - t0:.1f} s")
            urls[name] = f"{base}/cds-services/{SERVICE}"
            asyncio.run(drive(urls[name], tokens(key, urls[name], 50), args.patients, 4, key))  # warm-up
        runs = []
        for rep in range(1, args.repeat + 1):
            run: dict[str, Any] = {"run": rep, "levels": {}}
            for clients in levels:
                load = os.getloadavg()[0]
                run["levels"][clients] = measure(urls, key, args, clients)
                run["levels"][clients]["load1"] = round(load, 2)
            runs.append(run)
            report(run, args, levels)
    except Exception:
        # Say whether a server itself went away (a crash) or only the connection did.
        print(f"server exit statuses while measuring: {[p.poll() for p in procs]}", file=sys.stderr)
        raise
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)
    (OUT / "cds_hooks.json").write_text(
        json.dumps(
            {
                "patients": args.patients,
                "requests": args.requests,
                "rounds": args.rounds,
                "cpus": os.cpu_count(),
                "runs": runs,
            },
            indent=2,
        )
    )


def _command(name: str, port: int, base: str, work: Path, wh: Path) -> list[str]:
    if name == "bare":
        return [sys.executable, "-c", _BARE, str(port)]
    cfg = work / "cds.json"
    cfg.write_text(
        json.dumps(
            {
                "base_url": base,
                "issuers": [{"iss": ISSUER, "jwks_file": "jwks.json"}],
                "refresh_seconds": 3600,
            }
        )
    )
    return [
        sys.executable,
        "-m",
        "pipelines.cli",
        "cds-hooks",
        "serve",
        "--port",
        str(port),
        "--warehouse",
        str(wh),
        "--config",
        str(cfg),
    ]


def report(run: dict[str, Any], args: argparse.Namespace, levels: list[int]) -> None:
    """One run's table: every level's percentiles for both servers, the p95 ratio and the load average."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(
        f"\nrun {run['run']} ({stamp}; {args.patients} patients, {args.requests} requests per level and "
        f"server in {args.rounds} alternating rounds, {os.cpu_count()} CPUs; load1 = 1-minute load average "
        "at the start of each level)"
    )
    print(
        f"{'clients':>7} {'load1':>6} {'server':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'p95 ratio':>9}"
    )
    for clients in levels:
        row = run["levels"][clients]
        ratio = row["ehrlift"]["p95"] / row["bare"]["p95"]
        for name in ("bare", "ehrlift"):
            r = row[name]
            tail = f"{ratio:>8.2f}x" if name == "ehrlift" else ""
            print(
                f"{clients:>7} {row['load1']:>6.2f} {name:>8} {r['p50']:>8.2f} {r['p95']:>8.2f} "
                f"{r['p99']:>8.2f} {tail:>9}"
                + (f"  ({r['resets']} reset connections retried)" if r["resets"] else "")
            )
    eight = run["levels"].get(8)
    if eight:
        p95, ratio8 = eight["ehrlift"]["p95"], eight["ehrlift"]["p95"] / eight["bare"]["p95"]
        print(
            f"targets at 8 clients: p95 {p95:.1f} ms <= 100 ms: {p95 <= 100}; "
            f"p95 {ratio8:.2f}x bare <= 2x: {ratio8 <= 2}; both: {p95 <= 100 and ratio8 <= 2}"
        )


if __name__ == "__main__":
    main()
