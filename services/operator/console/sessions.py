"""Console sessions kept in the registry, behind aiohttp-session's storage interface.

The cookie carries 32 random bytes (URL-safe base64) and a keyed tag of them
(:func:`shared.domain.credentials.new_session_token`); the registry stores only the
token's SHA-256 digest (migration 0016), so every instance of the operator service finds
every session and a copy of the table opens none. A cookie whose tag does not verify
(made up, or issued before sessions carried one) is refused without reading the registry.
The cookie is HttpOnly, SameSite=Strict, scoped to /console/, and Secure on https
(settings.ConsoleSettings.secure_cookie). A session lasts a fixed time from sign-in
(``max_age``): aiohttp-session ignores an older one, and the registry's ``expires_at``
makes the row unfindable and prunable.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from aiohttp import web
from aiohttp_session import AbstractStorage, Session

from shared.db import console_sessions, people_sessions
from shared.db.pool import Pool
from shared.domain.credentials import Keyring, new_session_token, session_token_is_issued
from shared.metrics import CONSOLE_SESSION_READS
from shared.throttle import mark_refused, request_source

COOKIE = "fleetreg_console"
PATH = "/console/"
# A session token is 60 characters (credentials.new_session_token); a longer cookie is
# not even digested.
MAX_TOKEN_CHARS = 64
# Sessions whose key is remembered (known_key): the most recently read, a bounded memory.
KNOWN_SESSIONS = 10_000
# The request's cookie named no session: its answer deletes the cookie (console/app.py).
STALE_SESSION = web.RequestKey("console_stale_session", bool)


def throttle_identity(data: Mapping[str, object]) -> str | None:
    """What a signed-in session's requests are counted under (FLEETREG_LIMIT_REQUESTS_PER_KEY):
    its key's ID, or ``user:<ID>`` for a person's session (every session of one person shares
    the bucket, as every session of one key does); None when not signed in."""
    user_id, key_id = data.get("user_id"), data.get("key_id")
    if isinstance(user_id, str):
        return f"user:{user_id}"
    return key_id if isinstance(key_id, str) else None


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def end_session(pool: Pool, token: str) -> None:
    """End the session of ``token`` (signed out, or signing in again): its row is gone."""
    await console_sessions.delete(pool, digest(token))


class RegistryStorage(AbstractStorage):
    """aiohttp-session storage in the ``console_sessions`` table. A session is only ever
    stored once it names its account and its key or person (``account_id`` and ``key_id``
    or ``user_id``: signed in)."""

    def __init__(
        self,
        pool_of: Callable[[web.Request], Pool],
        keyring_of: Callable[[web.Request], Keyring],
        *,
        max_age: int,
        always_secure: bool,
    ) -> None:
        super().__init__(cookie_name=COOKIE, max_age=max_age, path=PATH, httponly=True, samesite="Strict")
        self._pool_of = pool_of
        self._keyring_of = keyring_of
        self._always_secure = always_secure
        # The key of each session read lately (token digest -> key ID): a session whose key
        # is over its rate is refused before its row is read again (console/app.py).
        self._keys: OrderedDict[bytes, str] = OrderedDict()

    def known_key(self, request: web.Request) -> str | None:
        """The throttle identity (:func:`throttle_identity`) of the request's session when
        this instance read it lately, else None (nothing is read: a cheap first look, never
        an authentication)."""
        token = request.cookies.get(COOKIE)
        if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            return None
        return self._keys.get(digest(token))

    async def load_session(self, request: web.Request) -> Session:
        token = self.load_cookie(request)
        if not token:  # no cookie (or an emptied one): no credential, nothing counted
            return Session(None, data=None, new=True, max_age=self.max_age)
        if not session_token_is_issued(token, self._keyring_of(request).session_tag):
            # Never issued here (made up, or from before sessions carried a tag): refused
            # from memory. Made-up cookies were one registry read each, 1,410 a second
            # from one address even while it was answered 429.
            return self._refused(request)
        CONSOLE_SESSION_READS.inc()
        data = await console_sessions.load(self._pool_of(request), digest(token))
        if data is None:
            self._keys.pop(digest(token), None)
            return self._refused(request)
        values = json.loads(data)
        identity = throttle_identity(values.get("session", {}))
        if identity is not None:
            self._remember(digest(token), identity)
        return Session(token, data=values, new=False, max_age=self.max_age)

    def _refused(self, request: web.Request) -> Session:
        # A cookie naming no session is a refusal of the caller's address, as a wrong API
        # key is (and 429 from an address past its limit: console/app.py, html_errors). A
        # browser whose session lapsed counts once: the answer deletes its cookie.
        mark_refused(request)
        request[STALE_SESSION] = True
        return Session(None, data=None, new=True, max_age=self.max_age)

    def _remember(self, token_digest: bytes, key_id: str) -> None:
        self._keys[token_digest] = key_id
        self._keys.move_to_end(token_digest)
        while len(self._keys) > KNOWN_SESSIONS:
            self._keys.popitem(last=False)

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        pool = self._pool_of(request)
        token = session.identity
        if session.empty:  # signed out (invalidated)
            if token is not None:
                self._keys.pop(digest(str(token)), None)
                await end_session(pool, str(token))
            self._set_cookie(request, response, "")
            return
        if throttle_identity(session) is None or "account_id" not in session:
            return  # never store a session that is not signed in
        data = json.dumps(self._get_session_data(session))
        if token is None and "user_id" in session:  # a person signed in (every factor passed)
            token = new_session_token(self._keyring_of(request).session_tag)
            created = datetime.fromtimestamp(session.created, UTC)
            await people_sessions.create(
                pool,
                digest(str(token)),
                account_id=session["account_id"],
                user_id=session["user_id"],
                session_id=session["session_id"],
                data=data,
                expires_at=created + timedelta(seconds=self.max_age or 0),
                source_address=request_source(request),
                user_agent=request.headers.get("User-Agent", ""),
            )
        elif token is None:  # signing in with a key: the only other way a session row comes to be
            token = new_session_token(self._keyring_of(request).session_tag)
            created = datetime.fromtimestamp(session.created, UTC)
            await console_sessions.create(
                pool,
                digest(str(token)),
                session["account_id"],
                session["key_id"],
                data,
                created + timedelta(seconds=self.max_age or 0),
            )
        elif not await console_sessions.update(pool, digest(str(token)), data):
            return  # ended meanwhile (signed out in another tab, expired): stays ended
        self._set_cookie(request, response, str(token))

    def _set_cookie(self, request: web.Request, response: web.StreamResponse, value: str) -> None:
        if not value:
            response.del_cookie(COOKIE, path=PATH)
            return
        secure = (
            self._always_secure
            or request.secure
            or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        )
        response.set_cookie(
            COOKIE, value, path=PATH, max_age=self.max_age, httponly=True, samesite="Strict", secure=secure
        )
