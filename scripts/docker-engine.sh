#!/usr/bin/env bash
# A Docker engine for fxstream's container tests, on machines without one.
#
#   scripts/docker-engine.sh start   prints `export DOCKER_HOST=...` for an engine that answers
#   scripts/docker-engine.sh stop    stops the engine this script started (if any)
#
# When an engine already answers (DOCKER_HOST, or the default socket), `start` uses it
# and `stop` leaves it alone. Otherwise Debian's docker.io (plus docker-compose and
# debootstrap, which the image build uses) is installed when missing and dockerd runs
# on a private socket, its whole state under <state dir>/docker (FXSTREAM_STATE_DIR,
# default .fxstream), with the overlay2 storage driver where the kernel allows it and
# vfs otherwise (FXSTREAM_DOCKER_STORAGE_DRIVER chooses).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="$(cd "$here" && mkdir -p "${FXSTREAM_STATE_DIR:-.fxstream}/docker" \
  && cd "${FXSTREAM_STATE_DIR:-.fxstream}/docker" && pwd)"
sock="$state/docker.sock"
pidfile="$state/dockerd.pid"
log="$state/dockerd.log"

say() { echo "fxstream docker: $*" >&2; }

answers() { docker ${1:+-H "$1"} version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install_packages() {
  local need=()
  command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 \
    || need+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    say "missing packages: ${need[*]}; install them (needs root)"
    exit 1
  fi
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
    >/dev/null
}

# overlay2 when this kernel mounts overlayfs on the state directory's filesystem: vfs
# (which works everywhere) copies the whole file tree for every layer and container.
overlay_works() {
  local probe="$state/overlay-probe" ok=1
  mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
  if mount -t overlay overlay \
      -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
      "$probe/merged" 2>/dev/null; then
    umount "$probe/merged"
    ok=0
  fi
  rm -rf "$probe"
  return $ok
}

start() {
  if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then
    echo "export DOCKER_HOST=$DOCKER_HOST"; return 0
  fi
  if [ -S "$sock" ] && answers "unix://$sock"; then
    echo "export DOCKER_HOST=unix://$sock"; return 0
  fi
  if [ -z "${DOCKER_HOST:-}" ] && answers ""; then
    echo "export DOCKER_HOST=unix:///var/run/docker.sock"; return 0
  fi
  install_packages
  if [ "$(id -u)" -ne 0 ]; then
    say "no Docker engine answers and starting one needs root"
    exit 1
  fi
  mkdir -p "$state/data" "$state/exec"
  local driver="${FXSTREAM_DOCKER_STORAGE_DRIVER:-}"
  if [ -z "$driver" ]; then
    if overlay_works; then driver=overlay2; else driver=vfs; fi
  fi
  say "starting dockerd ($driver, state in $state)"
  # Without systemd nothing else starts containerd; dockerd starts its own.
  setsid dockerd --storage-driver="$driver" --host="unix://$sock" --data-root="$state/data" \
    --exec-root="$state/exec" --pidfile="$pidfile" >"$log" 2>&1 </dev/null &
  for _ in $(seq 1 120); do
    if answers "unix://$sock"; then
      touch "$state/started-here"
      echo "export DOCKER_HOST=unix://$sock"
      return 0
    fi
    sleep 0.5
  done
  say "dockerd did not answer within 60 s; last lines of $log:"
  tail -n 20 "$log" >&2
  exit 1
}

stop() {
  [ -f "$state/started-here" ] || return 0
  rm -f "$state/started-here"
  local pid
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    say "stopping dockerd ($pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "dockerd did not stop within 30 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  # What dockerd may leave mounted (its network namespace), so that the state can be removed.
  { grep -o " $state/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount "$m" || true; done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
