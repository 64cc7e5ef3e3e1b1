# One image for both containers of docker-compose.yml: the TorchServe model server (its workers run
# the `avn` model code installed here) and the diagnosis gateway. See docs/deployment.md.
FROM python:3.11-slim-bookworm

# TorchServe's frontend is Java.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/avn
COPY pyproject.toml README.md ./
COPY avn ./avn
COPY gateway ./gateway
COPY services ./services
COPY protos ./protos
# The web app's static files: gateway/rest/routers/web.py serves them beside the package at /app/.
COPY web ./web
# Editable: gateway/proto.py finds protos/ beside the package. The stubs are generated here, at
# build time (never committed): TorchServe's from its jar, avn.v1's from protos/.
RUN pip install --no-cache-dir -e . \
    && python -m gateway.torchserve_stubs \
    && python -m gateway.proto

RUN useradd --create-home --uid 10001 avn && mkdir -p /var/lib/torchserve && chown avn /var/lib/torchserve
USER avn
EXPOSE 8000 50051
CMD ["python", "-m", "gateway.service"]
