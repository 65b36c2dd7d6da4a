"""Schemathesis against the running services, from each API's own served OpenAPI
document: no 5xx, only documented status codes and content types, and bodies that match
their schemas. A bounded number of examples per operation keeps `make test` fast;
`make fuzz` runs the same with FLEETREG_FUZZ_EXAMPLES=300.

The operator and bulk APIs are fuzzed with an account of their own (never the demo's),
whose key the cases send; the device API with whatever the fuzzer generates."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.api import Operator
from tests.support.system import System

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("FLEETREG_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# EST's enrollment bodies (RFC 7030): a CSR's base64 DER, a type schemathesis cannot make
# from a schema; any bytes (CSR-like or not) exercise the refusals.
schemathesis.openapi.media_type("application/pkcs10", st.binary(max_size=2048))


def fuzz(
    base_url: str,
    headers: dict[str, str],
    skip: Callable[[str, str], bool] = lambda m, p: False,
    verify: str | bool = True,
) -> int:
    """Run every operation of the document served at ``base_url``/openapi.yaml; the
    number of operations run. A failing check raises with schemathesis's report."""
    document = requests.get(f"{base_url}/openapi.yaml", timeout=10, verify=verify)
    document.raise_for_status()
    schema = schemathesis.openapi.from_dict(yaml.safe_load(document.text))
    run = 0
    with requests.Session() as session:
        session.verify = verify
        for result in schema.get_all_operations():
            operation = result.ok()
            if skip(operation.method.upper(), operation.path):
                continue

            # Valid inputs and invalid ones (wrong types, missing fields, out of range).
            cases = st.one_of(
                operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
            )

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
            )
            @given(case=cases)
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(
                    base_url=base_url, session=session, headers=headers, checks=CHECKS, verify=verify
                )

            check()
            run += 1
    return run


async def test_the_device_api_answers_every_generated_input_as_documented(system: System) -> None:
    assert await asyncio.to_thread(fuzz, system.device_url, {}) == 13  # 7, and 6 of certificates


async def test_the_device_api_in_the_plain_text_form_answers_as_documented(system: System) -> None:
    """Asked with ``Accept: text/plain`` (docs/device-api.md, "Plain-text answers"): every
    answer in a documented content type (the text form's), never a 5xx."""
    assert await asyncio.to_thread(fuzz, system.device_url, {"Accept": "text/plain"}) == 13


async def test_the_operator_api_answers_every_generated_input_as_documented(
    system: System, operator: Operator
) -> None:
    def destructive(method: str, path: str) -> bool:
        # Revoking keys would revoke the fuzzing account's own key mid-run.
        return method == "DELETE" and path.startswith("/v1/api-keys")

    headers = {"Authorization": f"Bearer {operator.api_key}"}
    assert await asyncio.to_thread(fuzz, system.operator_url, headers, destructive) > 20


async def test_the_bulk_api_answers_every_generated_input_as_documented(
    system: System, operator: Operator
) -> None:
    headers = {"Authorization": f"Bearer {operator.api_key}"}
    assert await asyncio.to_thread(fuzz, system.bulk_url, headers) == 9  # 7, and the hook's test and calls


async def test_the_reference_api_answers_every_generated_input_as_documented(system: System) -> None:
    """Every step answers in the protocol's own words (200 with status true, false,
    pending or reset), the download 200, 404 or 429; never a 5xx."""
    ran = await asyncio.to_thread(fuzz, system.compat_url, {}, verify=str(system.tls_ca))
    assert ran == 6
