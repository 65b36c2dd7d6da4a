"""Where a test's calls come from, as the throttles count them (shared.throttle.source_of).

* A **loopback address** of its own: Linux routes all of 127.0.0.0/8 to ``lo``, so a client
  socket may bind any of them and the service sees that peer address. Never 127.0.0.1,
  which the tests' services trust as their load balancer (``FLEETREG_TRUSTED_PROXIES``).
* A **client behind the load balancer**: calls from 127.0.0.1 with ``X-Forwarded-For``
  naming a public address (the benchmark range of RFC 2544 or a TEST-NET by default).
"""

from __future__ import annotations

import ipaddress
import random

import aiohttp

TIMEOUT = aiohttp.ClientTimeout(total=60)


def fresh_address() -> str:
    """A random loopback address other than 127.0.0.1."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


def from_address(address: str) -> aiohttp.ClientSession:
    """A session whose connections come from the loopback ``address``."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=100)
    return aiohttp.ClientSession(connector=connector, timeout=TIMEOUT)


def public_address(network: str = "198.18.0.0/15") -> str:
    """A random host address of ``network`` (by default the benchmark range, RFC 2544)."""
    net = ipaddress.ip_network(network)
    return str(net.network_address + random.randint(1, net.num_addresses - 2))


def behind(client: str) -> aiohttp.ClientSession:
    """Calls of ``client`` as the trusted load balancer (127.0.0.1) forwards them."""
    return aiohttp.ClientSession(
        headers={"X-Forwarded-For": client}, connector=aiohttp.TCPConnector(limit=100), timeout=TIMEOUT
    )
