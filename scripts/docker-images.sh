#!/usr/bin/env bash
# Builds the Kafka, PostgreSQL and fxstream images on the engine DOCKER_HOST names and
# prints the `export FXSTREAM_*_IMAGE=...` lines that docker-compose.yml and the tests read.
#
# Each image is built FROM its official image (apache/kafka, postgres, python) when the
# engine has it or can pull it, and otherwise FROM a Debian bookworm base made here with
# debootstrap and imported (no image registry needed). An image is rebuilt only when its
# inputs change: every image carries the label io.fxstream.inputs, a hash of its build
# context and base image, and a matching image is reused as it is.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
state="$(mkdir -p "${FXSTREAM_STATE_DIR:-.fxstream}/docker" \
  && cd "${FXSTREAM_STATE_DIR:-.fxstream}/docker" && pwd)"
contexts="$state/context"
export DOCKER_BUILDKIT=0  # the classic builder: what docker-compose 1.29 uses too

say() { echo "fxstream images: $*" >&2; }

kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' \
  pipeline/stack/kafka-pom.xml)"
local_base="fxstream-base:bookworm"
kafka_image="fxstream/kafka:$kafka_version"
postgres_image="fxstream/postgres:15"
fxstream_image="fxstream:local"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The official image when present or pullable (quietly: no registry is a normal case).
official_or_local() {
  if have_image "$1" || docker pull -q "$1" >/dev/null 2>&1; then
    echo "$1"
  else
    ensure_local_base
    echo "$local_base"
  fi
}

debian_mirror() {
  local m
  m="$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
    2>/dev/null | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n 1 \
    | tr -d ' ' || true)"
  echo "${m:-http://deb.debian.org/debian}"
}

ensure_local_base() {
  have_image "$local_base" && return 0
  command -v debootstrap >/dev/null 2>&1 || {
    say "debootstrap is missing (scripts/docker-engine.sh start installs it)"; exit 1; }
  local root="$state/rootfs"
  rm -rf "$root"
  say "making $local_base with debootstrap from $(debian_mirror)"
  debootstrap --variant=minbase bookworm "$root" "$(debian_mirror)" >"$state/debootstrap.log" 2>&1 \
    || { tail -n 20 "$state/debootstrap.log" >&2; exit 1; }
  tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$local_base" >/dev/null
  rm -rf "$root"
}

inputs_hash() {  # $1 context dir, $2 base image
  (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum
   docker image inspect -f '{{.Id}}' "$2") | sha256sum | cut -c1-32
}

build() {  # $1 tag, $2 context dir, $3 base image
  local digest current
  digest="$(inputs_hash "$2" "$3")"
  current="$(docker image inspect -f '{{index .Config.Labels "io.fxstream.inputs"}}' "$1" \
    2>/dev/null || true)"
  if [ "$current" = "$digest" ]; then
    say "$1 is up to date (inputs $digest)"
    return 0
  fi
  say "building $1 FROM $3"
  local started=$SECONDS
  docker build -q --network host --build-arg "BASE_IMAGE=$3" \
    --label "io.fxstream.inputs=$digest" -t "$1" "$2" >"$state/build-${1//[:\/]/-}.log" 2>&1 \
    || { tail -n 40 "$state/build-${1//[:\/]/-}.log" >&2; exit 1; }
  say "built $1 in $((SECONDS - started)) s"
  # The image this one replaced, now untagged.
  docker image prune -f --filter "label=io.fxstream.inputs" >/dev/null
}

fresh_context() { rm -rf "$contexts/$1"; mkdir -p "$contexts/$1"; echo "$contexts/$1"; }

# Kafka: the jars Maven resolved for the embedded stack (cached there).
.venv/bin/fxstream stack fetch >/dev/null
jars="${FXSTREAM_STATE_DIR:-.fxstream}/kafka-jars"
ctx="$(fresh_context kafka)"
cp docker/kafka/* "$ctx/"
mkdir "$ctx/jars"
cp "$jars"/*.jar "$ctx/jars/"
build "$kafka_image" "$ctx" "$(official_or_local "apache/kafka:$kafka_version")"

ctx="$(fresh_context postgres)"
cp docker/postgres/* "$ctx/"
build "$postgres_image" "$ctx" "$(official_or_local postgres:15)"

# fxstream: the files the Dockerfile copies, without caches, plus the CA bundle pip trusts.
ctx="$(fresh_context fxstream)"
tar -c --exclude=__pycache__ --exclude='*.pyc' --exclude=bench/out Dockerfile .dockerignore \
  pyproject.toml README.md pipeline producers consumers schemas bench simulators \
  | tar -x -C "$ctx"
ca="${FXSTREAM_PIP_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[ -f "$ca" ] && cp "$ca" "$ctx/host-ca-bundle.pem"
build "$fxstream_image" "$ctx" "$(official_or_local python:3.11-slim)"

echo "export FXSTREAM_KAFKA_IMAGE=$kafka_image"
echo "export FXSTREAM_POSTGRES_IMAGE=$postgres_image"
echo "export FXSTREAM_IMAGE=$fxstream_image"
