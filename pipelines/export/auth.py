"""SMART Backend Services: client_credentials with a signed JWT assertion (RS384/ES384), tokens reused."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from pipelines.common.errors import ConfigError
from pipelines.export.web import RemoteError, outcome_summary, require_secure

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
ASSERTION_LIFETIME = 300  # the SMART IG caps exp at five minutes after issue
REFRESH_MARGIN = 60  # a token closer than this to expiry is replaced before use
DEFAULT_SCOPE = "system/*.read"


@dataclass(frozen=True)
class SigningKey:
    """A private key with the kid the server knows it by; repr never shows the key."""

    key: Any
    kid: str
    alg: str

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r})"


def load_signing_key(path: Path, kid: str | None = None, alg: str | None = None) -> SigningKey:
    """Read a private key from a JWKS (or single JWK) JSON file or a PEM file.

    From a JWKS the key is the one with the given kid, or the only private RS384/ES384 key in it. A PEM
    file has no kid of its own, so --kid must name the one registered with the server.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the private key file ({type(exc).__name__})") from None
    if raw.lstrip().startswith(b"{"):
        return _from_jwks(raw, kid, alg)
    try:
        key = load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            "the private key file is neither a JWKS nor an unencrypted PEM private key"
        ) from None
    inferred = _alg_for(key)
    if alg and alg != inferred:
        raise ConfigError(f"--alg {alg} does not fit this key (it signs {inferred})")
    if not kid:
        raise ConfigError("a PEM key needs --kid: the key id the server registered for its public key")
    return SigningKey(key, kid, inferred)


def _alg_for(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigError("RSA keys must be at least 2048 bits")
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise ConfigError("ES384 needs a P-384 key", hint=f"this key is on {key.curve.name}")
        return "ES384"
    raise ConfigError("the private key must be RSA (RS384) or EC P-384 (ES384)")


def _from_jwks(raw: bytes, kid: str | None, alg: str | None) -> SigningKey:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ConfigError("the JWKS file is not valid JSON") from None
    keys = doc.get("keys", [doc]) if isinstance(doc, dict) else []
    usable = [
        k
        for k in keys
        if isinstance(k, dict)
        and "d" in k
        and k.get("alg", alg or "") in ALGORITHMS
        and (alg is None or k.get("alg", alg) == alg)
        and (kid is None or k.get("kid") == kid)
    ]
    if len(usable) != 1:
        wanted = f" with kid {kid!r}" if kid else ""
        raise ConfigError(
            f"the JWKS file must hold exactly one private RS384/ES384 key{wanted}; found {len(usable)}",
            hint="pass --kid to choose one" if len(usable) > 1 else None,
        )
    jwk = usable[0]
    if not jwk.get("kid"):
        raise ConfigError("the JWKS key has no kid; add the kid the server registered")
    try:
        key = jwt.PyJWK(jwk).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
        raise ConfigError("the JWKS key cannot be read as a private key") from None
    inferred = _alg_for(key)
    if jwk.get("alg") and jwk["alg"] != inferred:
        raise ConfigError(f"the JWKS key says alg {jwk['alg']} but it signs {inferred}")
    return SigningKey(key, jwk["kid"], inferred)


def discover_token_url(client: httpx.Client, fhir_base: str) -> str:
    """token_endpoint from the server's .well-known/smart-configuration."""
    url = fhir_base.rstrip("/") + "/.well-known/smart-configuration"
    try:
        response = client.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise RemoteError(f"cannot reach the server's SMART configuration ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise RemoteError(
            f"the server's .well-known/smart-configuration answered HTTP {response.status_code}",
            hint="pass --token-url",
        )
    try:
        config = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise RemoteError("the server's SMART configuration is not JSON", hint="pass --token-url") from None
    token_url = config.get("token_endpoint") if isinstance(config, dict) else None
    if not isinstance(token_url, str) or not token_url:
        raise RemoteError("the server's SMART configuration has no token_endpoint", hint="pass --token-url")
    return require_secure(token_url, "the token endpoint")


class BackendAuth:
    """Bearer tokens for one client: obtained with a fresh signed assertion, reused until near expiry.

    Thread-safe: download workers share one instance, and only one of them asks for a new token.
    """

    def __init__(
        self,
        client_id: str,
        signing_key: SigningKey,
        token_url: str | None = None,
        scope: str = DEFAULT_SCOPE,
    ) -> None:
        self.client_id = client_id
        self.signing_key = signing_key
        self.token_url = require_secure(token_url, "the token endpoint") if token_url else None
        self.scope = scope
        self._token: str | None = None
        self._expires_at = 0.0
        self._generation = 0
        self._lock = threading.Lock()
        self.tokens_issued = 0

    def __repr__(self) -> str:
        return f"BackendAuth(client_id={self.client_id!r}, key={self.signing_key!r})"

    def assertion(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": int(now) + ASSERTION_LIFETIME,
            "iat": int(now),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            claims,
            self.signing_key.key,
            algorithm=self.signing_key.alg,
            headers={"kid": self.signing_key.kid, "typ": "JWT"},
        )

    def token(self, client: httpx.Client, fhir_base: str) -> tuple[str, int]:
        """(access token, generation); the generation lets a caller that got a 401 ask for a newer one."""
        with self._lock:
            if self._token is None or time.time() >= self._expires_at - REFRESH_MARGIN:
                self._fetch(client, fhir_base)
            assert self._token is not None
            return self._token, self._generation

    def refresh_after_401(self, client: httpx.Client, fhir_base: str, generation: int) -> str:
        """A new token unless another worker already replaced the one that was refused."""
        with self._lock:
            if generation == self._generation or self._token is None:
                self._fetch(client, fhir_base)
            assert self._token is not None
            return self._token

    def _fetch(self, client: httpx.Client, fhir_base: str) -> None:
        if self.token_url is None:
            self.token_url = discover_token_url(client, fhir_base)
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
        }
        try:
            response = client.post(self.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach the token endpoint ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise RemoteError(
                f"the token endpoint refused the client: HTTP {response.status_code} "
                f"{_oauth_error(response)}",
                hint="check --client-id, --kid, the key and the scope registered for this client",
            )
        try:
            body = orjson.loads(response.content)
            token = body["access_token"]
            expires_in = int(body.get("expires_in", 300))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise RemoteError("the token endpoint's answer has no access_token") from None
        if str(body.get("token_type", "bearer")).lower() != "bearer" or not isinstance(token, str):
            raise RemoteError("the token endpoint did not issue a bearer token")
        self._token = token
        self._expires_at = time.time() + expires_in
        self._generation += 1
        self.tokens_issued += 1
        log.info("access token obtained (expires in %d s, scope %s)", expires_in, body.get("scope", "?"))


def _oauth_error(response: httpx.Response) -> str:
    """The OAuth error code (RFC 6749 5.2), never the description, which may echo the assertion."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return f"({body['error']})"
    return outcome_summary(response)
