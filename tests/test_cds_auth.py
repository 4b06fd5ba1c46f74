"""CDS Hooks client authentication: every JWT failure mode gets 401; jku only from the allow-list."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest

from tests.cds_builders import ISSUER, Client, issues_warehouse, service

REVIEW = "ehrlift-migration-review"
BODY = {
    "hook": "patient-view",
    "hookInstance": "h-1",
    "context": {"userId": "Practitioner/u1", "patientId": "EHR-77"},
}


@pytest.fixture(scope="module")
def wh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cdsauth") / "wh.duckdb"
    issues_warehouse(path)
    return path


def post(base: str, token: str | None, path: str = f"/cds-services/{REVIEW}") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(base + path, json=BODY, headers=headers, timeout=10)


def refused(resp: httpx.Response, reason: str) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert resp.json()["issue"][0]["diagnostics"] == reason


def test_every_jwt_failure_mode_is_401(tmp_path, wh):
    client, stranger = Client.rsa(), Client.rsa()  # the stranger signs with the same kid, another key
    with service(tmp_path, wh, client) as base:
        url = f"{base}/cds-services/{REVIEW}"
        ok = post(base, client.token(url))
        refused(post(base, None), "no bearer token")
        refused(
            httpx.post(url, json=BODY, headers={"Authorization": "Basic abc"}, timeout=10), "no bearer token"
        )
        refused(post(base, "not.a.jwt"), "the token is not a JWT")
        refused(post(base, stranger.token(url)), "bad signature")
        refused(post(base, client.token(url, iss="https://evil.example.org")), "unknown issuer")
        refused(
            post(base, client.token(f"{base}/cds-services/other")), "the token's aud is not this endpoint"
        )
        refused(post(base, client.token(url, iat_shift=-600)), "expired token")
        refused(post(base, client.token(url, iat_shift=600)), "the token is issued in the future")
        refused(post(base, client.token(url, lifetime=3600)), "the token lives longer than allowed")
        replayed = client.token(url, jti="once")
        assert post(base, replayed).status_code == 200
        refused(post(base, replayed), "replayed jti")
        hs = jwt.encode(
            {"iss": ISSUER, "aud": url, "iat": 1, "exp": 2, "jti": "x"},
            "secret" * 8,
            algorithm="HS256",
            headers={"kid": "k1"},
        )
        refused(post(base, hs), "the token's algorithm is not an allowed asymmetric one")
        refused(post(base, client.token(url, headers={"kid": "other"})), "no key with the token's kid")
        no_jti = jwt.encode(
            {"iss": ISSUER, "aud": url, "iat": int(time.time()), "exp": int(time.time()) + 60},
            client.key,
            algorithm=client.alg,
            headers={"kid": client.kid, "typ": "JWT"},
        )
        refused(post(base, no_jti), "the token lacks the jti claim")
        good = client.token(url)
        refused(post(base, good[:-2] + "*" + good[-1:]), "the token is not a JWT")  # not base64url
        assert post(base, client.token([url, "https://other.example.org"])).status_code == 200  # aud list
        refused(
            post(base, client.token(url, headers={"jku": "https://evil.example.org/jwks"})),
            "the token's jku is not allow-listed for its issuer",
        )
        discovery = httpx.get(f"{base}/cds-services", timeout=10)
        feedback = httpx.post(f"{url}/feedback", json={"feedback": []}, timeout=10)
    assert ok.status_code == 200
    refused(discovery, "no bearer token")
    refused(feedback, "no bearer token")


class _Jwks(BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


def test_jku_from_the_allow_list_is_fetched_and_es384_verifies(tmp_path, wh):
    client = Client.ec()
    handler = type("H", (_Jwks,), {"body": json.dumps(client.jwks()).encode()})
    jwks_server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=jwks_server.serve_forever, daemon=True)
    thread.start()
    jku = f"http://127.0.0.1:{jwks_server.server_address[1]}/jwks.json"
    try:
        with service(tmp_path, wh, Client.rsa(), issuer={"jku": [jku]}) as base:
            url = f"{base}/cds-services/{REVIEW}"
            resp = post(base, client.token(url, headers={"jku": jku}))
            without_jku = post(base, client.token(url))  # the out-of-band set holds another key
    finally:
        jwks_server.shutdown()
        thread.join(timeout=10)
    assert resp.status_code == 200 and resp.json()["cards"]
    refused(without_jku, "no key with the token's kid")


def test_cors_only_for_allow_listed_origins(tmp_path, wh):
    client = Client.rsa()
    with service(tmp_path, wh, client, cors_origins=["https://ehr-ui.example.org"]) as base:
        url = f"{base}/cds-services/{REVIEW}"
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        }
        allowed = httpx.options(
            url, headers={"Origin": "https://ehr-ui.example.org", **preflight}, timeout=10
        )
        other = httpx.options(url, headers={"Origin": "https://evil.example.org", **preflight}, timeout=10)
        call = httpx.post(
            url,
            json=BODY,
            timeout=10,
            headers={"Origin": "https://ehr-ui.example.org", "Authorization": f"Bearer {client.token(url)}"},
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://ehr-ui.example.org"
    assert "access-control-allow-origin" not in other.headers
    assert (
        call.status_code == 200
        and call.headers["access-control-allow-origin"] == "https://ehr-ui.example.org"
    )


def test_replay_memory_and_review_links_stay_bounded():
    from pipelines.cds.auth import Unauthorized, Verifier
    from pipelines.cds.page import Links

    verifier, now = Verifier([], leeway=0), time.time()
    for i in range(10_050):
        verifier._once("iss", f"old-{i}", now - 1)  # tokens already expired
    verifier._once("iss", "live", now + 60)
    assert len(verifier._seen) < 100  # swept once past 10,000 entries
    with pytest.raises(Unauthorized, match="replayed jti"):
        verifier._once("iss", "live", now + 60)
    links = Links(60, limit=10)
    tokens = [links.issue(f"person-{i}") for i in range(25)]
    assert len(links._tokens) <= 10
    assert links.person(tokens[-1]) == "person-24" and links.person(tokens[0]) is None
