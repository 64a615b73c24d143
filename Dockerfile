# syntax=docker/dockerfile:1
# PawFinder serving image: Ray Serve + FastAPI on ONNX Runtime. No torch inside.
# Build:  docker build -t pawfinder .        Run: docker run -p 8000:8000 -e PAWFINDER_HOST=0.0.0.0 pawfinder

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY pawfinder ./pawfinder
COPY serve ./serve
RUN pip install --upgrade pip && pip install ".[serve]"

FROM python:${PYTHON_VERSION}-slim AS runtime
LABEL org.opencontainers.image.title="pawfinder" \
      org.opencontainers.image.description="Cat and dog breed recognition service (Ray Serve + FastAPI + ONNX Runtime)" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PAWFINDER_HOME=/var/lib/pawfinder \
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
    RAY_USAGE_STATS_ENABLED=0
RUN groupadd --system --gid 10001 pawfinder \
    && useradd --system --uid 10001 --gid pawfinder --home-dir /var/lib/pawfinder --create-home pawfinder
COPY --from=builder /opt/venv /opt/venv
COPY --chown=pawfinder:pawfinder serve /app/serve
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["pawfinder", "serve"]
