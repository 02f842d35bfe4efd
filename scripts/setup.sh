#!/usr/bin/env bash
# Installs everything fxstream needs on a fresh Debian machine: system packages
# (Java 17, Maven, PostgreSQL 15) when they are missing, a virtualenv with the
# project and its pinned dependencies, and the Kafka jars through Maven.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

need_pkgs=()
command -v java >/dev/null 2>&1 || need_pkgs+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_pkgs+=(maven)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_pkgs+=(postgresql-15)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "fxstream setup: missing system packages: ${need_pkgs[*]}; install them (needs root)." >&2
    exit 1
  fi
  echo "fxstream setup: installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3

# The compiled candle loop (setup.py) needs a C compiler and the interpreter's headers;
# without them fxstream installs and runs the plain Python loop instead.
cc_pkgs=()
command -v cc >/dev/null 2>&1 || cc_pkgs+=(gcc libc6-dev)
"$py" -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(
    sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null \
  || cc_pkgs+=("$(basename "$(readlink -f "$(command -v "$py")")")-dev")
if [ ${#cc_pkgs[@]} -gt 0 ] && [ "$(id -u)" -eq 0 ]; then
  echo "fxstream setup: installing ${cc_pkgs[*]} (for the compiled candle loop)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${cc_pkgs[@]}" >/dev/null; } \
    || echo "fxstream setup: could not install ${cc_pkgs[*]}" >&2
fi

# promtool checks the alert rules in ops/prometheus (tests/test_observability.py); Debian
# ships it in the prometheus package, whose server is not wanted running here.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" -ne 0 ]; then
  echo "fxstream setup: promtool missing (Debian package prometheus, needs root); the" \
    "rule-file test fails without it." >&2
elif ! command -v promtool >/dev/null 2>&1; then
  echo "fxstream setup: installing promtool (Debian package prometheus)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
    >/dev/null
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

stamp=".venv/.fxstream-installed"
if [ ! -x .venv/bin/python ]; then
  echo "fxstream setup: creating .venv"
  "$py" -m venv .venv
fi
# setup.py and the .pyx: the compiled candle loop is rebuilt when its source changes,
# and when it is missing while a compiler is there (installed since the last run).
kernel_missing() {
  command -v cc >/dev/null 2>&1 \
    && ! .venv/bin/python -c "import pipeline.core.candle_kernel" 2>/dev/null
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
    || [ pipeline/core/candle_kernel.pyx -nt "$stamp" ] || kernel_missing; then
  echo "fxstream setup: installing Python packages"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev,rocksdb,bench]"
  touch "$stamp"
fi
if ! .venv/bin/python -c "import pipeline.core.candle_kernel" 2>/dev/null; then
  echo "fxstream setup: the compiled candle loop was not built (no C compiler?); the" \
    "worker runs the plain Python loop, about a fifth as fast (README, Performance)." >&2
fi

# Resolve the Kafka jars once (Maven caches them; a second run downloads nothing).
.venv/bin/fxstream stack fetch
