"""Transport security on real servers: fleetreg's Kafka clients over SASL_SSL with
SCRAM-SHA-512, and its Postgres pool over TLS with sslmode=verify-full.

The setup makes its own certificate authority with openssl and starts a separate Kafka
4.1.1 broker (the jars of the local stack, its own KRaft storage, a SASL_SSL listener
and SCRAM users added at format time) and a separate throwaway Postgres cluster with
ssl=on, both on free loopback ports under var/; the shared local stack is not touched.
Both are stopped and their files removed even when a test fails.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from shared.db.pool import DatabaseUnavailable, open_pool, single_connection
from shared.events import Event, RegistrationRequested
from shared.kafka import (
    BatchConsumer,
    Topics,
    ensure_topics,
    make_consumer,
    make_producer,
    send_records,
)
from shared.settings import DatabaseSettings, KafkaSettings, Secret, load
from tests.support.kafka import running_producer
from tests.support.system import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KAFKA_LIBS = ROOT / "var" / "kafka" / "libs-4.1.1"
SCRAM = "SCRAM-SHA-512"


# ------------------------------------------------------------------ certificates ----
@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: Path  # the CA that signed the servers' certificate
    other_ca: Path  # a CA that signed nothing here
    cert: Path  # server certificate for 127.0.0.1 and localhost
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl not found: it makes the test's certificates (apt-get install openssl)")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed: {result.stderr}")


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    folder = ROOT / "var" / "tmp" / f"transport-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    try:
        for name in ("ca", "other-ca"):
            _openssl(
                *["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"],
                *("-subj", f"/CN=fleetreg test {name}", "-keyout", f"{name}.key", "-out", f"{name}.pem"),
                cwd=folder,
            )
        _openssl(
            *[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
            cwd=folder,
        )
        (folder / "server.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
        _openssl(
            *[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
            ],
            *["-extfile", "server.ext", "-out", "server.pem"],
            cwd=folder,
        )
        yield Pki(
            folder, folder / "ca.pem", folder / "other-ca.pem", folder / "server.pem", folder / "server.key"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ------------------------------------------------------------------ Kafka broker ----
@dataclass(frozen=True)
class Broker:
    settings: KafkaSettings  # fleetreg's user over SASL_SSL with SCRAM-SHA-512


def _kafka_properties(folder: Path, port: int, controller_port: int, broker_password: str) -> str:
    jaas = f"{SCRAM.lower()}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule"
    return f"""
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms={SCRAM}
sasl.mechanism.inter.broker.protocol={SCRAM}
listener.name.sasl_ssl.{jaas} required username="broker" password="{broker_password}";
ssl.keystore.type=PEM
ssl.keystore.location={folder}/keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location={folder}/ca.pem
log.dirs={folder}/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
"""


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[Broker]:
    if not (KAFKA_LIBS / ".complete").exists():
        pytest.fail(
            f"Kafka's jars are missing ({KAFKA_LIBS}): run `make up` or deploy/local/stack.sh infra-up"
        )
    folder = pki.folder / "kafka"
    folder.mkdir()
    # Kafka reads an unencrypted PKCS#8 key followed by its certificate from one PEM file.
    (folder / "keystore.pem").write_text(pki.key.read_text() + pki.cert.read_text())
    shutil.copy(pki.ca, folder / "ca.pem")
    port, controller_port = free_port(), free_port()
    password, broker_password = secrets.token_hex(16), secrets.token_hex(16)
    (folder / "server.properties").write_text(
        _kafka_properties(folder, port, controller_port, broker_password)
    )
    (folder / "log4j2.yaml").write_text(
        "Configuration:\n  Appenders:\n    Console:\n      name: STDOUT\n      PatternLayout:\n"
        '        pattern: "[%d] %p %m (%c)%n"\n  Loggers:\n    Root:\n      level: INFO\n'
        "      AppenderRef:\n        - ref: STDOUT\n"
    )
    java = ["java", "-cp", f"{KAFKA_LIBS}/*", f"-Dlog4j2.configurationFile={folder}/log4j2.yaml"]
    cluster_id = "-"
    while cluster_id.startswith("-"):  # the storage tool would read a leading "-" as an option (1 in 64)
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    formatted = subprocess.run(
        [
            *java,
            "-Xmx128m",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(folder / "server.properties"),
            "--add-scram",
            f"{SCRAM}=[name=fleetreg,password={password}]",
            "--add-scram",
            f"{SCRAM}=[name=broker,password={broker_password}]",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if formatted.returncode != 0:
        pytest.fail(f"formatting the test broker's storage failed: {formatted.stdout}{formatted.stderr}")
    log = folder / "kafka.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*java[:3], "-Xms64m", "-Xmx256m", *java[3:], "kafka.Kafka", str(folder / "server.properties")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        settings = KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{port}",
            topic_prefix=f"tls{uuid.uuid4().hex[:8]}",
            partitions=2,
            security_protocol="SASL_SSL",
            sasl_mechanism=SCRAM,
            sasl_username="fleetreg",
            sasl_password=Secret(password),
            ssl_cafile=str(pki.ca),
        )
        # The local stack's readiness check, configured like a service by KAFKA_* variables.
        environment = {
            **os.environ,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": SCRAM,
            "KAFKA_SASL_USERNAME": "fleetreg",
            "KAFKA_SASL_PASSWORD": password,
            "KAFKA_SSL_CAFILE": str(pki.ca),
        }
        ready = subprocess.run(
            [
                sys.executable,
                str(ROOT / "deploy" / "local" / "wait_for_kafka.py"),
                settings.bootstrap_servers,
                "90",
            ],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if ready.returncode != 0:
            pytest.fail(f"the SASL_SSL test broker did not come up: {ready.stderr}\n{_tail(log)}")
        assert password not in ready.stderr
        yield Broker(settings)
    finally:
        _stop(process)


# ------------------------------------------------------------------------ Kafka ----
def _requests(n: int) -> list[RegistrationRequested]:
    """What crosses Kafka in production: hardware IDs and keyed digests of secrets."""
    return [
        RegistrationRequested(
            request_id=str(uuid.uuid4()),
            received_at=1_765_000_000.0 + i,  # decoding checks times (shared.events.TIME_RANGE)
            bulk_identification_code="5A1B2C3D-0000-4000-8000-00000000C0DE",
            hardware_id=f"hw-{i:04d}",
            fingerprint="",
            registration_key_digest=secrets.token_hex(32),
        )
        for i in range(n)
    ]


async def test_the_pipeline_runs_over_sasl_ssl_with_scram(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = broker.settings
    topic = Topics(settings.topic_prefix).registration_requested
    sent = _requests(50)
    await ensure_topics(settings, [topic])
    async with running_producer(settings) as producer:
        await send_records(producer, [(topic, e.hardware_id, e) for e in sent])

    received: list[Event] = []
    done = asyncio.Event()

    async def handler(batch: list[Event]) -> None:
        received.extend(batch)
        if len(received) >= len(sent):
            done.set()

    raw = make_consumer(settings, [topic], group_id=f"{settings.topic_prefix}-group")
    await raw.start()
    try:
        consumer = BatchConsumer(raw, handler, max_records=20, name="tls-test")
        task = asyncio.create_task(consumer.run())
        try:
            async with asyncio.timeout(60):
                await done.wait()
        finally:
            consumer.stop()
            await task
        committed = {tp.partition: await raw.committed(tp) for tp in raw.assignment()}
    finally:
        await raw.stop()
    assert sorted(received, key=repr) == sorted(sent, key=repr)
    assert sum(offset or 0 for offset in committed.values()) == len(sent), "offsets committed over SASL_SSL"
    assert caplog.records, "the clients logged nothing at DEBUG: the check below would prove nothing"
    assert settings.sasl_password.reveal() not in caplog.text


async def _refused(settings: KafkaSettings) -> KafkaConnectionError:
    producer = make_producer(settings, request_timeout_ms=10_000)
    try:
        with pytest.raises(KafkaConnectionError) as caught:
            await producer.start()
    finally:
        await producer.stop()
    return caught.value


async def test_a_wrong_scram_password_is_refused(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    wrong = replace(broker.settings, sasl_password=Secret("not-" + broker.settings.sasl_password.reveal()))
    error = await _refused(wrong)
    # aiokafka raises "Unable to bootstrap" and logs the broker's reason.
    said = f"{error} {caplog.text}"
    assert "SaslAuthenticationFailed" in said and "invalid credentials" in said, said
    assert wrong.sasl_password.reveal() not in said


async def test_a_client_without_the_ca_does_not_trust_the_broker(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    # Empty KAFKA_SSL_CAFILE: the system's trust store, which does not hold the test CA.
    untrusting = replace(broker.settings, ssl_cafile="")
    error = await _refused(untrusting)
    said = f"{error} {caplog.text}"
    assert "CERTIFICATE_VERIFY_FAILED" in said, said


# ---------------------------------------------------------------------- Postgres ----
def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not found:
        pytest.fail(
            "no Postgres server binaries under /usr/lib/postgresql (deploy/local/stack.sh installs them)"
        )
    return found[-1].parent


def _as_postgres(command: list[str]) -> list[str]:
    """Postgres refuses to run as root: as root, its programs run as the 'postgres' user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def tls_postgres(pki: Pki) -> Iterator[str]:
    """A throwaway cluster with ssl=on; the URL (without TLS parameters) of its postgres database."""
    bin_dir = _pg_bin()
    folder = pki.folder / "postgres"
    folder.mkdir()
    password = secrets.token_hex(16)
    (folder / "pwfile").write_text(password)
    shutil.copy(pki.cert, folder / "server.pem")
    shutil.copy(pki.key, folder / "server.key")
    (folder / "server.key").chmod(0o600)
    (folder / "socket").mkdir()
    if os.geteuid() == 0:
        shutil.chown(pki.folder, "postgres")
        for path in [folder, *folder.iterdir()]:
            shutil.chown(path, "postgres")
    initdb = subprocess.run(
        _as_postgres(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(folder / "data"),
                "-U",
                "fleetreg",
                f"--pwfile={folder / 'pwfile'}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if initdb.returncode != 0:
        pytest.fail(f"initdb of the TLS test cluster failed: {initdb.stderr}")
    port = free_port()
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -k {folder / 'socket'} -c max_connections=20"
        f" -c shared_buffers=16MB -c ssl=on -c ssl_cert_file={folder / 'server.pem'}"
        f" -c ssl_key_file={folder / 'server.key'}"
    )
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(folder / "data")]
    log = folder / "postgres.log"
    try:
        started = subprocess.run(
            _as_postgres([*pg_ctl, "-l", str(log), "-w", "-t", "60", "-o", options, "start"]),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if started.returncode != 0:
            pytest.fail(f"the TLS test cluster did not start: {started.stderr}\n{_tail(log)}")
        yield f"postgresql://fleetreg:{password}@localhost:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([*pg_ctl, "stop", "-m", "immediate", "-w", "-t", "30"]),
            capture_output=True,
            timeout=60,
            check=False,
        )


