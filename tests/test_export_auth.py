"""SMART Backend Services for `ehrlift export`: assertions, the Authlib token endpoint, token use."""

from __future__ import annotations

import re
import time

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pipelines.common.errors import ConfigError
from pipelines.export.auth import BackendAuth, SigningKey, load_signing_key
from pipelines.export.client import BulkClient
from pipelines.export.runner import run_export
from pipelines.export.state import ExportState
from pipelines.export.web import RemoteError
from tests.bulk_server import BulkServer, Faults, generated_resources
from tests.test_export import FAST, T0, Sleeps, options


@pytest.fixture
def data() -> dict[str, list[dict]]:
    return generated_resources(5, T0)


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(key, kid: str, alg: str, private: bool) -> dict:
    algo = jwt.algorithms.RSAAlgorithm if alg == "RS384" else jwt.algorithms.ECAlgorithm
    jwk = algo.to_jwk(key if private else key.public_key(), as_dict=True)
    return {"keys": [{**jwk, "kid": kid, "alg": alg}]}


@pytest.fixture(scope="module")
def keys() -> dict:
    rsa_key = _rsa_key()
    ec_key = ec.generate_private_key(ec.SECP384R1())
    return {"RS384": rsa_key, "ES384": ec_key, "other": _rsa_key()}


def _auth_server(data, keys, **kwargs) -> BulkServer:
    server = BulkServer(data, require_auth=True, **kwargs)
    public = {
        "keys": _jwks(keys["RS384"], "k-rsa", "RS384", False)["keys"]
        + _jwks(keys["ES384"], "k-ec", "ES384", False)["keys"]
    }
    server.register_client("client-1", public)
    return server


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_authenticated_export_reuses_one_token(tmp_path, data, keys, alg):
    kid = "k-rsa" if alg == "RS384" else "k-ec"
    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys[alg], kid, alg, True)))
    with _auth_server(data, keys) as server:
        result = run_export(
            options(server, tmp_path, client_id="client-1", key_file=key_file), sleep=Sleeps()
        )
        assert server.requests("GET", "/fhir/.well-known") == ["/fhir/.well-known/smart-configuration"]
        assert server.requests("POST", "/auth/token") == ["/auth/token"]  # one token for the whole export
        assert all(server.with_token("/files/")) and all(server.with_token("/jobs/"))
        assert not any(server.with_token("/auth/"))
        assert server.with_token("/fhir/metadata") == [True]  # the server asks for a token there too
    assert sum(result.resources.values()) == 25 and result.fhir_release == "r4"


def test_files_get_no_token_when_the_manifest_does_not_require_one(tmp_path, data, keys):
    key_file = tmp_path / "k.pem"
    key_file.write_bytes(
        keys["RS384"].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with _auth_server(data, keys, requires_access_token=False) as server:
        opts = options(server, tmp_path, client_id="client-1", key_file=key_file, kid="k-rsa")
        run_export(opts, sleep=Sleeps())
        assert server.with_token("/files/") and not any(server.with_token("/files/"))
        assert all(server.with_token("/fhir/$export"))


def test_a_refused_token_is_refreshed_once(tmp_path, data, keys):
    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys["RS384"], "k-rsa", "RS384", True)))
    with _auth_server(data, keys, faults=Faults(expire_token=1)) as server:
        result = run_export(
            options(server, tmp_path, client_id="client-1", key_file=key_file, workers=1), sleep=Sleeps()
        )
        statuses = [s for _m, p, s, _a in server.log if p.startswith("/files/")]
        assert statuses.count(401) == 1 and statuses.count(200) == 5
        assert len(server.requests("POST", "/auth/token")) == 2
    assert sum(result.resources.values()) == 25


