"""Issue 25's benchmarks for ``make bench``: derived-key registrations and certificates
issued from CSRs, beside the code mode's two-call storm of the same run, and the issuing
CA's signing cost alone (docs/performance.md, "Per-device identity").

The storms are ordered so that no mode is favoured by the machine's drift (the registry
grows with every storm; other load comes and goes): rounds of code, derived_key, CSR, the
odd rounds reversed (code, derived, CSR, CSR, derived, code, ...), so with an even number
of rounds every mode's mean position is the same. Each storm is reported, and every
mode's median; the derived/code ratio is of the medians of the same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cli.commands.simulate import device_csr
from shared.domain.certificates import device_certificate, new_issuing_ca, parse_csr

Mode = Literal["code", "derived_key", "csr"]
MODES: tuple[Mode, ...] = ("code", "derived_key", "csr")
# Issue 25's targets.
DERIVED_TARGET_RATIO = 0.9
CERTIFICATES_TARGET_PER_S = 400.0

Storm = Callable[[Mode], Awaitable[dict[str, Any]]]


def storm_order(rounds: int) -> list[Mode]:
    """The identity storms of ``rounds`` rounds, in running order: each round is code,
    derived_key, csr, every odd round (counting from 0) reversed. ValueError below 1."""
    if rounds < 1:
        raise ValueError(f"rounds must be 1 or more, not {rounds}")
    order: list[Mode] = []
    for index in range(rounds):
        order.extend(MODES if index % 2 == 0 else tuple(reversed(MODES)))
    return order


async def run(storm: Storm, rounds: int, first_code: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the storms of :func:`storm_order` through ``storm(mode)``; ``first_code`` is the
    run's two-call storm already measured (it stands for the first round's code storm)."""
    storms: list[dict[str, Any]] = []
    for position, mode in enumerate(storm_order(rounds)):
        if position == 0 and mode == "code" and first_code is not None:
            result = first_code
        else:
            result = await storm(mode)
        storms.append(result | {"mode": mode, "position": position})
    return summarize(storms)


def summarize(storms: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each mode's devices/s (each storm and the median), the CSR storms' certificates/s,
    the derived/code and csr/code ratios of the medians, and the targets met or not.
    ``storms`` carry ``mode``, ``devices_per_s``, ``errors``, with a CSR
    ``certificates_per_s``, and ``cpu_ms_per_device`` when it was measured."""

    def median(mode: Mode, key: str) -> float:
        values = [s[key] for s in storms if s["mode"] == mode]
        return round(statistics.median(values), 1) if values else 0.0

    def cpu(mode: Mode) -> dict[str, float]:
        found = [s["cpu_ms_per_device"] for s in storms if s["mode"] == mode and s.get("cpu_ms_per_device")]
        names = sorted({name for each in found for name in each})
        return {n: round(statistics.median(f[n] for f in found if n in f), 3) for n in names}

    code, derived, csr = (median(m, "devices_per_s") for m in MODES)
    certificates = median("csr", "certificates_per_s")
    derived_ratio = round(derived / code, 3) if code else 0.0
    return {
        "storms": list(storms),
        "median_devices_per_s": {"code": code, "derived_key": derived, "csr": csr},
        "median_certificates_per_s": certificates,
        # CPU ms per device of each process (tests/bench/cpu.py), each mode's median.
        "median_cpu_ms_per_device": {m: cpu(m) for m in MODES},
        "derived_to_code": derived_ratio,
        "csr_to_code": round(csr / code, 3) if code else 0.0,
        "errors": sum(int(s["errors"]) for s in storms),
        "targets": {
            "derived_to_code_at_least": DERIVED_TARGET_RATIO,
            "derived_met": derived_ratio >= DERIVED_TARGET_RATIO,
            "certificates_per_s_at_least": CERTIFICATES_TARGET_PER_S,
            "certificates_met": certificates >= CERTIFICATES_TARGET_PER_S,
        },
    }


def _rate(operation: Callable[[], object], seconds: float) -> dict[str, Any]:
    """How many times ``operation`` runs per CPU second of this process (one core: the
    calls are sequential), over about ``seconds`` of CPU time."""
    count = 0
    started = time.process_time()
    deadline = started + seconds
    while True:
        operation()
        count += 1
        if count % 16 == 0 and time.process_time() >= deadline:
            break
    spent = time.process_time() - started
    return {"count": count, "cpu_s": round(spent, 3), "per_s_per_core": round(count / spent, 1)}


def signing_cost(seconds: float = 2.0) -> dict[str, Any]:
    """The issuing CA's signing cost alone, in process, no I/O: a P-256 CA (as every
    account's) signing (1) a bare ECDSA P-256 / SHA-256 signature of a certificate-sized
    body, (2) a whole device certificate from a checked CSR (the profile of
    shared.domain.certificates.device_certificate: build, sign, DER), and (3) checking a
    P-256 CSR (decode, parse, key and signature check: what the intake does per request
    before signing). Each: ``count``, ``cpu_s`` and ``per_s_per_core``; ``seconds`` of CPU
    each."""
    ca = new_issuing_ca("00000000-0000-4000-8000-000000000000")
    text = device_csr()
    csr = parse_csr(text)
    body = b"\x30" * 400  # about a device certificate's TBSCertificate
    now = datetime.now(UTC)
    signature = ec.ECDSA(hashes.SHA256())
    key = ca.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # a self-made CA's (an uploaded one may be RSA)
    return {
        "ca_key": "P-256",
        "ecdsa_sign": _rate(lambda: key.sign(body, signature), seconds),
        "device_certificate": _rate(
            lambda: device_certificate(ca, csr, "02a1b2c3d4e5", "device", 365, now), seconds
        ),
        "csr_check": _rate(lambda: parse_csr(text), seconds),
    }
