#!/usr/bin/env bash
# `make test-docker`: the test suite with Kafka and PostgreSQL in containers
# (testcontainers), and the docker compose scale-out test.
#
# Uses the Docker engine that answers, or starts one (scripts/docker-engine.sh; stopped
# again at the end), builds or reuses the images (scripts/docker-images.sh), then runs
# pytest with FXSTREAM_TEST_STACK=testcontainers. PYTEST_ARGS are passed on.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
started=$SECONDS

eval "$(scripts/docker-engine.sh start)"
trap 'scripts/docker-engine.sh stop' EXIT
export DOCKER_HOST
eval "$(scripts/docker-images.sh)"
export FXSTREAM_KAFKA_IMAGE FXSTREAM_POSTGRES_IMAGE FXSTREAM_IMAGE
echo "fxstream test-docker: engine and images ready after $((SECONDS - started)) s" >&2

export FXSTREAM_TEST_STACK=testcontainers TESTCONTAINERS_RYUK_DISABLED=true
status=0
# shellcheck disable=SC2086 # PYTEST_ARGS is a list of arguments
.venv/bin/python -m pytest ${PYTEST_ARGS:-} || status=$?
echo "fxstream test-docker: finished in $((SECONDS - started)) s" >&2
exit $status
