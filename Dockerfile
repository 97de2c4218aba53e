# slimray: the pinned stack (Python 3.11, torch 2.13 CPU, Ray 2.60, MLflow 3.17) and this
# project, for Ray head/worker pods (cluster/k8s/) and Ray Jobs. Build from the repo root:
#   docker build -t slimray:0.1.0 .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 \
    RAY_AUTH_MODE=token
# Ray starts its own processes and probes them with these; libgomp is torch's OpenMP runtime
RUN apt-get update && apt-get install -y --no-install-recommends curl procps libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 ray
WORKDIR /app
# torch first, CPU build, exactly the version the project is tested with
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY pipelines ./pipelines
COPY tasks ./tasks
COPY conf ./conf
RUN pip install ".[cluster]" && python -c "import torch; assert torch.__version__.startswith('2.13.0')"
ENV SLIMRAY_CONF=/app/conf
USER ray
# Ray GCS, dashboard / jobs API, Ray client; the MLflow server image uses 5000
EXPOSE 6379 8265 10001
CMD ["slimray", "--help"]
