# syntax=docker/dockerfile:1
# Postal's container image:  docker build -t postal:0.1.0 .   (or `make image`, with podman)
#
# Two stages. The builder makes a virtual environment in /opt/venv with Postal and exactly the
# dependencies the lock names (requirements/main.txt: every package pinned, each file checked
# against its hash; a C compiler at hand for any of them without a binary wheel on the target
# platform). Postal's own wheel is built by the setuptools the lock pins
# (requirements/build.txt), in an environment of its own that stays in the builder. The final
# stage is a fresh slim Python with that environment copied in and nothing else: no compiler, no
# pip in the environment, no source tree, no tests. It runs as an unprivileged user and writes
# nothing to its root filesystem, so it runs with `readOnlyRootFilesystem` (deploy/k8s/).
#
# Both stages must be the same Python: a virtual environment is tied to its interpreter's path.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# gcc only for a dependency that has no wheel here; it never reaches the final image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
# The dependencies first, from the lock alone (--no-deps: pip resolves nothing), in a layer that
# a change to Postal's source does not rebuild. The environment has no pip of its own: the
# image's pip installs into it from outside.
COPY requirements ./requirements
RUN python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --require-hashes --no-deps -r requirements/main.txt \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps -r requirements/build.txt
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# A regular (not editable) install of the wheel: the package, its migrations and their bytecode,
# compiled now because the running container cannot write .pyc files.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && pip --python /opt/venv/bin/python install --no-deps /wheels/postal-*.whl \
 && /opt/venv/bin/postal version

FROM ${PYTHON_IMAGE} AS final
LABEL org.opencontainers.image.title="postal" \
      org.opencontainers.image.description="A posts service whose reads are served from Redis."
# A numeric, non-root user, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
RUN groupadd --system --gid 10001 postal \
 && useradd --system --uid 10001 --gid postal --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin postal \
 && install -d -o postal -g postal /var/lib/postal
COPY --from=builder /opt/venv /opt/venv
# POSTAL_DATA_DIR only matters without DATABASE_URL (an SQLite file there); Kubernetes sets
# DATABASE_URL and mounts nothing here.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    POSTAL_DATA_DIR=/var/lib/postal
WORKDIR /var/lib/postal
USER 10001:10001
EXPOSE 8000
# For plain `docker run`; Kubernetes ignores it and uses the probes in deploy/k8s/deployment.yaml.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('POSTAL_PORT', '8000') + '/healthz', timeout=2)"]
# Without POSTAL_API_TOKEN (32+ characters), `postal serve --host 0.0.0.0` exits 2: set it.
ENTRYPOINT ["postal"]
CMD ["serve", "--host", "0.0.0.0"]
