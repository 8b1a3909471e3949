# veer: progressive-delivery sidecar proxy.
#   docker build -t veer .
#   docker run -p 8080:8080 -p 9901:9901 -v veer-state:/var/lib/veer \
#       -v $PWD/veer.yaml:/etc/veer/veer.yaml:ro veer
# The config's listen addresses must be 0.0.0.0:... to be reachable from
# outside the container. A relative state.path (./veer-state.json) lands on the
# /var/lib/veer volume, the working directory.
#
# BASE is any Debian-like image with python3 (3.11+) and its venv module:
# python:3.12-slim (the default) or a Debian rootfs with only Debian's python3
# and python3-venv (.ci/base-image makes one). pip runs from a venv made in
# the image, never from the base's PATH.
#
# The build stage compiles the hot path with mypyc (VEER_BUILD=mypyc: the build
# fails rather than fall back); it installs a C compiler, and Python's headers
# where the base lacks them, with apt-get. The runtime stage has neither.
# VEER_BUILD=pure makes a pure-Python image with no compiler at all.
ARG BASE=python:3.12-slim

# --- build: veer and its dependencies into a venv at /opt/veer/venv ---
FROM ${BASE} AS build
# A package index other than PyPI (a mirror), as pip's own variable; build
# args of this stage are not in the final image. pip verifies TLS against the
# base image's CA store (the venv's pip.conf says so), so a base that trusts a
# local CA (a TLS-intercepting proxy) works.
ARG PIP_INDEX_URL
ARG VEER_BUILD=mypyc
RUN if [ "$VEER_BUILD" != pure ]; then \
        pkgs=; command -v gcc >/dev/null || pkgs="gcc libc6-dev"; \
        python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
            || pkgs="$pkgs python3-dev"; \
        if [ -n "$pkgs" ]; then \
            apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null \
            && rm -rf /var/lib/apt/lists/*; \
        fi; \
    fi
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/veer/venv \
    && if [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >/opt/veer/venv/pip.conf; \
    fi
WORKDIR /src
# The dependencies first, in a layer that only pyproject.toml invalidates (a
# change to the code reuses it): veer's metadata from empty packages and an
# empty README.
COPY pyproject.toml ./
RUN mkdir proxy admin && touch README.md proxy/__init__.py admin/__init__.py \
    && printf 'from setuptools import setup\nsetup()\n' >setup.py \
    && /opt/veer/venv/bin/python -m pip install --quiet . \
    && rm -rf proxy admin README.md setup.py build ./*.egg-info
COPY README.md setup.py ./
COPY proxy ./proxy
COPY admin ./admin
# Then veer itself. The image runs no installer: pip, setuptools and the pip
# config go.
RUN VEER_BUILD=$VEER_BUILD /opt/veer/venv/bin/python -m pip install --quiet --no-deps --force-reinstall . \
    && /opt/veer/venv/bin/python -m pip uninstall --quiet --yes pip setuptools \
    && rm -f /opt/veer/venv/pip.conf \
    && /opt/veer/venv/bin/veer --version \
    && { [ "$VEER_BUILD" = pure ] || /opt/veer/venv/bin/veer --version | grep -q "hot path compiled with mypyc"; }

# --- runtime ---
FROM ${BASE}
LABEL org.opencontainers.image.title="veer" \
      org.opencontainers.image.description="Sidecar reverse proxy for progressive delivery" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 veer \
    && useradd --no-log-init --uid 10001 --gid veer --home-dir /var/lib/veer \
        --no-create-home --shell /usr/sbin/nologin veer \
    && mkdir -p /etc/veer /var/lib/veer \
    && chown veer:veer /var/lib/veer \
    && chmod 0750 /var/lib/veer
COPY --from=build /opt/veer/venv /opt/veer/venv
# VEER_ADMIN: the admin listener, for the health check and `docker exec ... veer
# status`; set it if the config's admin.listen is not port 9901.
ENV PATH=/opt/veer/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VEER_ADMIN=http://127.0.0.1:9901
# The state (state.path: ./veer-state.json) lives here; a named volume takes
# the directory's owner (veer) the first time it is mounted. A host directory
# mounted here must be writable by uid 10001.
WORKDIR /var/lib/veer
VOLUME ["/var/lib/veer"]
USER 10001:10001
# data plane, admin listener
EXPOSE 8080 9901
# /healthz answers 200 while the process is up (no curl in slim images).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('VEER_ADMIN', 'http://127.0.0.1:9901').rstrip('/') + '/healthz', timeout=2)"]
# Exec form: veer is PID 1 and gets docker stop's SIGTERM itself (it drains,
# then exits 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["veer", "run", "--config", "/etc/veer/veer.yaml"]
