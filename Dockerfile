# slimray: the pinned stack (Python 3.11, torch 2.13 CPU, Ray 2.60, MLflow 3.17) and this
# project, for Ray head/worker pods (cluster/k8s/) and Ray Jobs. Build from the repo root:
#   docker build -t slimray:0.1.0 .
# Base image pinned by digest (a digest names exactly one image's content: a wrong or withdrawn
# digest fails the build, it never silently substitutes another image). This digest of
# python:3.11-slim was taken from public projects that pin that tag (the same value in two
# independent ones); it could NOT be verified here (no registry access). Check it, or take the
# current one, with `docker buildx imagetools inspect python:3.11-slim` (the index digest).
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 \
    RAY_AUTH_MODE=token
# Ray starts its own processes and probes them with these; libgomp is torch's OpenMP runtime
RUN apt-get update && apt-get install -y --no-install-recommends curl procps libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 ray
WORKDIR /app
# torch first, CPU build, exactly the version the project is tested with
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md constraints.txt ./
COPY pipelines ./pipelines
COPY tasks ./tasks
COPY conf ./conf
# every other dependency at the exact version the project is tested with (constraints.txt)
RUN pip install -c constraints.txt ".[cluster]" && python -c "import torch; assert torch.__version__.startswith('2.13.0')"
ENV SLIMRAY_CONF=/app/conf
USER ray
# Ray GCS, dashboard / jobs API, Ray client; the MLflow server image uses 5000
EXPOSE 6379 8265 10001
CMD ["slimray", "--help"]
