# fairlane's container image: one image for every role; the command picks it.
#
#   docker build -t fairlane:0.1.0 .
#   docker run --rm fairlane:0.1.0                       # fairlane --help
#   docker run --rm -e FAIRLANE_BROKER_URL=... -e FAIRLANE_DATABASE_URL=... \
#       fairlane:0.1.0 worker my_service.actors           # or: scheduler, jobs, dlq, tenants
#
# No credentials are baked in: FAIRLANE_BROKER_URL and FAIRLANE_DATABASE_URL come from the
# environment at run time (a Kubernetes Secret), never from a build argument.
#
# The runtime stage installs with RUN --mount (BuildKit, the default builder since Docker 23,
# and Podman/Buildah), so the wheels never land in an image layer. No `# syntax=` line: it
# would make every build pull a frontend image from a registry.

# The one base of both stages: slim Debian with CPython 3.11 (pyproject: requires-python >= 3.11).
# An air-gapped build can point this at a mirror: --build-arg PYTHON_IMAGE=registry.local/python:3.11-slim-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- builder: the fairlane wheel and a wheel of every runtime dependency (no dev extras) ---------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/

# A throwaway venv runs pip, so the build does not depend on a pip in the base image.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels .

# -- runtime -------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG PYTHON_IMAGE
ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="fairlane" \
      org.opencontainers.image.description="A multi-tenant, ledger-first background-job platform on Dramatiq and RabbitMQ." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# The only writable places are /tmp (the base image's) and /var/lib/fairlane, owned by the
# fairlane user and its WORKDIR, so the embedded SQLite default (./.fairlane/fairlane.db) and
# its leader lock land there too. With a read-only root filesystem, mount an emptyDir on
# /var/lib/fairlane/metrics (wiped at start by a worker pod anyway) and on /tmp; results must
# sit on storage the scheduler reaches too (FAIRLANE_RESULTS_DIR, see README).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/fairlane/bin:$PATH \
    FAIRLANE_METRICS_DIR=/var/lib/fairlane/metrics \
    FAIRLANE_RESULTS_DIR=/var/lib/fairlane/results

# The user (uid/gid 10001, no login shell) and its directories; then the wheels from the
# builder, offline, into a root-owned venv the user can read but not change.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    groupadd --gid 10001 fairlane \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /var/lib/fairlane --shell /usr/sbin/nologin fairlane \
    && install -d -o 10001 -g 10001 -m 0750 \
        /var/lib/fairlane /var/lib/fairlane/metrics /var/lib/fairlane/results \
    && python -m venv /opt/fairlane \
    && /opt/fairlane/bin/pip install --no-cache-dir --no-index --find-links=/wheels /wheels/fairlane-*.whl

WORKDIR /var/lib/fairlane
USER 10001:10001

# FAIRLANE_METRICS_PORT (/metrics) and FAIRLANE_HEALTH_PORT (/livez, /readyz) of a worker or
# scheduler.
EXPOSE 9191 9192

# No HEALTHCHECK: Kubernetes ignores it (its liveness/readiness probes call /livez and /readyz
# on port 9192), and the same image also runs one-shot commands (`fairlane jobs`, `dlq`,
# `tenants`) that serve no health endpoint, so one image-wide check would mark them unhealthy.
ENTRYPOINT ["fairlane"]
CMD ["--help"]