def _password(url: str) -> str:
    password = urllib.parse.urlsplit(url).password
    assert password
    return password


async def test_the_pool_connects_with_verify_full_and_the_ca(tls_postgres: str, pki: Pki) -> None:
    url = f"{tls_postgres}?sslmode=verify-full&sslrootcert={pki.ca}"
    settings = load(DatabaseSettings.from_env, {"DATABASE_URL": url})
    assert settings.sslmode == "verify-full"
    pool = await open_pool(replace(settings, pool_min=1, pool_max=2))
    try:
        encrypted = await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await pool.close()
    assert encrypted is True
    async with single_connection(url) as conn:  # what `fleetreg migrate` opens
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True


async def test_verify_full_refuses_a_server_signed_by_another_ca(tls_postgres: str, pki: Pki) -> None:
    url = f"{tls_postgres}?sslmode=verify-full&sslrootcert={pki.other_ca}"
    settings = load(DatabaseSettings.from_env, {"DATABASE_URL": url})
    with pytest.raises(DatabaseUnavailable, match="CERTIFICATE_VERIFY_FAILED") as caught:
        await open_pool(settings)
    assert _password(url) not in str(caught.value)


async def test_sslmode_require_refuses_a_server_without_tls(database_url: str) -> None:
    """The local stack's Postgres runs without TLS: sslmode=require must not fall back."""
    separator = "&" if "?" in database_url else "?"
    url = f"{database_url}{separator}sslmode=require"
    settings = load(DatabaseSettings.from_env, {"DATABASE_URL": url})
    with pytest.raises(DatabaseUnavailable, match="rejected SSL upgrade") as caught:
        await open_pool(settings)
    assert _password(database_url) not in str(caught.value)
