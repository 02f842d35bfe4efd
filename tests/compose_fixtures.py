"""docker-compose.yml driven from the tests: which compose command, and one project's life.

The compose tests run when a Docker engine answers (DOCKER_HOST) and a compose command
is installed: the compose plugin (`docker compose`) or Debian's docker-compose 1.29.
Otherwise they skip, and the pytest header says why.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from tests.stack_fixtures import docker_reachable

PROJECT_DIR = Path(__file__).resolve().parent.parent


@functools.cache
def compose_command() -> tuple[str, ...] | None:
    """`docker compose` when the plugin is there, else `docker-compose`, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    return None


def compose_unavailable() -> str | None:
    """Why the compose tests cannot run here, or None when they can."""
    engine = os.environ.get("DOCKER_HOST", "the default Docker socket")
    if not docker_reachable():
        return (f"no Docker engine answers at {engine}: the docker compose tests are skipped "
                "(`make test-docker` starts an engine and runs them)")
    if compose_command() is None:
        return "no docker compose command (plugin or docker-compose) is installed"
    return None


def describe_compose() -> str:
    reason = compose_unavailable()
    if reason is not None:
        return reason
    images = ", ".join(f"{v}={os.environ[v]}" for v in
                       ("FXSTREAM_KAFKA_IMAGE", "FXSTREAM_POSTGRES_IMAGE", "FXSTREAM_IMAGE")
                       if os.environ.get(v))
    return (f"{' '.join(compose_command() or ())} on "
            f"{os.environ.get('DOCKER_HOST', 'the default Docker socket')}"
            f"{f' ({images})' if images else ''}: the docker compose tests run")


class ComposeProject:
    """One `docker compose -p <name>` project of docker-compose.yml (plus override files)."""

    def __init__(self, env: dict[str, str], overrides: Sequence[Path] = (),
                 profiles: Sequence[str] = ()) -> None:
        command = compose_command()
        assert command is not None, compose_unavailable()
        self.name = f"fxstream-test-{uuid.uuid4().hex[:8]}"
        files = ["-f", str(PROJECT_DIR / "docker-compose.yml")]
        for path in overrides:
            files += ["-f", str(path)]
        self.base = [*command, "-p", self.name, "--project-directory", str(PROJECT_DIR),
                     *files, *[arg for p in profiles for arg in ("--profile", p)]]
        self.env = {**os.environ, **env}

    def run(self, *args: str, timeout_s: float = 600, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.base, *args], capture_output=True, text=True,
                                env=self.env, timeout=timeout_s, cwd=PROJECT_DIR)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def container_ids(self, service: str) -> list[str]:
        out = self.run("ps", "-q", service).stdout
        return [line for line in out.split() if line]

    def logs(self, *services: str, tail: int = 40) -> str:
        return self.run("logs", "--no-color", f"--tail={tail}", *services, check=False).stdout

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", "--timeout", "20", check=False)


def docker(*args: str, timeout_s: float = 120) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()
