"""The CDS client's JWT (CDS Hooks 2.0): JWKS signature, iss/jku allow-list, aud, exp, iat, jti."""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import orjson

# Asymmetric only: the specification forbids `none` and every shared-secret (HMAC) algorithm.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_ALGORITHM_OBJECTS = {name: jwt.get_algorithm_by_name(name) for name in ALGORITHMS}


class Unauthorized(Exception):
    """Why a request was refused; the reason is a fixed phrase, never token or record content."""


class FetchNeeded(Exception):
    """The token names a JWK Set that is not cached: verify again where blocking I/O is allowed."""


@dataclass(frozen=True)
class Issuer:
    iss: str
    jku: tuple[str, ...]  # allow-listed JWK Set URLs a token may name in its header
    jwks: dict[str, Any] | None  # the JWK Set agreed out-of-band, for tokens without jku


class JwksCache:
    """JWK Sets fetched from allow-listed jku URLs, kept for `ttl` seconds; one refetch for an unknown kid."""

    def __init__(self, ttl: float, timeout: float) -> None:
        self.ttl, self.timeout = ttl, timeout
        self._sets: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, url: str, kid: str, fetch: bool = True) -> dict[str, Any] | None:
        with self._lock:
            cached = self._sets.get(url)
        now = time.monotonic()
        if cached and now - cached[0] < self.ttl:
            key = _find(cached[1], kid)
            if key is not None or now - cached[0] < 10:
                return key
        if not fetch:
            raise FetchNeeded
        jwks = self._fetch(url)
        with self._lock:
            self._sets[url] = (time.monotonic(), jwks)
        return _find(jwks, kid)

    def _fetch(self, url: str) -> dict[str, Any]:
        try:
            resp = httpx.get(url, timeout=self.timeout, follow_redirects=False)
            resp.raise_for_status()
            body = resp.json()
        except (httpx.HTTPError, ValueError):
            raise Unauthorized("the issuer's JWK Set could not be fetched") from None
        if not isinstance(body, dict):
            raise Unauthorized("the issuer's JWK Set is not a JWK Set")
        return body


def _find(jwks: dict[str, Any], kid: str) -> dict[str, Any] | None:
    for key in jwks.get("keys") or []:
        if isinstance(key, dict) and key.get("kid") == kid:
            return key
    return None