def test_token_is_refreshed_before_expiry(tmp_path, data, keys):
    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys["RS384"], "k-rsa", "RS384", True)))
    # A token that lives 30 s is within the 60 s refresh margin at once: each use gets a new one.
    with _auth_server(data, keys, token_lifetime=30) as server:
        run_export(
            options(server, tmp_path, client_id="client-1", key_file=key_file, workers=1), sleep=Sleeps()
        )
        assert len(server.requests("POST", "/auth/token")) > 3
        assert not [s for _m, _p, s, _a in server.log if s == 401]


def _post_assertion(server: BulkServer, assertion: str) -> httpx.Response:
    return httpx.post(
        server.token_url,
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.read",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )


def _claims(server: BulkServer, **overrides) -> dict:

    now = int(time.time())
    claims = {
        "iss": "client-1",
        "sub": "client-1",
        "aud": server.token_url,
        "exp": now + 240,
        "iat": now,
        "jti": "j1",
    }
    claims.update(overrides)
    return claims


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("good", None),
        ("bad-signature", "invalid_client"),
        ("wrong-audience", "invalid_client"),
        ("expired", "invalid_client"),
        ("unknown-kid", "invalid_client"),
        ("rs256", "invalid_client"),
        ("unknown-client", "invalid_client"),
        ("too-long-lived", "invalid_client"),
    ],
)
def test_token_endpoint_checks_the_assertion(data, keys, case, error):

    with _auth_server(data, keys) as server:
        key, kid, alg, claims = keys["RS384"], "k-rsa", "RS384", _claims(server, jti=case)
        if case == "bad-signature":
            key = keys["other"]
        elif case == "wrong-audience":
            claims["aud"] = server.base
        elif case == "expired":
            claims.update(exp=int(time.time()) - 5, iat=int(time.time()) - 120)
        elif case == "unknown-kid":
            kid = "k-unknown"
        elif case == "rs256":
            alg = "RS256"
        elif case == "unknown-client":
            claims.update(iss="nobody", sub="nobody")
        elif case == "too-long-lived":
            claims["exp"] = claims["iat"] + 3600
        response = _post_assertion(server, jwt.encode(claims, key, algorithm=alg, headers={"kid": kid}))
    if error is None:
        assert response.status_code == 200 and response.json()["token_type"] == "bearer"
    else:
        assert response.status_code in (400, 401) and response.json()["error"] == error


def test_an_assertion_cannot_be_replayed(data, keys):
    with _auth_server(data, keys) as server:
        assertion = jwt.encode(
            _claims(server, jti="once"), keys["RS384"], algorithm="RS384", headers={"kid": "k-rsa"}
        )
        assert _post_assertion(server, assertion).status_code == 200
        again = _post_assertion(server, assertion)
    assert again.status_code in (400, 401) and again.json()["error"] == "invalid_client"


def test_client_assertion_claims(keys):
    key = load_signing_key_from(keys["ES384"], "k-ec", "ES384")
    auth = BackendAuth("client-1", key, "https://auth.example.org/token")
    a, b = auth.assertion(now=1_700_000_000), auth.assertion(now=1_700_000_000)
    header = jwt.get_unverified_header(a)
    claims = jwt.decode(
        a,
        keys["ES384"].public_key(),
        algorithms=["ES384"],
        audience=auth.token_url,
        options={"verify_exp": False},
    )
    assert header == {"alg": "ES384", "kid": "k-ec", "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == "client-1"
    assert claims["exp"] - claims["iat"] == 300
    assert jwt.decode(b, options={"verify_signature": False})["jti"] != claims["jti"]
    assert "client-1" in repr(auth) and "BEGIN" not in repr(auth)


def load_signing_key_from(key, kid: str, alg: str):

    return SigningKey(key, kid, alg)


def test_auth_failure_message_shows_no_secret(tmp_path, data, keys):
    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys["other"], "k-rsa", "RS384", True)))
    with _auth_server(data, keys) as server, pytest.raises(RemoteError) as caught:
        run_export(options(server, tmp_path, client_id="client-1", key_file=key_file), sleep=Sleeps())
    text = str(caught.value)
    assert text.startswith("the token endpoint refused the client: HTTP 4") and "(invalid_client)" in text
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}", text)  # no JWT in the message


