# simclr-embed service: ONNX Runtime on CPU, no torch. Build and run:
#   docker build -t simclr-embed .
#   docker run -p 8080:8080 -v "$PWD/bundles/default:/models/bundle:ro" simclr-embed
# BASE_IMAGE lets CI build this same file on a local stand-in for python:3.11-slim.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md requirements/service.lock ./
COPY simclr_embed/ simclr_embed/
COPY training/ training/
COPY export/ export/
COPY service/ service/
COPY benchmarks/ benchmarks/
# The serving set (onnxruntime, fastapi, faiss, ...) plus the PostgreSQL gallery client.
# Pinned by hash (requirements/service.lock, `uv pip compile`): two builds, one image.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r service.lock \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps . \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin app \
 && mkdir -p /models/bundle /data && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SIMCLR_EMBED_HOST=0.0.0.0 \
    SIMCLR_EMBED_PORT=8080 \
    SIMCLR_EMBED_WORKERS=1 \
    SIMCLR_EMBED_PRECISION=int8 \
    SIMCLR_EMBED_BUNDLE=/models/bundle \
    SIMCLR_EMBED_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/app
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['SIMCLR_EMBED_PORT'] + '/readyz', timeout=2)"]
# uvicorn finishes in-flight requests on SIGTERM (up to 20 s) before it exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["simclr-embed", "serve"]
