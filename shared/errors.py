"""Domain errors. Repositories and handlers raise these, never driver errors; the
HTTP layer maps each to one status code and a JSON body naming what and why."""

from __future__ import annotations

# How much of a caller's value a message quotes: a 5,000-character path ID came back whole.
ECHO_CHARS = 64


def shortened(value: str) -> str:
    """``value`` as an answer's message (or ``field``) may quote it: its first
    ``ECHO_CHARS`` characters, then "…" when there was more."""
    return value if len(value) <= ECHO_CHARS else value[:ECHO_CHARS] + "…"


class DomainError(Exception):
    """Base of every error a user of the system is meant to read.

    ``reason_code``: the refusal's code for a device (shared.domain.refusals.ReasonCode,
    a ``str``), the answer's last field when set; the native device API sets it on its
    401, 403 and 429 answers, other APIs leave it None (and their bodies without it)."""

    status = 400
    code = "bad_request"
    reason_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        rule: str | None = None,
        reason_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.rule = rule
        if reason_code is not None:
            self.reason_code = reason_code

    def headers(self) -> dict[str, str]:
        """HTTP headers that belong to the answer (none but for throttling)."""
        return {}

    def details(self) -> dict[str, str]:
        """The fields a kind of error adds to the body (after ``rule``, before ``reason_code``)."""
        return {}

    def to_dict(self) -> dict[str, str]:
        body = {"error": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.rule is not None:
            body["rule"] = self.rule
        body.update(self.details())
        if self.reason_code is not None:
            body["reason_code"] = self.reason_code
        return body


class InvalidInput(DomainError):
    status = 400
    code = "invalid_input"


class PayloadTooLarge(DomainError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(DomainError):
    status = 415
    code = "unsupported_media_type"


class Unauthorized(DomainError):
    """A call that does not prove who it is (401). Every 401 carries ``WWW-Authenticate``
    (RFC 9110 section 11.6.1) with the Bearer scheme (RFC 6750 section 3): ``realm`` names
    the API; a call that presented a credential also gets ``error="invalid_token"``, a call
    with none gets no error code (RFC 6750 section 3.1).

    ``presented``: the call carried a credential (an ``Authorization`` header). ``counted``:
    the refusal counts against the caller's source (shared/throttle.py); a call with no
    credential, or a stale one (replaced by the operator), is not guessing and is not
    counted. ``code`` overrides the body's ``error`` (``credentials_replaced``, ...).
    """

    status = 401
    code = "unauthorized"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        rule: str | None = None,
        realm: str = "fleetreg",
        presented: bool = True,
        counted: bool | None = None,
        code: str | None = None,
        reason_code: str | None = None,
    ) -> None:
        super().__init__(message, field=field, rule=rule, reason_code=reason_code)
        self.realm = realm
        self.presented = presented
        self.counted = presented if counted is None else counted
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        challenge = f'Bearer realm="{self.realm}"'
        if self.presented:
            challenge += ', error="invalid_token"'
        return {"WWW-Authenticate": challenge}


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class TooManyRequests(DomainError):
    """A limit was crossed; the caller may try again after ``retry_after`` seconds."""

    status = 429
    code = "too_many_requests"

    def __init__(
        self, message: str, *, retry_after: int, rule: str | None = None, reason_code: str | None = None
    ) -> None:
        super().__init__(message, rule=rule, reason_code=reason_code)
        self.retry_after = max(1, retry_after)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}

    def details(self) -> dict[str, str]:
        return {"retry_after": str(self.retry_after)}
