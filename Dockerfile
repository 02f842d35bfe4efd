ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline pipeline
COPY producers producers
COPY consumers consumers
COPY schemas schemas
COPY bench bench
RUN pip install --no-cache-dir ".[rocksdb]"
USER nobody
ENTRYPOINT []
