# SayIt node, CPU (faster-whisper int8). One image, three roles: WORKER_MODE=all|api_only|queue_only.
# CUDA variant: see docs/OPERATIONS.md ("GPU nodes").
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 SAYIT_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY sayit_actors ./sayit_actors
COPY http_edge ./http_edge
COPY ops/scripts ./ops/scripts
RUN pip install . && useradd --create-home --uid 10001 sayit && mkdir -p /data && chown sayit /data
USER sayit
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "ops/scripts/healthcheck.py", "--url", "http://127.0.0.1:3000", "--ready"]
CMD ["sayit", "serve", "--port", "3000"]
