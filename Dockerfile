# syntax=docker/dockerfile:1
# fleetreg: one image for every service and for the migrations.
#
#   docker build -t fleetreg:local .
#   docker run --rm -e DATABASE_URL=postgresql://... fleetreg:local migrate
#   docker run --rm -e DATABASE_URL=... -e KAFKA_BOOTSTRAP_SERVERS=... -e FLEETREG_SECRET_KEY=... \
#              -e FLEETREG_HTTP_PORT=18080 -p 18080:18080 fleetreg:local intake
#
# docker-compose.yml (one host) and deploy/k8s (Kubernetes) run it; docs/operations.md.
#
# The first argument names the part to run (deploy/container/entrypoint.sh):
# dedup, provisioning, intake, operator, ingestion, notifier, migrate, or fleetreg ARGS.
# Configuration comes only from the environment: nothing secret is in the image.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------- builder ----
# Installs the pinned dependencies, then the project itself, into /opt/venv.
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, read from pyproject.toml: this layer is rebuilt only when
# the pins change, not on every code change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements.txt

# The project (shared, services, cli with the SQL migrations and the OpenAPI
# document as package data), installed non-editable: the code lives in the venv.
COPY shared ./shared
COPY services ./services
COPY cli ./cli
# The installer is not needed to run (nothing imports pip or setuptools at run time): 25 MB less.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools

# ------------------------------------------------------------------ final ----
# The same base, no compiler, no pip cache, no source tree: the venv and the entry point.
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="fleetreg" \
      org.opencontainers.image.description="Registration and provisioning of device fleets"

# A fixed numeric user (Kubernetes' runAsNonRoot checks the number), no login shell, no home;
# the ingestion service's spool folder (FLEETREG_BULK_SPOOL_DIR) is owned by it.
RUN groupadd --system --gid 10001 fleetreg \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
               --shell /usr/sbin/nologin fleetreg \
    && install -d -o 10001 -g 10001 -m 0700 /var/spool/fleetreg

COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/container/entrypoint.sh /usr/local/bin/fleetreg-entrypoint

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLEETREG_HTTP_HOST=0.0.0.0

# An empty working directory: the fleetreg command looks for var/endpoints.env here
# and finds none, so it reads the environment only.
WORKDIR /app
USER 10001:10001

# intake 18080, operator 18081, dedup 18082, provisioning 18083, ingestion 18084, notifier 18085
# (each service's own FLEETREG_HTTP_PORT), and the intake's https listener 18443
# (FLEETREG_COMPAT_PORT, when TLS is configured). /healthz, /readyz and /metrics are on
# each service's operations port only, its port + 100 (FLEETREG_<SERVICE>_OPS_PORT,
# 18180-18185): for probes and Prometheus, never to be published.
EXPOSE 18080 18081 18082 18083 18084 18085 18443 18180 18181 18182 18183 18184 18185
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/fleetreg-entrypoint"]
CMD ["--help"]
