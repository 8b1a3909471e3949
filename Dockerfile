# veer: progressive-delivery sidecar proxy.
#   docker build -t veer .
#   docker run -p 8080:8080 -v $PWD/veer.yaml:/etc/veer/veer.yaml:ro veer
FROM python:3.12-slim

WORKDIR /opt/veer
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY admin ./admin
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --no-create-home veer

USER veer
# data plane, admin listener
EXPOSE 8080 9901
# The config is mounted here; its listen addresses must be 0.0.0.0:... to be
# reachable from outside the container.
ENTRYPOINT ["veer", "run", "--config", "/etc/veer/veer.yaml"]
