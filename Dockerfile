# fxstream (worker, sinks, producers, CLI). BASE_IMAGE is the official python:3.11-slim
# where a registry answers, or any Debian bookworm image (Debian's Python 3.11 is used).
# The image runs as the unprivileged user fxstream (uid 10001), whose state directory
# /var/lib/fxstream (FXSTREAM_STATE_DIR) it owns.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
USER root
ENV PATH=/opt/fxstream/bin:$PATH FXSTREAM_STATE_DIR=/var/lib/fxstream
WORKDIR /var/lib/fxstream
CMD ["fxstream", "--help"]
# The dependencies first, from pyproject.toml alone, so that a change of the sources
# reuses them. host-ca-bundle.pem, when the build context has one, is what pip trusts.
COPY pyproject.toml host-ca-bundle.pe[m] /tmp/fxstream-build/
RUN set -eu; \
    if ! command -v python3.11 >/dev/null; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv ca-certificates; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    if [ -f /tmp/fxstream-build/host-ca-bundle.pem ]; then \
      export PIP_CERT=/tmp/fxstream-build/host-ca-bundle.pem; fi; \
    python3.11 -m venv /opt/fxstream; \
    python3.11 -c "import tomllib; p = tomllib.load(open('/tmp/fxstream-build/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['rocksdb'] + ['setuptools>=68', 'wheel']))" \
      > /tmp/fxstream-build/requirements.txt; \
    /opt/fxstream/bin/pip install --no-cache-dir -q -r /tmp/fxstream-build/requirements.txt; \
    useradd --system --uid 10001 --user-group --home-dir /var/lib/fxstream fxstream; \
    chown fxstream:fxstream /var/lib/fxstream; \
    rm -rf /tmp/fxstream-build
# .dockerignore lets only the package sources through.
COPY . /opt/fxstream/src/
RUN cd /opt/fxstream/src \
    && /opt/fxstream/bin/pip install --no-cache-dir -q --no-deps --no-build-isolation . \
    && rm -rf build *.egg-info host-ca-bundle.pem
USER fxstream
