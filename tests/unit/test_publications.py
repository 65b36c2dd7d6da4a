"""Every event's topic and key are declared once (shared.kafka.PUBLICATIONS) and every
publisher goes through the declaration; the keys are the ones each consumer's order rests
on (docs/architecture.md, "Topics")."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from shared.domain.identifiers import hardware_id_stem, new_request_id
from shared.events import (
    EVENT_TYPES,
    BulkPublish,
    BulkPublished,
    DeviceSignal,
    Event,
    RegistrationDecided,
    RegistrationOutcome,
    RegistrationRequested,
)
from shared.kafka import PUBLICATIONS, Topics, destination

ROOT = Path(__file__).resolve().parents[2]
TOPICS = Topics("fleetreg")
DEVICE_ID = str(uuid.uuid4())
REGISTRATION_ID = str(uuid.uuid4())
REQUEST_ID = new_request_id()


def test_every_event_type_has_one_publication_on_a_topic_of_the_deployment() -> None:
    assert set(PUBLICATIONS) == set(EVENT_TYPES.values())
    for publication in PUBLICATIONS.values():
        assert publication.topic(TOPICS) in TOPICS.all()


@pytest.mark.parametrize(
    ("event", "topic", "key"),
    [
        (
            RegistrationRequested(
                request_id=REQUEST_ID,
                received_at=time.time(),
                bulk_identification_code=str(uuid.uuid4()).upper(),
                hardware_id="B827EB123456-2",
                fingerprint="",
            ),
            TOPICS.registration_requested,
            "b827eb123456",  # the hardware-ID stem: every claim of one ID on one partition
        ),
        (
            RegistrationDecided(
                request_id=REQUEST_ID,
                account_id="",
                product_id="",
                device_id=DEVICE_ID,
                hardware_id="B8",
                decision="new",
                credential_generation=1,
            ),
            TOPICS.registration_decided,
            DEVICE_ID,
        ),
        (
            RegistrationOutcome(request_id=REQUEST_ID, status="refused", reason="no"),
            TOPICS.registration_outcomes,
            REQUEST_ID,
        ),
        (BulkPublish(registration_id=REGISTRATION_ID, after_line=7), TOPICS.bulk_publish, REGISTRATION_ID),
        (
            BulkPublished(
                registration_id=REGISTRATION_ID,
                account_id=str(uuid.uuid4()),
                product_id=str(uuid.uuid4()),
                published=1,
                conflicts=0,
                at=time.time(),
            ),
            TOPICS.bulk_publish,  # after the registration's last chunk, on its partition
            REGISTRATION_ID,
        ),
    ],
    ids=lambda v: v.TYPE if isinstance(v, Event) else "",
)
def test_an_event_that_carries_its_key_goes_where_it_always_went(event: Event, topic: str, key: str) -> None:
    assert destination(TOPICS, event) == (topic, key)
    with pytest.raises(ValueError, match="carries its own key"):
        destination(TOPICS, event, "B8")


def test_a_signal_is_keyed_like_its_devices_registration_requests() -> None:
    signal = DeviceSignal(device_id=DEVICE_ID, kind="ready", at=time.time())
    assert destination(TOPICS, signal, "B827EB123456-2") == (
        TOPICS.device_signals,
        hardware_id_stem("B827EB123456"),
    )
    with pytest.raises(ValueError, match="keyed by its device's hardware ID"):
        destination(TOPICS, signal)


def test_no_service_chooses_a_topic_or_key_when_it_sends() -> None:
    """The services publish through shared.kafka.publish and publish_many, which take the
    topic and key from the declarations; the raw sends are for the plumbing's own tests."""
    raw = re.compile(r"\b(send_records|send_and_wait|send_many)\b")
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "services").rglob("*.py"))
        if raw.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
