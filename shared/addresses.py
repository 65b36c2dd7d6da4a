"""The addresses an operator's outgoing URL may point to (a webhook's, a registration
hook's): checked when the operator sets it (the operator API, the bulk API), under
FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS."""

from __future__ import annotations

import asyncio
import socket

from shared.domain import webhooks as webhook_rules
from shared.errors import InvalidInput

RESOLVE_TIMEOUT_S = 5.0


async def check_addresses(target: webhook_rules.Target, allow_private: bool) -> None:
    """Refuse a URL whose host is, or resolves to, an address webhooks may not call (the
    notifier checks again before every connection: a DNS answer may change).

    With private addresses refused, a name that does not resolve and a name that resolves
    to a refused address get one answer (:func:`webhook_rules.name_refusal`): two answers
    would tell a caller which internal names exist. Resolving here, rather than only at
    delivery, tells an honest operator of a typo at once; the answer is the same either way."""
    literal = target.literal
    if literal is not None:
        refusal = webhook_rules.address_refusal(str(literal), allow_private=allow_private)
        if refusal is not None:  # the caller wrote the address: saying what it is tells nothing new
            raise InvalidInput(f"url: {refusal}", field="url", rule="public-address")
        return
    try:
        found = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM),
            timeout=RESOLVE_TIMEOUT_S,
        )
    except (OSError, TimeoutError, UnicodeError, ValueError) as exc:
        if allow_private:  # every address may be called: there is nothing to hide
            raise InvalidInput(
                f"url: the host {target.host} cannot be resolved", field="url", rule="resolvable-host"
            ) from exc
        raise InvalidInput(
            f"url: {webhook_rules.name_refusal(target.host)}", field="url", rule="public-address"
        ) from None
    for info in found:
        if webhook_rules.address_refusal(str(info[4][0]), allow_private=allow_private) is not None:
            raise InvalidInput(
                f"url: {webhook_rules.name_refusal(target.host)}", field="url", rule="public-address"
            )