class Verifier:
    """Verifies each request's bearer JWT; remembers jti values until their tokens expire."""

    def __init__(
        self,
        issuers: list[Issuer],
        *,
        leeway: float = 30,
        max_lifetime: float = 300,
        jwks_ttl: float = 300,
        timeout: float = 3,
    ) -> None:
        self.issuers = {i.iss: i for i in issuers}
        self.leeway, self.max_lifetime = leeway, max_lifetime
        self.jwks = JwksCache(jwks_ttl, timeout)
        self._seen: dict[tuple[str, str], float] = {}
        self._swept = 0.0
        self._parsed: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def verify(self, authorization: str | None, audience: str, *, fetch: bool = True) -> str:
        """The verified issuer, or Unauthorized with the reason. With fetch=False it never blocks: a JWK
        Set that would have to be fetched raises FetchNeeded before anything is recorded."""
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("no bearer token")
        token = authorization[len("Bearer ") :].strip()
        try:
            header_b64, claims_b64, signature_b64 = token.split(".")
            header, claims = orjson.loads(_b64(header_b64)), orjson.loads(_b64(claims_b64))
            signature = _b64(signature_b64)
        except (ValueError, binascii.Error):  # orjson's decode error is a ValueError
            raise Unauthorized("the token is not a JWT") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise Unauthorized("the token is not a JWT")
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise Unauthorized("the token's algorithm is not an allowed asymmetric one")
        if header.get("typ") != "JWT" or not isinstance(kid, str):
            raise Unauthorized("the token header lacks typ JWT or kid")
        issuer = self.issuers.get(claims.get("iss")) if isinstance(claims.get("iss"), str) else None
        if issuer is None:
            raise Unauthorized("unknown issuer")
        jwk = self._key(issuer, header.get("jku"), kid, fetch)
        # The signature is PyJWT's (its algorithm objects over `cryptography`); the claims below are the
        # five the specification requires. PyJWT's own decode parses and checks the token a second and
        # third time, which costs twice the signature check itself on every call.
        try:
            key = self._public_key(issuer.iss, jwk, alg)
            valid = _ALGORITHM_OBJECTS[alg].verify(
                f"{header_b64}.{claims_b64}".encode("ascii"), key, signature
            )
        except (jwt.PyJWTError, ValueError, TypeError, UnicodeEncodeError):
            raise Unauthorized("the token does not verify") from None
        if not valid:
            raise Unauthorized("bad signature")
        _check_claims(claims, audience, self.leeway)
        # A bound on lifetime bounds the replay memory: a jti is kept only until its token expires.
        if claims["exp"] - claims["iat"] > self.max_lifetime:
            raise Unauthorized("the token lives longer than allowed")
        self._once(issuer.iss, str(claims["jti"]), float(claims["exp"]))
        return issuer.iss

    def _public_key(self, iss: str, jwk: dict[str, Any], alg: str) -> Any:
        # Parsing a JWK into a key object costs more than verifying with it: keep each one parsed, keyed
        # by the JWK object itself (a refetched JWK Set brings new objects, so a rotated key is reparsed).
        cache_key = (iss, jwk.get("kid"), alg)
        cached = self._parsed.get(cache_key)
        if cached is not None and cached[0] is jwk:
            return cached[1]
        key = jwt.PyJWK(jwk, algorithm=alg).key
        with self._lock:
            if len(self._parsed) > 256:
                self._parsed.clear()
            self._parsed[cache_key] = (jwk, key)
        return key

    def _key(self, issuer: Issuer, jku: Any, kid: str, fetch: bool = True) -> dict[str, Any]:
        if jku is not None:
            if jku not in issuer.jku:
                raise Unauthorized("the token's jku is not allow-listed for its issuer")
            key = self.jwks.get(jku, kid, fetch)
        else:
            key = _find(issuer.jwks or {}, kid)
        if key is None:
            raise Unauthorized("no key with the token's kid")
        return key

    def _once(self, iss: str, jti: str, exp: float) -> None:
        now = time.time()
        with self._lock:
            # Expired entries are swept at most once a second: sweeping on every call once more than
            # 10,000 tokens are live made each call walk them all.
            if len(self._seen) > 10_000 and now >= self._swept + 1.0:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
                self._swept = now
            seen = self._seen.get((iss, jti))
            if seen is not None and seen > now:
                raise Unauthorized("replayed jti")
            self._seen[(iss, jti)] = exp + self.leeway


def _b64(segment: str) -> bytes:
    """base64url without padding (RFC 7515 section 2), strictly: no characters outside the alphabet."""
    return base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_claims(claims: dict[str, Any], audience: str, leeway: float) -> None:
    """exp, iat (and nbf when present) with leeway, aud naming this endpoint, jti present (RFC 7519 4.1)."""
    for claim in ("iss", "aud", "exp", "iat", "jti"):
        if claim not in claims:
            raise Unauthorized(f"the token lacks the {claim} claim")
    if not _number(claims["exp"]) or not _number(claims["iat"]):
        raise Unauthorized("exp and iat must be numbers")
    now = time.time()
    if claims["exp"] <= now - leeway:
        raise Unauthorized("expired token")
    if claims["iat"] > now + leeway:
        raise Unauthorized("the token is issued in the future")
    nbf = claims.get("nbf")
    if nbf is not None and (not _number(nbf) or nbf > now + leeway):
        raise Unauthorized("the token is not valid yet")
    aud = claims["aud"]
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise Unauthorized("the token's aud is not this endpoint")
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise Unauthorized("the token's jti is not a non-empty string")


def issuer_from_config(entry: dict[str, Any], base: Any) -> Issuer:
    """One issuers[] entry of the service config; jwks_file paths are relative to the config file."""
    jwks = entry.get("jwks")
    if jwks is None and entry.get("jwks_file"):
        jwks = json.loads((base / entry["jwks_file"]).read_text(encoding="utf-8"))
    return Issuer(entry["iss"], tuple(entry.get("jku") or ()), jwks)