def test_key_file_rules(tmp_path, keys):
    jwks = tmp_path / "two.json"
    jwks.write_bytes(
        orjson.dumps(
            {
                "keys": _jwks(keys["RS384"], "a", "RS384", True)["keys"]
                + _jwks(keys["ES384"], "b", "ES384", True)["keys"]
            }
        )
    )

    with pytest.raises(ConfigError, match="exactly one private"):
        load_signing_key(jwks)
    assert load_signing_key(jwks, kid="b").alg == "ES384"
    public = tmp_path / "public.json"
    public.write_bytes(orjson.dumps(_jwks(keys["RS384"], "a", "RS384", False)))
    with pytest.raises(ConfigError, match="found 0"):
        load_signing_key(public)
    pem = tmp_path / "k.pem"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="P-384"):
        load_signing_key(pem, kid="x")


def test_tokens_go_only_where_the_rules_allow(keys):

    class Issued(BackendAuth):
        def token(self, client, fhir_base):
            return "t", 1

    auth = Issued("c", SigningKey(keys["RS384"], "k", "RS384"), "https://auth.example.org/token")
    client = BulkClient("https://fhir.example.org/r4", auth, FAST, Sleeps())
    try:
        assert client._token_for("https://fhir.example.org/jobs/1", None) == ("t", 1)
        assert client._token_for("https://status.example.org/jobs/1", None) is None
        assert client._token_for("https://fhir.example.org:8443/jobs/1", None) is None
        assert client._token_for("https://files.example.org/f.ndjson", True) == ("t", 1)
        assert client._token_for("https://fhir.example.org/files/f.ndjson", False) is None
    finally:
        client.close()


def test_logs_carry_no_tokens_assertions_or_urls(tmp_path, data, keys, caplog):
    import logging

    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys["RS384"], "k-rsa", "RS384", True)))
    caplog.set_level(logging.DEBUG)
    with _auth_server(data, keys, faults=Faults(expire_token=1)) as server:
        opts = options(
            server, tmp_path, client_id="client-1", key_file=key_file, type_filters=("Patient?gender=female",)
        )
        run_export(opts, sleep=Sleeps())
        tokens = list(server.tokens)
    # Only ehrlift's own records and its HTTP library's (the test token endpoint logs what it issues).
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("authlib"))
    assert "access token obtained" in text
    assert tokens and not any(t in text for t in tokens)
    assert "eyJ" not in text and "gender" not in text and "/files/" not in text


def test_a_refused_status_request_keeps_the_job(tmp_path, data, keys):
    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys["RS384"], "k-rsa", "RS384", True)))
    with _auth_server(data, keys, faults=Faults(polls_before_ready=5)) as server:
        opts = options(server, tmp_path, client_id="client-1", key_file=key_file)

        def revoke_all(_seconds: float) -> None:
            server.clients.clear()  # the client is unregistered while the job runs
            server.tokens.clear()

        with pytest.raises(RemoteError, match="refused the client"):
            run_export(opts, sleep=revoke_all)
        with ExportState(tmp_path / "data" / "exports", opts.key()) as state:
            assert state.job is not None and state.job["status_url"]
        assert server.requests("DELETE") == []


def test_a_refused_client_fails_as_auth_before_any_release_fallback(tmp_path, data, keys, caplog):
    import logging

    key_file = tmp_path / "private.jwks.json"
    key_file.write_bytes(orjson.dumps(_jwks(keys["other"], "k-rsa", "RS384", True)))  # not the registered key
    with _auth_server(data, keys) as server:
        opts = options(server, tmp_path, client_id="client-1", key_file=key_file)
        with (
            caplog.at_level(logging.WARNING, logger="pipelines.export"),
            pytest.raises(RemoteError, match="token endpoint"),
        ):
            run_export(opts, sleep=Sleeps())
        assert server.requests("GET", "/fhir/metadata") == [] and server.kickoffs() == []
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in warned if "CapabilityStatement" in m]
