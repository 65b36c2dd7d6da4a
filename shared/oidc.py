"""fleetreg's OpenID Connect client: the authorization code flow with PKCE (S256), state
and nonce, against one account's identity provider (issue 28, "Single sign-on").

No web framework here: the console calls :meth:`OidcClient.begin` when a person chooses
single sign-on (it redirects the browser to the URL and keeps the :class:`Pending` in the
session) and :meth:`OidcClient.finish` on the callback (with the callback's query
parameters). Every document is fetched under the webhooks' address rules
(:mod:`shared.addresses`, FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS): a provider on a private or
loopback address is refused unless they are allowed, checked again on every connection.

The ID token is verified by PyJWT against the provider's published keys: signature
(asymmetric algorithms only), ``iss``, ``aud`` (and ``azp``), ``exp``, ``iat``, ``nonce``;
the person must have a verified ``email``. Every refusal is a :class:`SignInRefused` (401)
naming the check that failed (``rule``); a provider that cannot be reached or answers
nonsense is :class:`ProviderUnavailable` (503); a provider whose address or configuration
is not acceptable is :class:`shared.errors.InvalidInput` (field ``issuer``). No message
quotes a token, a code or a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson

from shared.domain.webhooks import address_refusal, checked_url, name_refusal
from shared.errors import DomainError, InvalidInput, Unauthorized, shortened
from shared.settings import Secret
from shared.webhook_sender import CheckedResolver, RefusedAddress

SCOPE = "openid email profile"
USER_AGENT = "fleetreg-oidc/1"
# Algorithms an ID token may be signed with: asymmetric only. HS256 would make the client
# secret a signing key (anyone holding it could mint tokens) and "none" signs nothing.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MAX_DOCUMENT_BYTES = 256 * 1024  # a discovery document or key set; a token answer is smaller
CLOCK_SKEW_S = 60.0  # between this host's clock and the provider's
PENDING_MAX_AGE_S = 600.0  # from begin to the callback: a person signing in, not a stored link
ID_TOKEN_MAX_AGE_S = 600.0  # the token comes straight from the provider's token endpoint
CACHE_TTL_S = 3600.0  # discovery documents and key sets are fetched again after this
KEYS_REFETCH_MIN_INTERVAL_S = 10.0  # unknown key IDs cannot make us fetch a key set in a loop
MAX_CACHED_PROVIDERS = 128  # each holds a discovery document and a key set; oldest dropped


class SignInRefused(Unauthorized):
    """The provider's answer does not sign this person in; ``rule`` names the check
    (``state``, ``nonce``, ``aud``, ``iss``, ``exp``, ``signature``, ``email_verified``,
    ``token_exchange``, ...). Not counted as guessing: the person proved nothing to us,
    the provider did (or did not)."""

    code = "sso_refused"

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message, rule=rule, realm="fleetreg-console", counted=False)


class ProviderUnavailable(DomainError):
    """The identity provider could not be reached, or answered something that is not what
    the protocol says (a status, a body that is not the JSON document expected)."""

    status = 503
    code = "sso_provider_unavailable"


@dataclass(frozen=True)
class Provider:
    """One account's identity provider as configured: the issuer (exactly as the provider
    names itself), this application's client ID and secret there, the claim that carries a
    person's groups, and the e-mail domains whose people may sign in (lower case; empty:
    any domain)."""

    issuer: str
    client_id: str
    client_secret: Secret
    groups_claim: str = "groups"
    allowed_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Discovery:
    """The parts of the provider's discovery document this client uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_auth_methods: tuple[str, ...]
    signing_algorithms: tuple[str, ...]


