"""The CDS client's JWT (CDS Hooks 2.0): JWKS signature, iss/jku allow-list, aud, exp, iat, jti."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

# Asymmetric only: the specification forbids `none` and every shared-secret (HMAC) algorithm.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class Unauthorized(Exception):
    """Why a request was refused; the reason is a fixed phrase, never token or record content."""


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

    def get(self, url: str, kid: str) -> dict[str, Any] | None:
        with self._lock:
            cached = self._sets.get(url)
        now = time.monotonic()
        if cached and now - cached[0] < self.ttl:
            key = _find(cached[1], kid)
            if key is not None or now - cached[0] < 10:
                return key
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
        self._parsed: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def verify(self, authorization: str | None, audience: str) -> str:
        """The verified issuer, or Unauthorized with the reason."""
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("no bearer token")
        token = authorization[len("Bearer ") :].strip()
        try:
            unverified = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthorized("the token is not a JWT") from None
        header, claims = unverified["header"], unverified["payload"]
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise Unauthorized("the token's algorithm is not an allowed asymmetric one")
        if header.get("typ") != "JWT" or not isinstance(kid, str):
            raise Unauthorized("the token header lacks typ JWT or kid")
        issuer = self.issuers.get(claims.get("iss")) if isinstance(claims.get("iss"), str) else None
        if issuer is None:
            raise Unauthorized("unknown issuer")
        jwk = self._key(issuer, header.get("jku"), kid)
        try:
            key = self._public_key(jwk, alg)
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer.iss,
                leeway=self.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.InvalidSignatureError:
            raise Unauthorized("bad signature") from None
        except jwt.ExpiredSignatureError:
            raise Unauthorized("expired token") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("the token's aud is not this endpoint") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is issued in the future") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the token lacks the {exc.claim} claim") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthorized("the token does not verify") from None
        if not isinstance(claims["exp"], int | float) or not isinstance(claims["iat"], int | float):
            raise Unauthorized("exp and iat must be numbers")
        # A bound on lifetime bounds the replay memory: a jti is kept only until its token expires.
        if claims["exp"] - claims["iat"] > self.max_lifetime:
            raise Unauthorized("the token lives longer than allowed")
        self._once(issuer.iss, str(claims["jti"]), float(claims["exp"]))
        return issuer.iss

    def _public_key(self, jwk: dict[str, Any], alg: str) -> Any:
        # Parsing a JWK into a key object costs more than verifying with it: keep each one parsed.
        cache_key = (json.dumps(jwk, sort_keys=True), alg)
        key = self._parsed.get(cache_key)
        if key is None:
            key = jwt.PyJWK(jwk, algorithm=alg).key
            with self._lock:
                if len(self._parsed) > 256:
                    self._parsed.clear()
                self._parsed[cache_key] = key
        return key

    def _key(self, issuer: Issuer, jku: Any, kid: str) -> dict[str, Any]:
        if jku is not None:
            if jku not in issuer.jku:
                raise Unauthorized("the token's jku is not allow-listed for its issuer")
            key = self.jwks.get(jku, kid)
        else:
            key = _find(issuer.jwks or {}, kid)
        if key is None:
            raise Unauthorized("no key with the token's kid")
        return key

    def _once(self, iss: str, jti: str, exp: float) -> None:
        now = time.time()
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
            seen = self._seen.get((iss, jti))
            if seen is not None and seen > now:
                raise Unauthorized("replayed jti")
            self._seen[(iss, jti)] = exp + self.leeway


def issuer_from_config(entry: dict[str, Any], base: Any) -> Issuer:
    """One issuers[] entry of the service config; jwks_file paths are relative to the config file."""
    jwks = entry.get("jwks")
    if jwks is None and entry.get("jwks_file"):
        jwks = json.loads((base / entry["jwks_file"]).read_text(encoding="utf-8"))
    return Issuer(entry["iss"], tuple(entry.get("jku") or ()), jwks)