@dataclass(frozen=True)
class Pending:
    """What the caller keeps (server-side, in the person's session) between
    :meth:`OidcClient.begin` and :meth:`OidcClient.finish`; ``issued_at`` in Unix seconds."""

    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str
    issued_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "nonce": self.nonce,
            "code_verifier": self.code_verifier,
            "redirect_uri": self.redirect_uri,
            "issued_at": self.issued_at,
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Pending:
        """Read back :meth:`to_dict`; a session holding something else is refused (``pending``)."""
        try:
            return cls(
                state=str(value["state"]),
                nonce=str(value["nonce"]),
                code_verifier=str(value["code_verifier"]),
                redirect_uri=str(value["redirect_uri"]),
                issued_at=float(value["issued_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SignInRefused("no single sign-on was started in this session", rule="pending") from exc


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in: its issuer and subject (stable at that provider),
    the verified e-mail address, the groups from the provider's groups claim, a name."""

    issuer: str
    subject: str
    email: str
    groups: tuple[str, ...]
    name: str | None


@dataclass
class _Keys:
    keys: dict[str, jwt.PyJWK]  # by key ID ("" for the one key of a set without IDs)
    fetched_at: float


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def code_challenge(code_verifier: str) -> str:
    """PKCE's S256 challenge (RFC 7636 section 4.2) of a verifier."""
    return _b64url(hashlib.sha256(code_verifier.encode("ascii")).digest())


class OidcClient:
    """One per process: an HTTP client under the webhooks' address rules and bounded
    caches of discovery documents and key sets. ``open`` before use, ``close`` after (or
    ``async with``)."""

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout_s: float = 10.0,
        cache_ttl_s: float = CACHE_TTL_S,
        max_cached: int = MAX_CACHED_PROVIDERS,
    ) -> None:
        self._allow_private = allow_private
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._cache_ttl_s = cache_ttl_s
        self._max_cached = max_cached
        self._session: aiohttp.ClientSession | None = None
        self._discovery: OrderedDict[str, tuple[Discovery, float]] = OrderedDict()
        self._keys: OrderedDict[str, _Keys] = OrderedDict()

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=CheckedResolver(self._allow_private),
            use_dns_cache=False,  # every new connection resolves and checks again
            limit=32,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            trust_env=False,  # never through a proxy named by the environment
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> OidcClient:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ flow ----

    async def begin(
        self, provider: Provider, redirect_uri: str, *, prompt: str | None = None
    ) -> tuple[str, Pending]:
        """The URL to send the person's browser to, and what to keep until the callback.

        ``redirect_uri``: this application's callback, registered at the provider.
        ``prompt``: OpenID Connect's ``prompt`` (``login``: the provider asks the person to
        sign in anew even with a session there, for a re-authentication). Raises
        InvalidInput or ProviderUnavailable when the provider's discovery document cannot
        be had (:meth:`discover`)."""
        found = await self.discover(provider.issuer)
        pending = Pending(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(64),  # 86 characters: RFC 7636 asks 43 to 128
            redirect_uri=redirect_uri,
            issued_at=time.time(),
        )
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": provider.client_id,
                "redirect_uri": redirect_uri,
                "scope": SCOPE,
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": code_challenge(pending.code_verifier),
                "code_challenge_method": "S256",
            }
            | ({"prompt": prompt} if prompt else {})
        )
        separator = "&" if urllib.parse.urlsplit(found.authorization_endpoint).query else "?"
        return f"{found.authorization_endpoint}{separator}{query}", pending

    async def finish(self, provider: Provider, pending: Pending, callback: Mapping[str, str]) -> Identity:
        """The identity of the person the provider sent back, from the callback's query
        parameters (``state``, ``code``, and ``iss`` or ``error`` when the provider sends
        them). The caller drops ``pending`` whatever the outcome: a state is used once.

        Raises SignInRefused naming what failed, ProviderUnavailable."""
        state = callback.get("state", "")
        if not hmac.compare_digest(state.encode(), pending.state.encode()):
            raise SignInRefused("the callback's state is not this session's sign-in", rule="state")
        # A provider's error is shown only once the state proves it answers this sign-in.
        if "error" in callback:
            raise SignInRefused(
                f"the provider did not sign the person in: {shortened(callback['error'])}",
                rule="provider_error",
            )
        age = time.time() - pending.issued_at
        if not 0 <= age <= PENDING_MAX_AGE_S:
            raise SignInRefused(
                f"the sign-in was started more than {PENDING_MAX_AGE_S:g} s ago; start again", rule="expired"
            )
        # RFC 9207: an "iss" parameter names who answered (a mix-up between providers).
        if "iss" in callback and callback["iss"] != provider.issuer:
            raise SignInRefused("the callback comes from another issuer than this account's", rule="iss")
        code = callback.get("code", "")
        if not code:
            raise SignInRefused("the callback carries no authorization code", rule="code")
        tokens = await self.exchange_code(provider, pending, code)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise SignInRefused("the provider's token answer has no ID token", rule="id_token")
        claims = await self.verify_id_token(provider, id_token, nonce=pending.nonce)
        return self.identity(provider, claims)

    async def exchange_code(self, provider: Provider, pending: Pending, code: str) -> dict[str, Any]:
        """The token endpoint's answer to the code, with the PKCE verifier and the client's
        authentication (client_secret_basic unless the provider offers only _post). Its
        tokens are the caller's to keep out of logs."""
        found = await self.discover(provider.issuer)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "code_verifier": pending.code_verifier,
        }
        headers = {"Accept": "application/json"}
        secret = provider.client_secret.reveal()
        methods = found.token_auth_methods
        if "client_secret_basic" in methods:
            # RFC 6749 section 2.3.1: each part form-encoded before the Basic encoding.
            pair = f"{urllib.parse.quote_plus(provider.client_id)}:{urllib.parse.quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        elif "client_secret_post" in methods:
            form.update(client_id=provider.client_id, client_secret=secret)
        else:
            raise InvalidInput(
                "issuer: the provider accepts neither client_secret_basic nor client_secret_post "
                "at its token endpoint",
                field="issuer",
                rule="token-auth-method",
            )
        status, body = await self._request(
            "POST", found.token_endpoint, "token endpoint", data=form, headers=headers
        )
        if status == 200 and isinstance(body, dict):
            return body  # the tokens: the caller's to keep out of logs
        if 400 <= status < 500 and isinstance(body, dict) and isinstance(body.get("error"), str):
            # OAuth's error answer (RFC 6749 section 5.2): invalid_grant for a wrong code or
            # code_verifier, invalid_client for a wrong secret. Its description is the
            # provider's text about the request, never a token.
            description = body.get("error_description")
            detail = f" ({shortened(description)})" if isinstance(description, str) and description else ""
            raise SignInRefused(
                f"the provider refused the authorization code: {shortened(body['error'])}{detail}",
                rule="token_exchange",
            )
        raise ProviderUnavailable(
            f"the provider's token endpoint answered HTTP {status} without a token answer"
        )

    async def verify_id_token(self, provider: Provider, id_token: str, *, nonce: str) -> dict[str, Any]:
        """The ID token's claims once verified (OpenID Connect Core 3.1.3.7): signed by one
        of the provider's keys with an asymmetric algorithm it announces, ``iss`` the
        provider, ``aud`` this client (``azp`` too when present or when there are several
        audiences), not expired, issued within the last few minutes, ``nonce`` this
        sign-in's. Raises SignInRefused naming the check that failed."""
        found = await self.discover(provider.issuer)
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.DecodeError as exc:
            raise SignInRefused("the ID token is not a signed JWT", rule="malformed") from exc
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in found.signing_algorithms:
            raise SignInRefused(
                "the ID token is signed with an algorithm this client does not accept", rule="alg"
            )
        kid = header.get("kid", "")
        key = await self._signing_key(found.jwks_uri, kid if isinstance(kid, str) else "")
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key=key,
                algorithms=[algorithm],
                audience=provider.client_id,
                issuer=provider.issuer,
                leeway=CLOCK_SKEW_S,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]},
            )
        except jwt.InvalidSignatureError as exc:
            raise SignInRefused("the ID token's signature does not verify", rule="signature") from exc
        except jwt.ExpiredSignatureError as exc:
            raise SignInRefused("the ID token has expired", rule="exp") from exc
        except jwt.InvalidAudienceError as exc:
            raise SignInRefused(
                f"the ID token was issued to another client, not {shortened(provider.client_id)}", rule="aud"
            ) from exc
        except jwt.InvalidIssuerError as exc:
            raise SignInRefused(
                f"the ID token was issued by another issuer, not {shortened(provider.issuer)}", rule="iss"
            ) from exc
        except jwt.ImmatureSignatureError as exc:
            raise SignInRefused(
                "the ID token is not valid yet (iat or nbf in the future)", rule="iat"
            ) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise SignInRefused(f"the ID token has no {exc.claim} claim", rule=exc.claim) from exc
        except jwt.InvalidTokenError as exc:  # the base of the rest: malformed parts, bad types
            raise SignInRefused(f"the ID token is not valid: {type(exc).__name__}", rule="malformed") from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        azp = claims.get("azp")
        if (azp is not None or len(audiences) > 1) and azp != provider.client_id:
            raise SignInRefused("the ID token was issued to another party (azp)", rule="azp")
        issued_at = claims["iat"]
        if (
            not isinstance(issued_at, int | float)
            or time.time() - issued_at > ID_TOKEN_MAX_AGE_S + CLOCK_SKEW_S
        ):
            raise SignInRefused("the ID token was issued too long ago", rule="iat")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
            raise SignInRefused("the ID token's nonce is not this sign-in's", rule="nonce")
        return claims

    @staticmethod
    def identity(provider: Provider, claims: Mapping[str, Any]) -> Identity:
        """The person in verified claims: a verified e-mail address, in one of the allowed
        domains when the provider names some, is required."""
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise SignInRefused("the provider sent no e-mail address for this person", rule="email")
        verified = claims.get("email_verified")
        if verified is not True and verified != "true":  # some providers send the string
            raise SignInRefused(
                "the provider has not verified this person's e-mail address", rule="email_verified"
            )
        domain = email.rsplit("@", 1)[1].lower()
        if provider.allowed_domains and domain not in provider.allowed_domains:
            raise SignInRefused(
                f"people of {shortened(domain)} may not sign in to this account", rule="email_domain"
            )
        raw_groups = claims.get(provider.groups_claim, ())
        if isinstance(raw_groups, str):
            raw_groups = (raw_groups,)
        groups = (
            tuple(g for g in raw_groups if isinstance(g, str)) if isinstance(raw_groups, list | tuple) else ()
        )
        name = claims.get("name")
        return Identity(
            issuer=str(claims["iss"]),
            subject=str(claims["sub"]),
            email=email.lower(),
            groups=groups,
            name=name if isinstance(name, str) else None,
        )

    # ------------------------------------------------------------- documents ----

    async def discover(self, issuer: str) -> Discovery:
        """The provider's discovery document (cached for an hour, ``max_cached`` providers).
        Its ``issuer`` must be ``issuer`` exactly (OpenID Connect Discovery 4.3), its
        endpoints http(s) URLs, S256 among its PKCE methods when it lists them.

        Raises InvalidInput (field ``issuer``) for an address the rules refuse or a document
        that does not fit, ProviderUnavailable when it cannot be fetched."""
        cached = self._discovery.get(issuer)
        if cached is not None and time.monotonic() - cached[1] < self._cache_ttl_s:
            self._discovery.move_to_end(issuer)
            return cached[0]
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        status, document = await self._request("GET", url, "discovery document")
        if status != 200 or not isinstance(document, dict):
            raise ProviderUnavailable(f"the provider's discovery document answered HTTP {status}")
        if document.get("issuer") != issuer:
            raise InvalidInput(
                "issuer: the provider's discovery document names another issuer",
                field="issuer",
                rule="issuer-match",
            )
        endpoints: dict[str, str] = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(name)
            try:
                endpoints[name], _ = checked_url(value)
            except InvalidInput as exc:
                raise InvalidInput(
                    f"issuer: the discovery document's {name} is not an http(s) URL",
                    field="issuer",
                    rule="discovery",
                ) from exc
        challenges = document.get("code_challenge_methods_supported")
        if isinstance(challenges, list) and "S256" not in challenges:
            raise InvalidInput(
                "issuer: the provider does not offer PKCE with S256", field="issuer", rule="pkce-s256"
            )
        methods = document.get("token_endpoint_auth_methods_supported")
        algorithms = document.get("id_token_signing_alg_values_supported")
        found = Discovery(
            issuer=issuer,
            authorization_endpoint=endpoints["authorization_endpoint"],
            token_endpoint=endpoints["token_endpoint"],
            jwks_uri=endpoints["jwks_uri"],
            # Discovery's default for the token endpoint is client_secret_basic.
            token_auth_methods=tuple(m for m in methods if isinstance(m, str))
            if isinstance(methods, list)
            else ("client_secret_basic",),
            # RS256 is the default every provider must support (Core 15.1).
            signing_algorithms=tuple(a for a in algorithms if a in ASYMMETRIC_ALGORITHMS)
            if isinstance(algorithms, list)
            else ("RS256",),
        )
        self._remember(self._discovery, issuer, (found, time.monotonic()))
        return found

    async def _signing_key(self, jwks_uri: str, kid: str) -> jwt.PyJWK:
        """The provider's key with that ID; the key set is fetched again once when the ID
        is unknown (the provider rotated its keys), at most every few seconds."""
        cached = self._keys.get(jwks_uri)
        age = None if cached is None else time.monotonic() - cached.fetched_at
        stale = age is None or age >= self._cache_ttl_s
        rotated = cached is not None and kid not in cached.keys
        if cached is None or stale or (rotated and age is not None and age >= KEYS_REFETCH_MIN_INTERVAL_S):
            cached = await self._fetch_keys(jwks_uri)
        key = cached.keys.get(kid)
        if key is None:
            raise SignInRefused("the ID token is signed with a key the provider does not publish", rule="kid")
        return key

    async def _fetch_keys(self, jwks_uri: str) -> _Keys:
        status, document = await self._request("GET", jwks_uri, "key set")
        if status != 200 or not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ProviderUnavailable(f"the provider's key set answered HTTP {status} without keys")
        keys: dict[str, jwt.PyJWK] = {}
        for item in document["keys"]:
            if not isinstance(item, dict) or item.get("use", "sig") != "sig":
                continue  # encryption keys, and anything that is not a key
            try:
                key = jwt.PyJWK(item)
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                continue  # a key type or algorithm this library does not handle
            keys[str(item.get("kid", ""))] = key
        found = _Keys(keys, time.monotonic())
        self._remember(self._keys, jwks_uri, found)
        return found

    def _remember(self, cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self._max_cached:
            cache.popitem(last=False)

    async def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, object]:
        """One request to the provider: the address checked, no redirect followed, at most
        ``MAX_DOCUMENT_BYTES`` read. Returns the status and the JSON body (None when the
        body is not JSON)."""
        try:
            _, target = checked_url(url)
        except InvalidInput as exc:
            raise InvalidInput(
                f"issuer: the provider's {what} URL is not usable: {exc.message}",
                field="issuer",
                rule="format=uri",
            ) from exc
        literal = target.literal
        if literal is not None:  # an address in the URL: aiohttp does not ask the resolver
            refusal = address_refusal(str(literal), allow_private=self._allow_private)
            if refusal is not None:
                raise InvalidInput(f"issuer: {refusal}", field="issuer", rule="public-address")
        if self._session is None:
            raise RuntimeError("the OIDC client is not open")
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, allow_redirects=False
            ) as answer:
                body = await answer.content.read(MAX_DOCUMENT_BYTES + 1)
                status = answer.status
        except TimeoutError as exc:
            raise ProviderUnavailable(f"the provider's {what} did not answer in time") from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress) or (
                isinstance(exc, aiohttp.ClientConnectorDNSError) and not self._allow_private
            ):
                raise InvalidInput(
                    f"issuer: {name_refusal(target.host)}", field="issuer", rule="public-address"
                ) from None
            raise ProviderUnavailable(f"cannot connect to the provider's {what}") from exc
        except (aiohttp.ClientError, OSError, socket.gaierror) as exc:
            raise ProviderUnavailable(f"the provider's {what} failed: {type(exc).__name__}") from exc
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ProviderUnavailable(f"the provider's {what} is larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            return status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return status, None
